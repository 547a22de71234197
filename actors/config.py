"""What every component's config model shares: the pydantic base, identifier rules, DSN masking.

Each component owns its settings model beside its code (``actors/source_config.py``,
``actors/embedder.py``, ``actors/sinks/<sink>/config.py``); ``cluster/config.py`` only
composes them into the TOML file's sections.  This module is the common ground
they stand on, so it imports nothing of the project but ``actors.logs`` (the secret registry).
"""

from __future__ import annotations

import re
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, SecretStr

from actors.logs import register_dsn, register_secret, scrub


class Section(BaseModel):
    """Base of every TOML section model: unknown keys are errors, assignments are validated.

    Secrets stay out of logs: every ``SecretStr`` value (whole, or the
    password inside a DSN) and the password of any URL or DSN string is
    registered with :func:`actors.logs.register_secret` when a section is
    built or unpickled (in each Ray actor), and ``repr`` scrubs string values
    (``https://user:***@host``).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def model_post_init(self, context: Any, /) -> None:
        self._register_secrets()

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._register_secrets()

    def _register_secrets(self) -> None:
        for value in self.__dict__.values():
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not isinstance(plain, str):
                continue
            if "://" in plain or "password" in plain.lower():
                register_dsn(plain)
            elif isinstance(value, SecretStr):
                register_secret(plain)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, scrub(value) if isinstance(value, str) else value


#: Identifier rules for the names embedcluster itself creates or must pass to
#: a server unquoted, by what the name is for.  Each is matched against the
#: *whole* value (``fullmatch``): ``re.match`` with ``$`` would accept a
#: trailing newline (``"items\n"``).  Source tables and columns are the
#: user's own names, taken literally and always quoted
#: (``actors.source_config.split_qualified``).
IDENTIFIER_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    # replication slot and publication names (PostgreSQL allows only these in slot names)
    "pg_slot": (re.compile(r"[a-z0-9_]{1,63}"), "1-63 characters of lower-case letters, digits and '_'"),
    # MySQL tables and Qdrant collections that embedcluster creates
    "store": (re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}"), "1-64 letters, digits and '_', not starting with a digit"),
}


def identifier_error(value: object, rule: str) -> str | None:
    """None when ``value`` is a valid identifier under ``rule``, else what a valid one looks like."""
    pattern, description = IDENTIFIER_RULES[rule]
    if isinstance(value, str) and pattern.fullmatch(value):
        return None
    return f"must be {description}"


def check_identifier(value: str, rule: str) -> str:
    """``value`` if it is a valid identifier under ``rule``; ValueError (for pydantic) otherwise."""
    error = identifier_error(value, rule)
    if error:
        raise ValueError(error)
    return value


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (safe to log)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable dsn>"
    if parts.password is None:
        # key=value form: hide password=...
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def check_custom_resources(value: dict[str, float], key: str) -> dict[str, float]:
    """``value`` if it names custom Ray resources with positive amounts; ValueError naming ``key`` otherwise."""
    for name, amount in value.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory") or not name.strip():
            raise ValueError(f"{name!r} is not a custom resource: only those go in {key} (CPUs and GPUs "
                             "have keys of their own: embedding.cpus_per_actor, embedding.gpus_per_actor)")
        if not amount > 0:
            raise ValueError(f"{name!r} = {amount}: a resource request must be above 0 (leave the name out "
                             "to request none)")
    return value
