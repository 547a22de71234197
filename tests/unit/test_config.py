"""cluster/config.py: TOML loading, defaults, env overrides, one-line errors, secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cluster.config import (
    ENV_SINK_PASSWORD,
    ENV_SINK_URL_API_KEY,
    ENV_SOURCE_DSN,
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    mask_dsn,
)

SECRET = "secretpw"

EXAMPLE = f"""\
[source]
dsn = "postgresql://postgres:{SECRET}@127.0.0.1:5432/app"
slot = "embedcluster"
publication = "embedcluster"
[[tables]]
name = "public.books"
text = "{{description}}"
payload = ["name", "description", "author", "year"]
[embedding]
model = "default"
actors = 1
device = "auto"
batch_size = 64
[sink]
kind = "qdrant"
collection = "embedcluster"
url = ""
path = ".embedcluster/qdrant"
[serve]
host = "127.0.0.1"
port = 8000
"""

QDRANT_SINK = """[sink]
kind = "qdrant"
collection = "embedcluster"
url = ""
path = ".embedcluster/qdrant"
"""
MYSQL_SINK = """[sink]
kind = "mysql"
dsn = "mysql://root@127.0.0.1:3306/db"
"""
# the same file with the MySQL sink: each sink kind has its own keys
MYSQL_EXAMPLE = EXAMPLE.replace(QDRANT_SINK, MYSQL_SINK)
assert MYSQL_EXAMPLE != EXAMPLE

MINIMAL = """\
[source]
dsn = "postgresql://postgres@127.0.0.1:5432/app"
[[tables]]
name = "books"
"""


def write(tmp_path: Path, text: str, name: str = "embedcluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    assert message.strip() == message and message
    return message


# -- the example parses --------------------------------------------------------


def test_example_config_parses(tmp_path):
    config = load_config(write(tmp_path, EXAMPLE), environ={})
    assert isinstance(config, Config)
    assert config.source.dsn_value == f"postgresql://postgres:{SECRET}@127.0.0.1:5432/app"
    assert config.source.slot == "embedcluster"
    assert config.source.publication == "embedcluster"
    assert len(config.tables) == 1
    table = config.tables[0]
    assert table.name == "public.books"
    assert table.schema_name == "public" and table.table_name == "books"
    assert table.text == "{description}"
    assert table.text_columns == ["description"]
    assert table.payload == ["name", "description", "author", "year"]
    assert config.table("public.books") is table
    assert config.embedding.model == "default"
    assert config.embedding.actors == 1
    assert config.embedding.device == "auto"
    assert config.embedding.batch_size == 64
    assert config.sink.kind == "qdrant"
    assert config.sink.collection == "embedcluster"
    assert config.sink.url == ""
    assert config.sink.path == ".embedcluster/qdrant"
    assert config.serve.host == "127.0.0.1"
    assert config.serve.port == 8000


def test_example_config_table_lookup_unknown_raises(tmp_path):
    config = load_config(write(tmp_path, EXAMPLE), environ={})
    with pytest.raises(KeyError):
        config.table("public.nope")


# -- defaults ------------------------------------------------------------------


def test_defaults(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.source.slot == "embedcluster"
    assert config.source.publication == "embedcluster"
    assert config.source.max_batch_changes == 256
    assert config.source.backfill_chunk == 1000
    assert config.source.backfill_mode == "chunks" and config.source.backfill_readers == 1
    # unqualified table names get the public schema
    assert config.tables[0].name == "public.books"
    assert config.tables[0].text == "{description}"
    assert config.tables[0].payload == []
    emb = config.embedding
    assert (emb.model, emb.actors, emb.device, emb.batch_size) == ("default", 1, "auto", 64)
    assert emb.max_batch_tokens == 0  # auto: 4096 on CPU, 16384 on CUDA
    assert emb.threads == 0 and emb.max_length == 0 and emb.dtype == "auto" and emb.compile is False
    sink = config.sink
    assert (sink.kind, sink.collection, sink.url, sink.path) == ("qdrant", "embedcluster", "", ".embedcluster/qdrant")
    assert sink.api_key is None
    sink = load_config(write(tmp_path, MINIMAL + '[sink]\nkind = "mysql"\n'), environ={}).sink
    assert sink.password is None
    assert sink.table == "embeddings" and sink.dialect == "auto" and sink.distance == "cosine"
    assert (config.serve.host, config.serve.port, config.serve.replicas) == ("127.0.0.1", 8000, 1)
    assert config.ray.address == "" and config.ray.num_cpus is None
    assert config.pipeline.max_inflight_batches == 0


@pytest.mark.parametrize(("actors", "configured", "expected"), [(1, 0, 4), (3, 0, 8), (3, 5, 5)])
def test_inflight_batches(tmp_path, actors, configured, expected):
    text = MINIMAL + f"[embedding]\nactors = {actors}\n[pipeline]\nmax_inflight_batches = {configured}\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.inflight_batches == expected


def test_text_columns_in_template_order_without_duplicates(tmp_path):
    text = MINIMAL.replace('name = "books"', 'name = "books"\ntext = "{title}: {description} ({title}) {{literal}}"')
    config = load_config(write(tmp_path, text), environ={})
    assert config.tables[0].text_columns == ["title", "description"]


# -- env overrides -------------------------------------------------------------


def test_env_overrides_source_dsn(tmp_path):
    env = {ENV_SOURCE_DSN: "postgresql://other:envpw@db.example:6543/prod"}
    config = load_config(write(tmp_path, EXAMPLE), environ=env)
    assert config.source.dsn_value == "postgresql://other:envpw@db.example:6543/prod"


def test_env_source_dsn_fills_a_missing_dsn(tmp_path):
    text = '[[tables]]\nname = "books"\n'
    config = load_config(write(tmp_path, text), environ={ENV_SOURCE_DSN: "postgresql://u:pw@h/db"})
    assert config.source.dsn_value == "postgresql://u:pw@h/db"
    text = '[source]\nslot = "s1"\n[[tables]]\nname = "books"\n'
    config = load_config(write(tmp_path, text), environ={ENV_SOURCE_DSN: "postgresql://u:pw@h/db"})
    assert config.source.dsn_value == "postgresql://u:pw@h/db"
    assert config.source.slot == "s1"


def test_env_overrides_sink_password(tmp_path):
    text = MYSQL_EXAMPLE.replace('kind = "mysql"', 'kind = "mysql"\npassword = "filepw"')
    assert load_config(write(tmp_path, text), environ={}).sink.password.get_secret_value() == "filepw"
    config = load_config(write(tmp_path, text), environ={ENV_SINK_PASSWORD: "envpw"})
    assert config.sink.password is not None
    assert config.sink.password.get_secret_value() == "envpw"


def test_empty_env_values_do_not_override(tmp_path):
    config = load_config(write(tmp_path, MYSQL_EXAMPLE), environ={ENV_SOURCE_DSN: "", ENV_SINK_PASSWORD: ""})
    assert SECRET in config.source.dsn_value
    assert config.sink.password is None


def test_process_environment_is_used_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_SOURCE_DSN, "postgresql://u:frompenv@h/db")
    monkeypatch.setenv(ENV_SINK_PASSWORD, "sinkenv")
    config = load_config(write(tmp_path, MYSQL_EXAMPLE))
    assert config.source.dsn_value == "postgresql://u:frompenv@h/db"
    assert config.sink.password.get_secret_value() == "sinkenv"


def test_config_from_dict_does_not_mutate_input():
    data = {"source": {"dsn": "postgresql://a@h/db"}, "tables": [{"name": "books"}]}
    config_from_dict(data, environ={ENV_SOURCE_DSN: "postgresql://b@h/db", ENV_SINK_PASSWORD: "x"})
    assert data == {"source": {"dsn": "postgresql://a@h/db"}, "tables": [{"name": "books"}]}


# -- one-line errors naming the key ----------------------------------------------


def test_missing_source_dsn(tmp_path):
    msg = load_error(write(tmp_path, '[source]\nslot = "s"\n[[tables]]\nname = "books"\n'))
    assert "source.dsn" in msg and "missing" in msg


def test_missing_source_section(tmp_path):
    msg = load_error(write(tmp_path, '[[tables]]\nname = "books"\n'))
    assert "'source'" in msg and "missing" in msg


def test_missing_tables(tmp_path):
    msg = load_error(write(tmp_path, '[source]\ndsn = "postgresql://u@h/db"\n'))
    assert "tables" in msg and "missing" in msg


def test_empty_tables(tmp_path):
    msg = load_error(write(tmp_path, 'tables = []\n[source]\ndsn = "postgresql://u@h/db"\n'))
    assert "tables" in msg


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[embedding]\nbatchsize = 3\n", "embedding.batchsize"),
        ("[sink]\ncolection = 'x'\n", "sink.colection"),
        ("[bogus]\nx = 1\n", "bogus"),
        ("[serve]\nprot = 80\n", "serve.prot"),
    ],
)
def test_unknown_key(tmp_path, extra, key):
    msg = load_error(write(tmp_path, MINIMAL + extra))
    assert f"'{key}'" in msg and "unknown key" in msg


def test_unknown_key_in_table(tmp_path):
    msg = load_error(write(tmp_path, MINIMAL + 'txt = "{x}"\n'))
    assert "tables[0].txt" in msg and "unknown key" in msg


@pytest.mark.parametrize("slot", ["Bad-Slot", "UPPER", "with space", "", "x" * 64, "dash-ed"])
def test_bad_slot_name(tmp_path, slot):
    text = MINIMAL.replace("[[tables]]", f'slot = "{slot}"\n[[tables]]')
    msg = load_error(write(tmp_path, text))
    assert "source.slot" in msg


def test_good_slot_name_at_limit(tmp_path):
    text = MINIMAL.replace("[[tables]]", f'slot = "{"a" * 63}"\npublication = "pub_1"\n[[tables]]')
    config = load_config(write(tmp_path, text), environ={})
    assert config.source.slot == "a" * 63 and config.source.publication == "pub_1"


def test_bad_publication_name(tmp_path):
    text = MINIMAL.replace("[[tables]]", 'publication = "My Pub"\n[[tables]]')
    assert "source.publication" in load_error(write(tmp_path, text))


@pytest.mark.parametrize(
    "template",
    ["{description", "description}", "no placeholders here", "{}", "{0}", "{a.b}", "{row[0]}", "{{escaped}}"],
)
def test_bad_template(tmp_path, template):
    text = MINIMAL + f"text = {template!r}\n".replace("'", '"')
    msg = load_error(write(tmp_path, text))
    assert "tables[0].text" in msg


@pytest.mark.parametrize("name", ["a.b.c", "public.", ".books", "a\\\"b", "\\\"open", " books", "public.\\\"x\\\"y"])
def test_bad_table_name(tmp_path, name):
    msg = load_error(write(tmp_path, MINIMAL.replace('name = "books"', f'name = "{name}"')))
    assert "tables[0].name" in msg


@pytest.mark.parametrize(
    ("name", "schema", "table", "canonical"),
    [
        ("1books", "public", "1books", "public.1books"),
        ("bad-name", "public", "bad-name", "public.bad-name"),
        ("sch ema.books", "sch ema", "books", "sch ema.books"),
        ("Café Orders", "public", "Café Orders", "public.Café Orders"),
        ('public."odd.name"', "public", "odd.name", 'public."odd.name"'),
        ('"my.schema"."say ""hi"""', "my.schema", 'say "hi"', '"my.schema"."say ""hi"""'),
    ],
)
def test_table_names_are_taken_literally_and_quoted_only_for_dots_and_quotes(name, schema, table, canonical):
    config = config_from_dict({"source": {"dsn": "postgresql://u@h/db"}, "tables": [{"name": name}]}, environ={})
    t = config.tables[0]
    assert (t.schema_name, t.table_name, t.name) == (schema, table, canonical)


