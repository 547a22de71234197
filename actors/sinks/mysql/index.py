"""Vector index lifecycle: when a Cloud SQL index must be created or rebuilt, and doing it.

:func:`plan_index` is the pure decision (no index below ``MIN_INDEX_ROWS``;
rebuild once the row count drifted by ``REBUILD_DRIFT_FACTOR`` from the count
at build time, which the sink records in its state table under
``INDEX_STATE_NAME``).  :class:`IndexMixin` is the sink's side: looking the
index up, running the DDL, keeping the bookkeeping, and re-checking after writes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import pymysql.err

from actors.sinks.base import SinkError
from actors.sinks.mysql.connection import _is_retryable
from actors.sinks.mysql.dialects import SqlDialect
from actors.sinks.mysql.server import Dialect

log = logging.getLogger(__name__)

#: Cloud SQL refuses to build a vector index on fewer rows than this.
MIN_INDEX_ROWS = 1_000
#: Preview syntax: BRUTE_FORCE below this many rows, TREE_SQ from here.
TREE_SQ_MIN_ROWS = 10_000
#: Rebuild the index once the row count grew or shrank by this factor since the build.
REBUILD_DRIFT_FACTOR = 2.0
#: State record (in ``<table>_state``) where the sink keeps its index bookkeeping.
INDEX_STATE_NAME = "mysql_sink.vector_index"


@dataclass(frozen=True)
class IndexStatus:
    """What is known about the table's vector index."""

    exists: bool
    index_type: str | None = None
    rows_at_build: int | None = None


@dataclass(frozen=True)
class IndexPlan:
    """What :func:`plan_index` decided: ``none``, ``create``, ``rebuild`` or ``record`` (adopt an unknown index)."""

    action: Literal["none", "create", "rebuild", "record"]
    index_type: str | None
    reason: str


def preview_index_type(rows: int) -> str:
    """Index type for the preview syntax: BRUTE_FORCE below 10,000 rows, TREE_SQ from there."""
    return "TREE_SQ" if rows >= TREE_SQ_MIN_ROWS else "BRUTE_FORCE"


def plan_index(dialect: Dialect, rows: int, status: IndexStatus) -> IndexPlan:
    """Decide whether a size-managed (Cloud SQL) vector index must be created or rebuilt."""
    wanted = preview_index_type(rows) if dialect == "cloudsql-preview" else "SCANN"
    if not status.exists:
        if rows < MIN_INDEX_ROWS:
            return IndexPlan("none", None, f"{rows} rows < {MIN_INDEX_ROWS}: exact KNN until the table is larger")
        return IndexPlan("create", wanted, f"{rows} rows >= {MIN_INDEX_ROWS}")
    if status.rows_at_build is None:
        return IndexPlan("record", status.index_type or wanted, "index found without build bookkeeping; adopting it")
    built = max(status.rows_at_build, 1)
    if dialect == "cloudsql-preview" and status.index_type and status.index_type != wanted and rows >= MIN_INDEX_ROWS:
        return IndexPlan("rebuild", wanted, f"{rows} rows call for {wanted} (index is {status.index_type})")
    if rows >= built * REBUILD_DRIFT_FACTOR or rows * REBUILD_DRIFT_FACTOR <= built:
        if rows < MIN_INDEX_ROWS:
            # Cannot rebuild below the minimum; the old index still answers.
            return IndexPlan("none", None, f"{rows} rows < {MIN_INDEX_ROWS}: keeping the existing index")
        return IndexPlan("rebuild", wanted, f"row count drifted from {status.rows_at_build} at build time to {rows}")
    return IndexPlan("none", None, "index is current")


class IndexMixin:
    """Index maintenance for :class:`~actors.sinks.mysql.sink.MySQLSink`.

    Uses the sink's ``_run``/``_execute_statements`` (:class:`ConnectionMixin`),
    ``count`` and ``get_state``/``set_state``.
    """

    sql: SqlDialect
    dialect: Dialect
    _index_exists: bool | None
    _index_checked_at: float
    _changes_since_check: int
    _next_index_check: int
    maintains_index: bool

    def _index_present(self) -> bool:
        lookups = self.sql.index_lookup_sql()
        if not lookups:
            return False

        def look(cur: Any) -> bool:
            for sql, params in lookups:
                try:
                    cur.execute(sql, params)
                except pymysql.err.ProgrammingError:
                    continue  # view/table not present on this server version
                except pymysql.err.OperationalError as exc:
                    if _is_retryable(exc):
                        raise
                    continue
                if cur.fetchone() is not None:
                    return True
            return False

        present = self._run("looking up the vector index", look)
        self._index_exists = present
        self._index_checked_at = time.monotonic()
        return present

    def _has_index_cached(self, ttl_s: float = 30.0) -> bool:
        if self._index_exists is None or time.monotonic() - self._index_checked_at > ttl_s:
            return self._index_present()
        return self._index_exists

    def _read_index_state(self) -> dict[str, Any] | None:
        return self.get_state(INDEX_STATE_NAME)

    def _write_index_state(self, value: dict[str, Any] | None) -> None:
        self.set_state(INDEX_STATE_NAME, value)

    def index_status(self) -> IndexStatus:
        """Whether the vector index exists, its type and the row count when it was built."""
        exists = self._index_present()
        record = self._read_index_state() or {}
        if not exists:
            return IndexStatus(False)
        rows = record.get("rows_at_build")
        return IndexStatus(True, record.get("index_type"), int(rows) if rows is not None else None)

    def maintain_index(self) -> IndexPlan:
        """Create or rebuild the Cloud SQL vector index when the table size calls for it.

        Called by ``ensure_ready`` and after writes (amortised: the next check is
        due after another 10% of the table changed).  Failures are logged, not
        raised: the data is committed and search falls back to exact KNN.
        """
        if not self.sql.size_managed_index:
            return IndexPlan("none", None, f"the {self.dialect} dialect needs no index maintenance")
        rows = self.count()
        status = self.index_status()
        plan = plan_index(self.dialect, rows, status)
        self._changes_since_check = 0
        self._next_index_check = max(500, rows // 10)
        if plan.action == "none":
            return plan
        if plan.action == "record":
            self._write_index_state({"index_type": plan.index_type, "rows_at_build": rows, "adopted": True})
            return plan
        if plan.action == "create":
            statements = self.sql.create_index_sql(plan.index_type)
        else:
            statements = self.sql.rebuild_index_sql(plan.index_type)
        log.info(
            "MySQL sink: %s vector index %s (%s, %s); the table is read-only until it finishes",
            "creating" if plan.action == "create" else "rebuilding", self.sql.index_name, plan.index_type, plan.reason,
        )
        started = time.monotonic()
        try:
            self._execute_statements(statements, f"{plan.action} vector index {self.sql.index_name}", autocommit=True)
        except SinkError as exc:
            log.warning("MySQL sink: vector index %s failed, searches stay exact: %s", plan.action, exc)
            self._index_exists = None
            return IndexPlan("none", None, f"{plan.action} failed: {exc}")
        self._index_exists = True
        self._index_checked_at = time.monotonic()
        self._write_index_state({"index_type": plan.index_type, "rows_at_build": rows, "built_at": time.time()})
        log.info("MySQL sink: vector index %s ready after %.1fs", self.sql.index_name, time.monotonic() - started)
        return plan

    def _after_write(self, changes: int) -> None:
        if not self.sql.size_managed_index or changes <= 0 or not self.maintains_index:
            return
        self._changes_since_check += changes
        if self._changes_since_check >= self._next_index_check:
            self.maintain_index()
