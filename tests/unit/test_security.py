"""Security without servers: secret scrubbing (actors/logs.py), configs' repr, the [serve] key and host rules."""

from __future__ import annotations

import io
import logging
import pickle

import pytest
from pydantic import SecretStr

from actors import logs
from actors.logs import MASK, ScrubFilter, error_line, register_dsn, register_secret, scrub, setup_logging
from cluster.config import ENV_SERVE_API_KEY, ConfigError, config_from_dict
from serve_apps.config import MIN_API_KEY_LENGTH, ServeConfig, is_loopback

KEY = "k3y-0123456789abcdef"  # a valid API key (16+ printable characters)


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    """Each test starts with no registered secret (the registry is per process)."""
    monkeypatch.setattr(logs, "_secrets", set())
    monkeypatch.setattr(logs, "_secrets_sorted", ())


def base(**sections):
    return {"source": {"dsn": "postgresql://postgres@127.0.0.1:5432/app"}, "tables": [{"name": "public.books"}],
            **sections}


# -- scrub ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connect postgresql://app:s3cr3t@db:5432/x failed", "connect postgresql://app:***@db:5432/x failed"),
        ("https://user:pa@ss@qdrant.example:6333/collections", "https://user:***@qdrant.example:6333/collections"),
        ("mysql://root:p%40ss@127.0.0.1/v", "mysql://root:***@127.0.0.1/v"),
        ("host=db user=u password=s3cr3t dbname=app", "host=db user=u password=*** dbname=app"),
        ("host=db PASSWORD = 'two words' dbname=app", "host=db PASSWORD = *** dbname=app"),
        ("password='it\\'s' port=1", "password=*** port=1"),
    ],
)
def test_scrub_hides_url_and_libpq_passwords(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    ["postgresql://postgres@127.0.0.1:5432/app", "http://127.0.0.1:8000/search?q=a@b", "http://[::1]:8000/",
     "table public.books: column name was renamed", ""],
)
def test_scrub_leaves_lines_without_secrets_alone(text):
    assert scrub(text) == text


def test_registered_secrets_are_scrubbed_anywhere():
    register_secret(SecretStr("qdrant-api-key-1"))
    register_secret("api-key-two")
    register_secret("abc")  # too short to scrub without mangling every line
    register_secret(None)
    line = "auth qdrant-api-key-1 / Bearer api-key-two / abc"
    assert scrub(line) == f"auth {MASK} / Bearer {MASK} / abc"


def test_register_dsn_registers_only_the_password():
    register_dsn("postgresql://app:p%40ssw0rd@db.internal:5432/app")
    register_dsn("host=db password='quoted secret' dbname=app")
    # a library printing the password alone, percent-decoded, is scrubbed; host and database stay readable
    assert scrub("auth failed for p@ssw0rd on db.internal/app") == f"auth failed for {MASK} on db.internal/app"
    assert scrub("p%40ssw0rd") == MASK
    assert scrub("quoted secret") == MASK


def test_error_line_is_scrubbed_through_ray_wrappers():
    register_secret("sink-password-9")

    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("ray::WriterActor.open()")
            self.cause = cause

    exc = Wrapped(RuntimeError("cannot connect to mysql://root:sink-password-9@db/v: denied"))
    assert error_line(exc) == "cannot connect to mysql://root:***@db/v: denied"
    assert "sink-password-9" not in error_line(exc, with_type=True)
    remote = RuntimeError("ray::X()\nTraceback (most recent call last):\n  File 'a.py'\n"
                          "actors.sinks.base.SinkError: password=hunter22 refused")
    assert error_line(remote) == "password=*** refused"


def test_setup_logging_scrubs_every_record_of_every_logger():
    register_secret("registered-secret")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        setup_logging("INFO")  # installs the filter on the root's handlers, this one included
        assert any(isinstance(f, ScrubFilter) for f in handler.filters)
        child = logging.getLogger("embedcluster.test.child")  # records propagate: only handler filters see them
        child.info("dsn %s key %s", "postgresql://u:hunter22@h/db", "registered-secret")
        try:
            raise ValueError("password=tracebacksecret")
        except ValueError:
            child.exception("failed with https://u:excsecret@q:6333")
    finally:
        root.removeHandler(handler)
    out = stream.getvalue()
    assert "dsn postgresql://u:***@h/db key ***" in out
    for secret in ("hunter22", "registered-secret", "tracebacksecret", "excsecret"):
        assert secret not in out
    assert "ValueError: password=***" in out  # the traceback is kept, scrubbed


def test_scrub_filter_keeps_records_it_cannot_format():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d", ("not a number",), None)
    assert ScrubFilter().filter(record) is True


# -- configs: repr and registration ---------------------------------------------------------