def test_duplicate_table(tmp_path):
    text = MINIMAL + '[[tables]]\nname = "public.books"\n'
    msg = load_error(write(tmp_path, text))
    assert "tables" in msg and "public.books" in msg and "twice" in msg


def test_second_table_error_names_its_index(tmp_path):
    text = MINIMAL + '[[tables]]\nname = "authors"\ntext = "no fields"\n'
    assert "tables[1].text" in load_error(write(tmp_path, text))


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("embedding", "actors = 0", "embedding.actors"),
        ("embedding", 'device = "tpu"', "embedding.device"),
        ("embedding", "batch_size = 0", "embedding.batch_size"),
        ("serve", "port = 70000", "serve.port"),
        ("sink", 'kind = "redis"', "sink.kind"),
        ("sink", 'collection = "9bad"', "sink.collection"),
        ("source", "max_batch_changes = 0", "source.max_batch_changes"),
        ("source", 'backfill_mode = "dump"', "source.backfill_mode"),
        ("source", "backfill_readers = 0", "source.backfill_readers"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path, section, line, key):
    if section == "source":
        text = MINIMAL.replace("[[tables]]", f"{line}\n[[tables]]")
    else:
        text = MINIMAL + f"[{section}]\n{line}\n"
    assert key in load_error(write(tmp_path, text))


