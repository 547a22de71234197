"""The sink's DSN: ``mysql://user[:password]@host[:port]/db`` parsed into :class:`MySQLDsn`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from actors.sinks.base import SinkError

DEFAULT_PORT = 3306

#: A database name as the DSN may spell it ('$' and '-' allowed): a database the
#: operator created, not an identifier embedcluster creates (those follow the
#: ``store`` rule of :mod:`actors.config`, see ``dialects.quote_ident``).
_DB_NAME = re.compile(r"[A-Za-z0-9_$-]{1,64}")


@dataclass(frozen=True)
class MySQLDsn:
    """Parsed ``mysql://user[:password]@host[:port]/db`` (password hidden from repr)."""

    host: str
    port: int
    user: str
    database: str
    password: str = field(default="", repr=False)
    unix_socket: str | None = None
    ssl_ca: str | None = None

    @property
    def where(self) -> str:
        """Human-readable server address (never contains the password)."""
        return self.unix_socket or f"{self.host}:{self.port}"


def parse_dsn(dsn: str, password: str | None = None) -> MySQLDsn:
    """Parse a sink DSN; ``password`` (from ``EMBEDCLUSTER_SINK_PASSWORD``) overrides the DSN's.

    Accepted: ``mysql://user[:password]@host[:port]/database[?unix_socket=PATH&ssl_ca=FILE]``
    (also ``mysql+pymysql://`` and ``mariadb://``).
    """
    if not dsn:
        raise SinkError("sink.dsn is empty: set it to mysql://user@host:3306/database")
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise SinkError(f"sink.dsn is not a valid URL ({exc}): use mysql://user@host:3306/database") from None
    if parts.scheme not in ("mysql", "mysql+pymysql", "mariadb"):
        raise SinkError(f"sink.dsn scheme {parts.scheme!r} is not supported: use mysql://user@host:3306/database")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(query) - {"unix_socket", "ssl_ca"})
    if unknown:
        raise SinkError(f"sink.dsn option {unknown[0]!r} is not supported (allowed: unix_socket, ssl_ca)")
    if not parts.username:
        raise SinkError("sink.dsn has no user name: use mysql://user@host:3306/database")
    if not parts.hostname and not query.get("unix_socket"):
        raise SinkError("sink.dsn has no host: use mysql://user@host:3306/database")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise SinkError("sink.dsn has no database name: use mysql://user@host:3306/database")
    if not _DB_NAME.fullmatch(database):
        raise SinkError(f"sink.dsn database name {database!r} must be 1-64 letters, digits, '_', '$' or '-'")
    return MySQLDsn(
        host=parts.hostname or "localhost",
        port=port or DEFAULT_PORT,
        user=unquote(parts.username),
        database=database,
        password=password if password is not None else unquote(parts.password or ""),
        unix_socket=query.get("unix_socket") or None,
        ssl_ca=query.get("ssl_ca") or None,
    )

