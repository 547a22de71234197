"""The sink's one connection: opening it, naming what went wrong, retrying transactions.

Every statement runs through :meth:`ConnectionMixin._run`: one transaction,
committed before it returns, retried with bounded exponential backoff while
the failure is transient (:func:`_is_retryable`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Sequence, TypeVar

import pymysql
import pymysql.err

from actors.sinks.base import PointError, SinkError
from actors.sinks.mysql.dialects import Statement
from actors.sinks.mysql.dsn import MySQLDsn

log = logging.getLogger(__name__)

# Connection gone: reconnect and retry the whole transaction.
_CONNECTION_LOST = {0, 2003, 2006, 2013, 2014, 2055, 1053, 1927, 4031}
# Transient server-side conditions: roll back, back off, retry.
#  1205 lock wait timeout, 1213 deadlock, 1036 table is read only,
#  1290 option prevents statement (--read-only), 1792 read-only transaction,
#  1836 read-only mode.
_TRANSIENT = {1205, 1213, 1036, 1290, 1792, 1836}

T = TypeVar("T")


def _error_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return int(args[0])
    return None


def _error_text(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    text = str(args[1]) if len(args) > 1 else str(exc)
    return " ".join(text.split())  # one line


def _is_vector_index_busy(exc: BaseException) -> bool:
    """Cloud SQL refuses writes/DDL while a vector index is built, altered or dropped."""
    text = _error_text(exc).lower()
    return "vector index" in text and any(w in text for w in ("progress", "being", "read only", "read-only", "busy"))


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, pymysql.err.InterfaceError):
        return True
    code = _error_code(exc)
    return code in _CONNECTION_LOST or code in _TRANSIENT or _is_vector_index_busy(exc)


class ConnectionMixin:
    """Connection handling and the retry loop of :class:`~actors.sinks.mysql.sink.MySQLSink`.

    The sink's ``__init__`` sets the attributes annotated here before calling
    :meth:`_connect`.
    """

    _dsn: MySQLDsn
    _lock: threading.RLock
    _conn: pymysql.connections.Connection | None
    _retry_deadline_s: float
    _search_deadline_s: float
    _lock_wait_timeout_s: int | None
    _connect_timeout_s: int
    _statement_cap: int | None
    _max_statement_bytes: int
    _statement_limit: int
    _max_allowed_packet: int

    def _connect(self) -> None:
        """Open the connection, turning failures into one-line :class:`SinkError`s."""
        try:
            self._open_connection()
        except pymysql.err.MySQLError as exc:
            raise self._connect_error(exc) from None
        except OSError as exc:  # e.g. unreadable ssl_ca
            raise SinkError(f"cannot connect to the MySQL sink at {self._dsn.where}: {exc}: check sink.dsn") from None

    def _open_connection(self) -> None:
        d = self._dsn
        kwargs: dict[str, Any] = dict(
            user=d.user,
            password=d.password,
            database=d.database,
            charset="utf8mb4",
            autocommit=False,
            connect_timeout=self._connect_timeout_s,
        )
        if d.unix_socket:
            kwargs["unix_socket"] = d.unix_socket
        else:
            kwargs["host"] = d.host
            kwargs["port"] = d.port
        if d.ssl_ca:
            kwargs["ssl"] = {"ca": d.ssl_ca}
        conn = pymysql.connect(**kwargs)
        try:
            with conn.cursor() as cur:
                if self._lock_wait_timeout_s is not None:
                    cur.execute("SET SESSION innodb_lock_wait_timeout = %s", (int(self._lock_wait_timeout_s),))
                cur.execute("SELECT @@max_allowed_packet")
                packet = int(cur.fetchone()[0])
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._set_statement_limits(packet)
        self._conn = conn

    def _set_statement_limits(self, packet: int) -> None:
        """Statement sizes from the server's ``max_allowed_packet`` (read on every connect).

        ``_statement_limit`` is the hard limit of one statement: the packet less
        1 KiB of headroom (sizes are measured on the escaped SQL, exactly what is
        sent; the packet adds a command byte).  A row that alone exceeds it is a
        :class:`PointTooLarge`.  ``_max_statement_bytes`` is the target size of a
        multi-row statement: at most 16 MiB, so one statement stays cheap for
        the server to parse and log.  The ``max_statement_bytes`` knob lowers both.
        """
        self._max_allowed_packet = packet
        limit = packet - min(1 << 10, packet // 8)
        if self._statement_cap:
            limit = min(limit, self._statement_cap)
        self._statement_limit = limit
        self._max_statement_bytes = min(limit, 16 << 20)

    def _connect_error(self, exc: BaseException) -> SinkError:
        d = self._dsn
        code = _error_code(exc)
        text = _error_text(exc)
        if code == 1045:
            return SinkError(
                f"MySQL sink at {d.where} rejected user {d.user!r} ({text}): check the user in sink.dsn and the "
                "password in EMBEDCLUSTER_SINK_PASSWORD"
            )
        if code == 1044:
            # MySQL answers 1044 (not 1049) for a missing database the user has no rights on.
            return SinkError(
                f"MySQL sink user {d.user!r} may not use database {d.database!r} on {d.where} ({text}): "
                f"create the database if it does not exist and GRANT ALL ON `{d.database}`.* TO the user, "
                "or fix sink.dsn"
            )
        if code == 1049:
            return SinkError(
                f"MySQL sink database {d.database!r} does not exist on {d.where}: create it "
                f"(CREATE DATABASE `{d.database}`) or fix sink.dsn"
            )
        if code in (2003, 2005, 2002, 2013):
            return SinkError(
                f"cannot reach the MySQL sink at {d.where} ({text}): check the host/port in sink.dsn and that "
                "the server is running and reachable"
            )
        return SinkError(f"cannot connect to the MySQL sink at {d.where}: error {code}: {text}")

    def _classify(self, exc: BaseException, what: str) -> SinkError:
        code = _error_code(exc)
        text = _error_text(exc)
        if code in (1044, 1142, 1143, 1227, 1370):
            return SinkError(
                f"MySQL sink user {self._dsn.user!r} lacks a privilege while {what} ({text}): grant it "
                f"(e.g. GRANT ALL ON `{self._dsn.database}`.* TO the user)"
            )
        if code == 1146:
            return SinkError(
                f"MySQL sink table is missing while {what} ({text}): run the pipeline so ensure_ready creates it"
            )
        if code in (1045, 1049, 2003, 2005):
            return self._connect_error(exc)
        return SinkError(f"MySQL sink error while {what}: error {code}: {text}")

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - the connection is already broken
                pass
            self._conn = None

    def _run(self, what: str, fn: Callable[[Any], T], autocommit: bool = False, deadline_s: float | None = None) -> T:
        """Run ``fn(cursor)`` as one transaction, committed before returning.

        ``autocommit`` runs it outside a transaction instead (vector index DDL and
        the Cloud SQL index procedures must not run inside one).  ``deadline_s``
        overrides ``retry_deadline_s`` (searches give up sooner than writes).

        Transient failures (lost connection, lock timeouts, deadlocks, Cloud SQL
        tables made read-only by an index build) roll back and retry the whole
        transaction with exponential backoff until ``retry_deadline_s``; then a
        :class:`SinkError` is raised.  Either way nothing is half-written: the
        caller acknowledges only after a successful return.
        """
        budget = self._retry_deadline_s if deadline_s is None else deadline_s
        deadline = time.monotonic() + budget
        delay = 0.05
        attempt = 0
        with self._lock:
            while True:
                attempt += 1
                try:
                    if self._conn is None:
                        # Raw driver errors here, so an unreachable server is retried too.
                        self._open_connection()
                    assert self._conn is not None
                    if autocommit:
                        self._conn.autocommit(True)
                    try:
                        with self._conn.cursor() as cur:
                            result = fn(cur)
                        self._conn.commit()
                    finally:
                        if autocommit and self._conn is not None and self._conn.open:
                            self._conn.autocommit(False)
                    return result
                except (SinkError, PointError):
                    self._rollback()  # nothing of this transaction is applied
                    raise
                except (pymysql.err.MySQLError, OSError) as exc:
                    self._rollback()
                    if not _is_retryable(exc):
                        raise self._classify(exc, what) from None
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise SinkError(
                            f"MySQL sink gave up {what} after {attempt} attempts in {budget:.0f}s: "
                            f"error {_error_code(exc)}: {_error_text(exc)}; nothing was acknowledged, so the "
                            "pipeline will retry once the server is writable again"
                        ) from None
                    log.warning(
                        "MySQL sink: %s failed (error %s: %s); retry %d in %.2fs",
                        what, _error_code(exc), _error_text(exc), attempt, min(delay, remaining),
                    )
                    if _error_code(exc) in _CONNECTION_LOST or isinstance(exc, (pymysql.err.InterfaceError, OSError)):
                        self._drop_connection()  # reopened at the top of the next attempt
                    time.sleep(min(delay, remaining))  # backoff between attempts, bounded by the deadline
                    delay = min(delay * 2, 5.0)

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.rollback()
        except Exception:  # noqa: BLE001 - a broken connection is replaced on retry
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None


    def _fetch_all(self, what: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        def run(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(sql, params)
            return list(cur.fetchall())

        return self._run(what, run, deadline_s=self._search_deadline_s)

    def _execute_statements(self, statements: list[Statement], what: str, autocommit: bool = False) -> None:
        def run(cur: Any) -> None:
            for sql, params in statements:
                cur.execute(sql, params or None)

        self._run(what, run, autocommit=autocommit)