def test_file_not_found(tmp_path):
    path = tmp_path / "missing.toml"
    msg = load_error(path)
    assert str(path) in msg and "not found" in msg


def test_invalid_toml(tmp_path):
    path = write(tmp_path, "[source\ndsn = 'x'\n")
    msg = load_error(path)
    assert str(path) in msg and "TOML" in msg


def test_invalid_utf8(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b'[source]\ndsn = "\xff\xfe"\n')
    msg = load_error(path)
    assert "TOML" in msg


def test_error_names_the_file(tmp_path):
    path = write(tmp_path, '[source]\nslot = "s"\n[[tables]]\nname = "books"\n', name="mine.toml")
    assert load_error(path).startswith(str(path))


def test_non_table_source_with_env_dsn_is_a_config_error():
    """``source = "..."`` must give the one-line ConfigError, with or without the env override."""
    data = {"source": "postgresql://u@h/db", "tables": [{"name": "books"}]}
    with pytest.raises(ConfigError) as without_env:
        config_from_dict(data, environ={})
    assert "source" in str(without_env.value)
    with pytest.raises(ConfigError) as with_env:
        config_from_dict(data, environ={ENV_SOURCE_DSN: "postgresql://u:pw@h/db"})
    assert "source" in str(with_env.value) and "\n" not in str(with_env.value)