def test_repr_of_configs_hides_every_secret():
    config = config_from_dict(
        base(source={"dsn": "postgresql://app:srcpassw0rd@db:5432/app"},
             sink={"kind": "qdrant", "url": "https://bob:urlpassw0rd@qdrant.example:6333"},
             serve={"api_key": KEY}),
        environ={"EMBEDCLUSTER_QDRANT_API_KEY": "qdrant-key-123"},
    )
    mysql = config_from_dict(base(sink={"kind": "mysql", "dsn": "mysql://root:dsnpassw0rd@db:3306/v"}),
                             environ={"EMBEDCLUSTER_SINK_PASSWORD": "envpassw0rd"})
    for shown in (repr(config), str(config), repr(config.sink), str(config.serve), repr(mysql), str(mysql.sink)):
        for secret in ("srcpassw0rd", "urlpassw0rd", "qdrant-key-123", KEY, "dsnpassw0rd", "envpassw0rd"):
            assert secret not in shown
    assert "https://bob:***@qdrant.example:6333" in repr(config.sink)  # the rest of the URL stays readable


def test_loaded_secrets_are_registered():
    config = config_from_dict(
        base(source={"dsn": "postgresql://app:srcpassw0rd@db:5432/app"},
             sink={"kind": "qdrant", "url": "https://bob:urlpassw0rd@qdrant.example:6333"}),
        environ={"EMBEDCLUSTER_QDRANT_API_KEY": "qdrant-key-123", ENV_SERVE_API_KEY: KEY},
    )
    assert config.serve.api_key_value == KEY
    line = "srcpassw0rd urlpassw0rd qdrant-key-123 " + KEY
    assert scrub(line) == " ".join([MASK] * 4)
    # the source DSN without its password is no secret: logs keep naming the database
    assert scrub("db:5432/app") == "db:5432/app"


def test_secrets_are_registered_again_where_a_config_is_unpickled(monkeypatch):
    config = config_from_dict(base(serve={"api_key": KEY}), environ={"EMBEDCLUSTER_QDRANT_API_KEY": "qdrant-key-123"})
    data = pickle.dumps(config)
    # a Ray actor's process: a fresh registry, the config arrives pickled
    monkeypatch.setattr(logs, "_secrets", set())
    monkeypatch.setattr(logs, "_secrets_sorted", ())
    assert scrub(KEY) == KEY
    copy = pickle.loads(data)
    assert copy.serve.api_key_value == KEY
    assert scrub(f"{KEY} qdrant-key-123") == f"{MASK} {MASK}"


# -- [serve] api_key, host, allow_unauthenticated ------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"])
def test_loopback_hosts(host):
    assert is_loopback(host)
    assert config_from_dict(base(serve={"host": host}), environ={}).serve.api_key is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.5", "search.example.com", "128.0.0.1", ""])
def test_non_loopback_host_without_key_is_refused_in_one_line(host):
    assert not is_loopback(host)
    with pytest.raises(ConfigError) as info:
        config_from_dict(base(serve={"host": host}), origin="app.toml", environ={})
    message = str(info.value)
    assert message.startswith("app.toml: serve.api_key: required because serve.host = ")
    assert "EMBEDCLUSTER_API_KEY" in message and "serve.allow_unauthenticated = true" in message
    assert "\n" not in message


def test_non_loopback_host_with_a_key_or_allowed_on_purpose():
    keyed = config_from_dict(base(serve={"host": "0.0.0.0"}), environ={ENV_SERVE_API_KEY: KEY})
    assert keyed.serve.api_key_value == KEY and not keyed.serve.loopback
    open_ = config_from_dict(base(serve={"host": "0.0.0.0", "allow_unauthenticated": True}), environ={})
    assert open_.serve.api_key is None and open_.serve.exposure_error() is None


def test_env_api_key_overrides_the_file():
    config = config_from_dict(base(serve={"api_key": "file-key-0123456789"}), environ={ENV_SERVE_API_KEY: KEY})
    assert config.serve.api_key_value == KEY


@pytest.mark.parametrize("key", ["short", "x" * (MIN_API_KEY_LENGTH - 1), " " + KEY, KEY + "\n", "with space 0123456789",
                                 "clé-0123456789abcdef"])
def test_bad_api_keys_are_refused_naming_the_key(key):
    with pytest.raises(ConfigError) as info:
        config_from_dict(base(serve={"api_key": key}), origin="app.toml", environ={})
    assert str(info.value).startswith("app.toml: serve.api_key: must be at least 16 printable ASCII characters")
    assert key.strip() not in str(info.value)  # the refused key is not echoed


def test_empty_api_key_is_no_key():
    assert config_from_dict(base(serve={"api_key": ""}), environ={}).serve.api_key is None
    with pytest.raises(ConfigError, match="serve.api_key: required"):
        config_from_dict(base(serve={"api_key": "", "host": "0.0.0.0"}), environ={})


def test_preflight_refuses_a_host_assigned_after_validation():
    """The check runs again before start-up, before the source is even contacted."""
    from cluster import runtime

    config = config_from_dict(base(source={"dsn": "postgresql://nobody@127.0.0.1:1/none"}), environ={})
    config.serve.host = "0.0.0.0"  # validate_assignment checks the host alone
    with pytest.raises(runtime.StartupError, match=r"^serve.api_key is required because serve.host = '0.0.0.0'"):
        runtime.preflight(config)


def test_serve_config_defaults_are_loopback_without_key():
    serve = ServeConfig()
    assert serve.host == "127.0.0.1" and serve.loopback and serve.api_key is None
    assert serve.allow_unauthenticated is False and serve.exposure_error() is None
