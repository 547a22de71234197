"""What the server is (version, ``cloudsql_vector`` flag) and which dialect that calls for.

``sink.dialect = "auto"`` asks :func:`detect_dialect`; a forced dialect is
checked by :func:`check_dialect_supported`.  The choice is logged once per
process and server (:func:`_log_once`).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

from actors.sinks.base import SinkError

log = logging.getLogger(__name__)

Dialect = Literal["cloudsql", "cloudsql-preview", "mariadb", "portable"]


@dataclass(frozen=True)
class ServerInfo:
    """What the sink learned about the server when it connected."""

    version: str
    cloudsql_vector: str | None = None  # value of the cloudsql_vector variable; None if absent

    @property
    def is_mariadb(self) -> bool:
        return "mariadb" in self.version.lower()

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        text = self.version
        # Old MariaDB handshakes prefix the real version with a fake "5.5.5-".
        if self.is_mariadb and text.startswith("5.5.5-"):
            text = text[len("5.5.5-") :]
        m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
        if not m:
            return (0, 0, 0)
        return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))

    @property
    def cloudsql_vector_on(self) -> bool:
        return (self.cloudsql_vector or "").strip().upper() in ("ON", "1", "TRUE")

    @property
    def label(self) -> str:
        return f"{'MariaDB' if self.is_mariadb else 'MySQL'} {self.version}"


@dataclass(frozen=True)
class DialectChoice:
    """The dialect ``auto`` picked, and why (logged once)."""

    dialect: Dialect
    reason: str


def detect_dialect(info: ServerInfo) -> DialectChoice:
    """Pick the dialect for ``sink.dialect = "auto"`` from the server's version and flags."""
    ver = info.version_tuple
    if info.is_mariadb:
        if ver >= (11, 7, 0):
            return DialectChoice("mariadb", f"{info.label} has native VECTOR support (MariaDB >= 11.7)")
        return DialectChoice(
            "portable", f"{info.label} has no VECTOR type (needs MariaDB >= 11.7); exact search in the sink"
        )
    if info.cloudsql_vector_on:
        return DialectChoice("cloudsql", f"{info.label} is Cloud SQL with cloudsql_vector=ON")
    if info.cloudsql_vector is not None:
        return DialectChoice(
            "portable",
            f"{info.label} is Cloud SQL with cloudsql_vector=OFF (enable the flag for ANN search); "
            "exact search in the sink",
        )
    return DialectChoice("portable", f"{info.label} has no usable vector search; exact search in the sink")


def check_dialect_supported(dialect: Dialect, info: ServerInfo) -> None:
    """Raise :class:`SinkError` when a forced ``sink.dialect`` cannot work on this server."""
    ver = info.version_tuple
    if dialect == "mariadb":
        if not info.is_mariadb or ver < (11, 7, 0):
            raise SinkError(
                f"sink.dialect = 'mariadb' needs MariaDB 11.7 or newer (VECTOR type), but the server is "
                f"{info.label}: upgrade the server or set sink.dialect = 'portable' (or 'auto')"
            )
    elif dialect in ("cloudsql", "cloudsql-preview"):
        if info.is_mariadb or not info.cloudsql_vector_on:
            state = "is missing" if info.cloudsql_vector is None else f"is {info.cloudsql_vector}"
            raise SinkError(
                f"sink.dialect = '{dialect}' needs Cloud SQL for MySQL with the cloudsql_vector flag on, but the "
                f"server is {info.label} and its cloudsql_vector variable {state}: enable the flag on the "
                f"instance or set sink.dialect = 'portable' (or 'auto')"
            )
    elif dialect == "portable":
        minimum = (10, 3, 0) if info.is_mariadb else (5, 7, 0)
        if ver < minimum:
            raise SinkError(
                f"the portable dialect needs MySQL 5.7+ or MariaDB 10.3+ (JSON columns), but the server is "
                f"{info.label}: upgrade the server"
            )
    else:  # pragma: no cover - config validation forbids other values
        raise SinkError(f"unknown sink.dialect {dialect!r}: use auto, cloudsql, cloudsql-preview, mariadb or portable")


# Notices logged once per process (the dialect choice per server, a tolerated column per table).
_logged_choices: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def _log_once(key: tuple[str, str], msg: str, *args: Any) -> None:
    with _logged_lock:
        if key in _logged_choices:
            return
        _logged_choices.add(key)
    log.info(msg, *args)