# -- secrets ---------------------------------------------------------------------


def test_source_secret_not_in_repr_or_str(tmp_path):
    config = load_config(write(tmp_path, EXAMPLE), environ={})
    for text in (repr(config), str(config), repr(config.source), str(config.source), config.source.dsn_masked):
        assert SECRET not in text
    assert config.source.dsn_masked == "postgresql://postgres:***@127.0.0.1:5432/app"


@pytest.mark.parametrize("example", [EXAMPLE, MYSQL_EXAMPLE], ids=["qdrant", "mysql"])
def test_env_secrets_not_in_repr_or_str(tmp_path, example):
    env = {ENV_SOURCE_DSN: "postgresql://u:envsourcepw@h/db", ENV_SINK_PASSWORD: "envsinkpw",
           ENV_SINK_URL_API_KEY: "envapikey"}
    config = load_config(write(tmp_path, example), environ=env)
    for text in (repr(config), str(config), repr(config.sink), str(config.model_dump())):
        assert "envsourcepw" not in text
        assert "envsinkpw" not in text
        assert "envapikey" not in text


def test_sink_dsn_password_not_in_repr_or_str(tmp_path):
    """The MySQL sink DSN may carry a password (mysql://user:pw@host/db is accepted by the sink)."""
    text = MYSQL_EXAMPLE.replace("mysql://root@", "mysql://root:sinkdsnpw@")
    config = load_config(write(tmp_path, text), environ={})
    assert config.sink.dsn_masked == "mysql://root:***@127.0.0.1:3306/db"
    for shown in (repr(config), str(config), repr(config.sink), str(config.sink)):
        assert "sinkdsnpw" not in shown


def test_api_key_not_in_repr(tmp_path):
    text = EXAMPLE.replace('url = ""', 'url = "http://127.0.0.1:6333"\napi_key = "topsecretkey"')
    config = load_config(write(tmp_path, text), environ={})
    assert config.sink.api_key.get_secret_value() == "topsecretkey"
    assert "topsecretkey" not in repr(config) and "topsecretkey" not in str(config)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://postgres:secretpw@127.0.0.1:5432/app", "postgresql://postgres:***@127.0.0.1:5432/app"),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:pa:ss@h:5432/db?sslmode=require", "postgresql://u:***@h:5432/db?sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=db user=u password=secretpw dbname=app", "host=db user=u password=*** dbname=app"),
        ("host=db password = secretpw", "host=db password = ***"),
        ("mysql://root:secretpw@127.0.0.1:3306/db", "mysql://root:***@127.0.0.1:3306/db"),
    ],
)
def test_mask_dsn(dsn, expected):
    masked = mask_dsn(dsn)
    assert masked == expected
    for secret in ("secretpw", "p%40ss", "p@ss", "pa:ss"):
        if secret in dsn:
            assert secret not in masked


def test_mask_dsn_quoted_keyword_password():
    """libpq allows quoted values with spaces: password='two words'."""
    masked = mask_dsn("host=db password='alpha bravo' dbname=app")
    assert "alpha" not in masked
    assert "bravo" not in masked
    assert "host=db" in masked and "dbname=app" in masked


# -- [sink] is a union chosen by kind ------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "line", "key", "owner"),
    [
        ("mysql", 'collection = "books"', "sink.collection", "qdrant"),
        ("mysql", 'path = "/tmp/q"', "sink.path", "qdrant"),
        ("mysql", 'api_key = "k"', "sink.api_key", "qdrant"),
        ("qdrant", 'dsn = "mysql://u@h/db"', "sink.dsn", "mysql"),
        ("qdrant", 'table = "embeddings"', "sink.table", "mysql"),
        ("qdrant", 'dialect = "portable"', "sink.dialect", "mysql"),
    ],
)
def test_a_key_of_another_sink_is_an_error_naming_it(tmp_path, kind, line, key, owner):
    msg = load_error(write(tmp_path, MINIMAL + f'[sink]\nkind = "{kind}"\n{line}\n'))
    assert f"'{key}'" in msg and f"sink.kind = '{owner}'" in msg and f"'{kind}'" in msg


def test_a_key_of_another_sink_is_an_error_without_kind_too(tmp_path):
    # no kind = the embedded Qdrant store, whose settings do not include a table
    msg = load_error(write(tmp_path, MINIMAL + '[sink]\ntable = "x"\n'))
    assert "'sink.table'" in msg and "sink.kind = 'mysql'" in msg


def test_sink_kind_defaults_to_qdrant(tmp_path):
    config = load_config(write(tmp_path, MINIMAL + '[sink]\ncollection = "books"\n'), environ={})
    assert config.sink.kind == "qdrant" and config.sink.collection == "books"
    from actors.sinks.qdrant.config import QdrantSinkConfig

    assert isinstance(config.sink, QdrantSinkConfig)


def test_mysql_sink_is_its_own_model(tmp_path):
    from actors.sinks.mysql.config import MySQLSinkConfig

    config = load_config(write(tmp_path, MYSQL_EXAMPLE), environ={})
    assert isinstance(config.sink, MySQLSinkConfig) and config.sink.dsn == "mysql://root@127.0.0.1:3306/db"
    assert not hasattr(config.sink, "collection")


def test_unknown_sink_kind_lists_the_kinds(tmp_path):
    msg = load_error(write(tmp_path, MINIMAL + '[sink]\nkind = "redis"\n'))
    assert "sink.kind" in msg and "'qdrant'" in msg and "'mysql'" in msg and "redis" in msg


@pytest.mark.parametrize("line", ['table = "9bad"', 'table = "a-b"'])
def test_mysql_key_errors_name_the_toml_key(tmp_path, line):
    msg = load_error(write(tmp_path, MINIMAL + f'[sink]\nkind = "mysql"\n{line}\n'))
    assert msg.split(": ", 1)[1].startswith("sink.table:"), msg


def test_environment_secrets_go_to_the_sink_they_belong_to(tmp_path):
    env = {ENV_SINK_PASSWORD: "pw", ENV_SINK_URL_API_KEY: "key"}
    qdrant = load_config(write(tmp_path, EXAMPLE), environ=env).sink
    assert qdrant.api_key.get_secret_value() == "key"  # the MySQL password is not a Qdrant setting: not an error
    mysql = load_config(write(tmp_path, MYSQL_EXAMPLE), environ=env).sink
    assert mysql.password.get_secret_value() == "pw"


# -- identifiers: one validator, whole-value match ------------------------------------


@pytest.mark.parametrize("name", ["items\n", "public.items\n", "public\n.items", "public.it\nems"])
def test_table_name_with_a_trailing_newline_is_refused(name):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"source": {"dsn": "postgresql://u@h/db"}, "tables": [{"name": name}]}, environ={})
    assert "tables[0].name" in str(info.value)


@pytest.mark.parametrize(
    ("section", "key"),
    [("source", "slot"), ("source", "publication"), ("sink", "collection")],
)
def test_identifiers_with_a_trailing_newline_are_refused(section, key):
    data = {"source": {"dsn": "postgresql://u@h/db"}, "tables": [{"name": "books"}]}
    data.setdefault(section, {})[key] = "name\n"
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, environ={})
    assert f"{section}.{key}" in str(info.value)


def test_template_placeholder_with_a_newline_is_refused():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"source": {"dsn": "postgresql://u@h/db"},
                          "tables": [{"name": "books", "text": "{body\n}"}]}, environ={})
    assert "tables[0].text" in str(info.value)


def test_filterable_columns_must_be_payload_columns(tmp_path):
    text = EXAMPLE.replace('payload = ["name", "description", "author", "year"]',
                           'payload = ["name", "description", "author", "year"]\nfilterable = ["year", "author", "year"]')
    config = load_config(write(tmp_path, text), environ={})
    assert config.tables[0].filterable == ["year", "author"]
    bad = EXAMPLE.replace('payload = ["name", "description", "author", "year"]',
                          'payload = ["name", "description", "author", "year"]\nfilterable = ["isbn"]')
    error = load_error(write(tmp_path, bad))
    assert "tables" in error and "filterable" in error and "'isbn'" in error and "add it to payload" in error
    assert "\n" not in error.strip()


def test_custom_resources_for_the_embedding_and_control_actors(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.embedding.resources == {} and config.ray.control_resources == {}  # anywhere by default
    text = MINIMAL + "\n[embedding]\nresources = {embedcluster_gpu = 1}\n[ray]\ncontrol_resources = {head = 0.01}\n"
    config = load_config(write(tmp_path, text), environ={})
    assert config.embedding.resources == {"embedcluster_gpu": 1.0} and config.ray.control_resources == {"head": 0.01}
    gpu = load_error(write(tmp_path, MINIMAL + "\n[embedding]\nresources = {GPU = 1}\n"))
    assert "embedding.resources" in gpu and "gpus_per_actor" in gpu and "\n" not in gpu
    zero = load_error(write(tmp_path, MINIMAL + "\n[ray]\ncontrol_resources = {head = 0}\n"))
    assert "ray.control_resources" in zero and "above 0" in zero


# -- [sink] writers (partitioned writers) ---------------------------------------------------------


def test_sink_writers_default_to_one_and_take_more_on_mysql_and_a_qdrant_server(tmp_path):
    assert load_config(write(tmp_path, EXAMPLE), environ={}).sink.writers == 1
    mysql = load_config(write(tmp_path, MYSQL_EXAMPLE.replace(MYSQL_SINK, MYSQL_SINK + "writers = 4\n")), environ={})
    assert mysql.sink.writers == 4
    server = EXAMPLE.replace('url = ""', 'url = "http://127.0.0.1:6333"\nwriters = 2')
    assert load_config(write(tmp_path, server), environ={}).sink.writers == 2


def test_several_writers_on_the_embedded_store_are_refused_naming_the_key(tmp_path):
    message = load_error(write(tmp_path, EXAMPLE.replace('url = ""', 'url = ""\nwriters = 2')))
    assert "sink.writers" in message
    assert "one process" in message and "sink.url" in message


@pytest.mark.parametrize("bad", ["0", "65", '"two"'])
def test_a_bad_writers_count_names_the_key(tmp_path, bad):
    assert "sink.writers" in load_error(write(tmp_path, MYSQL_EXAMPLE.replace(MYSQL_SINK, MYSQL_SINK + f"writers = {bad}\n")))


# -- [embedding] min_actors / max_actors (autoscaling, cluster/autoscale.py) ---------------------


def test_pool_bounds_default_to_actors(tmp_path):
    emb = load_config(write(tmp_path, MINIMAL + "[embedding]\nactors = 3\n"), environ={}).embedding
    assert (emb.min_actors, emb.max_actors) == (0, 0)
    assert (emb.pool_min, emb.pool_max, emb.autoscaling) == (3, 3, False)


def test_pool_bounds_from_the_file(tmp_path):
    text = MINIMAL + "[embedding]\nactors = 2\nmin_actors = 1\nmax_actors = 6\n"
    emb = load_config(write(tmp_path, text), environ={}).embedding
    assert (emb.pool_min, emb.pool_max, emb.autoscaling) == (1, 6, True)


def test_only_max_actors_grows_from_actors(tmp_path):
    emb = load_config(write(tmp_path, MINIMAL + "[embedding]\nmax_actors = 4\n"), environ={}).embedding
    assert (emb.pool_min, emb.pool_max) == (1, 4)


@pytest.mark.parametrize(
    ("lines", "key", "hint"),
    [
        ("actors = 2\nmin_actors = 3", "embedding.min_actors", "at most embedding.actors (2)"),
        ("actors = 4\nmax_actors = 2", "embedding.max_actors", "at least embedding.actors (4)"),
        ("min_actors = -1", "embedding.min_actors", ""),
        ("max_actors = 5000", "embedding.max_actors", ""),
    ],
)
def test_pool_bounds_errors_name_the_key(tmp_path, lines, key, hint):
    message = load_error(write(tmp_path, MINIMAL + f"[embedding]\n{lines}\n"))
    assert key in message and hint in message
