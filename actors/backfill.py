"""The incremental backfill: existing rows read in primary-key chunks while the stream runs.

``ChunkedBackfill`` is driven by :class:`actors.cdc_reader.PgChangeSource`, which streams the
slot with logical messages on.  ``[source] backfill_readers`` threads, each with a connection
of its own, read the tables' key ranges chunk after chunk between a low and a high watermark
(``actors/watermark.py`` says why that agrees with the stream); the stream's reader hands each
chunk's rows out where its high watermark is, minus the keys the stream changed meanwhile.

The plan is a small JSON document: per table, its key ranges (cut from the first key column's
statistics, see :func:`plan_ranges`), each with a cursor (the text form of the last key handed
out) and ``done``.  The batch that hands out the last row of a chunk carries the document as
it is after that chunk, and the writer stores it with the batch's points, after them: so the
stored plan never claims a chunk whose rows are not durably written, and a backfill stopped
anywhere (a SIGKILL of ``run``) resumes at the first chunk it does not claim.  A chunk read
but not handed out before the stop is simply read again.

Commit order in the WAL is not quite visibility order: a transaction whose commit record lies
before a low watermark can still be invisible to the chunk's SELECT for a moment (it has not
left the proc array yet; seen in the tests).  Its change sits before the window, so nothing
would drop the stale copy.  Such a transaction had already marked the row version it replaced
(``xmax``), so the SELECT returns that mark, and rows carrying one are read again where the
high watermark is handed out (``PgChangeSource._recheck``).

Memory is bounded: each reader has at most :data:`CHUNKS_AHEAD` chunks read and not yet handed
out; past that it waits for the stream (which waits for the pipeline's window).
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import psycopg

from actors.changes import Change
from actors.source_schema import SourceError, SourceFatal, TableSpec, pg_ident
from actors.watermark import (
    SIGNAL_PREFIX,
    WATERMARK_PREFIX,
    ChunkWindows,
    key_ranges,
    new_chunk_id,
    signal_content,
    split_points,
    watermark_content,
)

log = logging.getLogger(__name__)

#: chunks a reader may have read but not handed out (memory: readers x this x backfill_chunk rows)
CHUNKS_AHEAD = 2
#: sample size for cutting a table without statistics into ranges
SAMPLE_ROWS = 10_000


@dataclass(slots=True)
class ChunkDone:
    """Put in the reader's queue after a chunk's rows: once handed out, the plan moves on."""

    table: str
    index: int  # the key range's index in the plan
    cursor: list[str | None] | None  # text form of the chunk's last key (None: it had no rows)
    done: bool  # the range has no rows past this chunk
    rows: int  # rows of the chunk handed out
    reader: int  # the reader that read it (its CHUNKS_AHEAD budget is released)
    #: keys whose row version the SELECT read had been updated, deleted or locked by a
    #: transaction (xmax set): the stream's reader reads them again at the high watermark
    recheck: frozenset[tuple[Any, ...]] = frozenset()


def _fresh(ranges: list[tuple[str | None, str | None]]) -> list[dict[str, Any]]:
    return [{"after": a, "up_to": u, "cursor": None, "done": False} for a, u in ranges]


def new_plan(ranges: dict[str, list[tuple[str | None, str | None]]]) -> dict[str, Any]:
    """A plan document with nothing done: per table its ``(after, up_to)`` key ranges."""
    return {"tables": {t: _fresh(rs) for t, rs in ranges.items()}, "rows": 0}


def request_backfill(conn: psycopg.Connection, slot: str, tables: list[str]) -> str:
    """Ask the pipeline of ``slot`` to backfill ``tables`` again: a message in the WAL, which
    its stream reaches in commit order (now, or when the pipeline next runs); returns its LSN."""
    row = conn.execute("SELECT pg_logical_emit_message(true, %s, %s)::text",
                       (SIGNAL_PREFIX, signal_content(slot, tables))).fetchone()
    if not conn.autocommit:
        conn.commit()
    return row[0]


def plan_finished(plan: dict[str, Any]) -> bool:
    return all(r["done"] for rs in plan["tables"].values() for r in rs)


def plan_fraction(plan: dict[str, Any]) -> float:
    """Share of key ranges done (for logs; rows are what progress counts)."""
    ranges = [r for rs in plan["tables"].values() for r in rs]
    return sum(r["done"] for r in ranges) / len(ranges) if ranges else 1.0


def _key_types(conn: psycopg.Connection, spec: TableSpec) -> list[str]:
    return [conn.execute("SELECT format_type(%s::oid, NULL)", (spec.column_types[c],)).fetchone()[0]
            for c in spec.key_columns]


def plan_ranges(conn: psycopg.Connection, spec: TableSpec, parts: int) -> list[tuple[str | None, str | None]]:
    """``parts`` key ranges of about as many rows each, on the first key column, up to its
    largest value now.

    Cut from the column's histogram in ``pg_stats`` (what ANALYZE keeps); a table without one
    (never analysed) is cut from a sample of about :data:`SAMPLE_ROWS` rows.  The values stay in
    their text form and are cast back by the server, so any key type works.
    """
    column = spec.key_columns[0]
    col = pg_ident(column)
    # The last range ends at the largest key there is now: rows inserted later come through
    # the stream (the slot exists already), and reading them too would chase the inserts.
    highest = conn.execute(f"SELECT max({col})::text FROM {spec.quoted_table}").fetchone()[0]
    if highest is None:
        return key_ranges([])  # empty now: one (empty) range, what follows is streamed
    if parts <= 1:
        return [(None, highest)]
    typ = _key_types(conn, spec)[0]
    rows = conn.execute(
        f"SELECT s.inherited, u.b::text FROM pg_stats s, unnest(s.histogram_bounds::text::{typ}[]) "
        "WITH ORDINALITY AS u(b, i) WHERE s.schemaname = %s AND s.tablename = %s AND s.attname = %s "
        "ORDER BY s.inherited, u.i",
        (spec.config.schema_name, spec.config.table_name, column),
    ).fetchall()
    # a partitioned (or inherited) table's statistics over all its rows are the inherited ones
    inherited = [b for inh, b in rows if inh]
    bounds = inherited or [b for inh, b in rows if not inh]
    if len(bounds) < 3:
        estimate = conn.execute(
            "SELECT sum(greatest(c.reltuples, 0)) FROM pg_partition_tree(%s::regclass) p "
            "JOIN pg_class c ON c.oid = p.relid WHERE p.isleaf", (spec.quoted_table,)).fetchone()[0] or 0
        percent = 100.0 if estimate <= SAMPLE_ROWS else max(0.01, 100.0 * SAMPLE_ROWS / float(estimate))
        bounds = [r[0] for r in conn.execute(
            f"SELECT {col}::text FROM {spec.quoted_table} TABLESAMPLE SYSTEM (%s) ORDER BY {col}",
            (percent,)).fetchall()]
    ranges = key_ranges(split_points(bounds, parts))
    return [*ranges[:-1], (ranges[-1][0], highest)]


class _ChunkSql:
    """The SELECT of one chunk of a table: its rows in text form, in key order, after a cursor."""

    def __init__(self, conn: psycopg.Connection, spec: TableSpec, limit: int) -> None:
        self.spec = spec
        self.types = _key_types(conn, spec)
        self.nkeys = len(spec.key_columns)
        self.limit = limit

    def query(self, after: str | None, up_to: str | None, cursor: list[str | None] | None) -> tuple[str, list[Any]]:
        spec, first = self.spec, pg_ident(self.spec.key_columns[0])
        where: list[str] = []
        params: list[Any] = []
        if after is not None:
            where.append(f"{first} > CAST(%s AS {self.types[0]})")
            params.append(after)
        if up_to is not None:
            where.append(f"{first} <= CAST(%s AS {self.types[0]})")
            params.append(up_to)
        if cursor is not None:
            marks = ", ".join(f"CAST(%s AS {t})" for t in self.types)
            where.append(f"({spec.quoted_keys}) > ({marks})")
            params.extend(cursor)
        # xmax: see ChunkedBackfill._read_range (a user column cannot be named so)
        sql = f"SELECT {spec.text_select_list()}, xmax::text <> '0' FROM {spec.quoted_table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql + f" ORDER BY {spec.quoted_keys} LIMIT {self.limit}", params


class ChunkedBackfill:
    """The chunk readers of one backfill, and the windows the stream's reader feeds.

    Thread use: the reader threads run :meth:`_run`; the stream's reader (one thread)
    calls :meth:`changed`, :meth:`truncated`, :meth:`watermark`, :meth:`handed_out` and
    :meth:`check`.  The windows are shared under one lock.
    """

    def __init__(self, specs: dict[str, TableSpec], plan: dict[str, Any], readers: int, chunk: int,
                 connect: Callable[[], psycopg.Connection], slot: str) -> None:
        self.specs = specs
        self.plan = copy.deepcopy(plan)
        self.readers = max(1, readers)
        self.chunk = chunk
        self._connect = connect
        self.slot = slot
        self._windows = ChunkWindows()
        self._lock = threading.Lock()
        # chunk id -> its ChunkDone, once its rows are read (the high watermark follows)
        self._read: dict[str, ChunkDone] = {}
        self._todo = [(t, i) for t, rs in self.plan["tables"].items() for i, r in enumerate(rs) if not r["done"]]
        self._budget = [threading.Semaphore(CHUNKS_AHEAD) for _ in range(self.readers)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # per reader: it is taking ranges (set and cleared under the lock, see _next_range)
        self._running = [False] * self.readers
        self.error: BaseException | None = None

    # -- the readers --------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._start_readers()

    def _start_readers(self) -> None:
        """A reader for each idle slot while ranges wait (lock held)."""
        for n in range(self.readers):
            if not self._todo or self._stop.is_set():
                return
            if self._running[n]:
                continue
            self._running[n] = True
            thread = threading.Thread(target=self._run, args=(n,), name=f"backfill-{self.slot}-{n}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def add_tables(self, ranges: dict[str, list[tuple[str | None, str | None]]]) -> list[str]:
        """Backfill these tables too (a request arrived while this backfill runs); returns the
        ones added, leaving out those it backfills already."""
        with self._lock:
            added = [t for t in ranges if t not in self.plan["tables"]]
            for table in added:
                self.plan["tables"][table] = _fresh(ranges[table])
                self._todo.extend((table, i) for i in range(len(ranges[table])))
            self._start_readers()
        return added

    def _next_range(self, n: int) -> tuple[str, int] | None:
        with self._lock:
            if self._todo:
                return self._todo.pop(0)
            # decided under the lock: add_tables either finds this reader gone or gives it work
            self._running[n] = False
            return None

    def _run(self, n: int) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # noqa: BLE001 - raised by the stream's reader (check)
            self.error = exc
            with self._lock:
                self._running[n] = False
            return
        try:
            sqls: dict[str, _ChunkSql] = {}
            while not self._stop.is_set():
                task = self._next_range(n)
                if task is None:
                    return
                table, index = task
                spec = self.specs[table]
                if table not in sqls:
                    sqls[table] = _ChunkSql(conn, spec, self.chunk)
                self._read_range(n, conn, sqls[table], table, index)
        except psycopg.errors.InsufficientPrivilege as exc:
            detail = (exc.diag.message_primary or str(exc)).strip()
            self.error = SourceFatal(f"reading the source failed: {detail}; GRANT SELECT ON the configured "
                                     "tables TO the user of source.dsn")
        except BaseException as exc:  # noqa: BLE001
            if not self._stop.is_set():
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.error = SourceError(f"backfill reader {n} of slot {self.slot} failed: {detail}")
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def _read_range(self, n: int, conn: psycopg.Connection, sql: _ChunkSql, table: str, index: int) -> None:
        spec = sql.spec
        with self._lock:
            entry = self.plan["tables"][table][index]
            after, up_to, cursor = entry["after"], entry["up_to"], entry["cursor"]
        done = False
        while not done:
            # wait for room (the stream hands earlier chunks out), waking up to see a stop
            while not self._budget[n].acquire(timeout=0.5):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            chunk_id = new_chunk_id()
            with self._lock:
                self._windows.begin(chunk_id)
            # Low watermark, then the SELECT, then the high one: three transactions, in that
            # order; the SELECT's snapshot is taken after the low watermark committed.
            self._emit(conn, "low", chunk_id)
            query, params = sql.query(after, up_to, cursor)
            rows = conn.execute(query, params).fetchall()
            changes = []
            recheck = set()
            for *texts, busy in rows:
                row = spec.row_from_texts(texts)
                text, payload = spec.render(row)
                key = spec.key_of(row)
                changes.append(Change("upsert", table, key, text, payload, 0))
                if busy:
                    # Commit order in the WAL is not visibility order: a transaction whose
                    # commit record precedes the low watermark can still be invisible to
                    # the SELECT for a moment (it has not left the proc array yet), and its
                    # change then sits before the window, where nothing drops the stale copy
                    # read here.  Such a transaction had already marked the row version
                    # (xmax), so only these rows can be stale: re-read at the high watermark.
                    recheck.add(key)
            done = len(rows) < self.chunk
            if rows:
                cursor = list(rows[-1][: sql.nkeys])
            with self._lock:
                self._windows.rows_read(chunk_id, changes)
                self._read[chunk_id] = ChunkDone(table, index, cursor, done, 0, n, frozenset(recheck))
            self._emit(conn, "high", chunk_id)

    @staticmethod
    def _emit(conn: psycopg.Connection, kind: str, chunk_id: str) -> None:
        conn.execute("SELECT pg_logical_emit_message(true, %s, %s)",
                     (WATERMARK_PREFIX, watermark_content(kind, chunk_id)))

    # -- the stream's side ------------------------------------------------------------

    def changed(self, table: str, key: tuple[Any, ...]) -> None:
        with self._lock:
            self._windows.changed(table, key)

    def truncated(self, table: str) -> None:
        with self._lock:
            self._windows.truncated(table)

    def watermark(self, kind: str, chunk_id: str) -> tuple[list[Change], ChunkDone] | None:
        """The stream reached a watermark.  At a high one of ours: the chunk's rows to hand out
        right there, then its :class:`ChunkDone` (after the rows: see :meth:`handed_out`)."""
        with self._lock:
            rows = self._windows.watermark(kind, chunk_id)
            done = self._read.pop(chunk_id, None) if kind == "high" else None
        if kind != "high" or done is None:
            return None  # a low one, or another run's
        if rows is None:
            # this stream showed the high watermark but not the low one: it cannot have
            # started in between (a restart makes a new backfill from the stored plan)
            raise SourceError(f"slot {self.slot}: backfill chunk {chunk_id} reached its high watermark without "
                              "its low one; the backfill resumes from its last stored chunk")
        done.rows = len(rows)
        return rows, done

    def handed_out(self, done: ChunkDone) -> dict[str, Any]:
        """A chunk's rows are all in a batch: the plan as it is after it (to store with that batch)."""
        self._budget[done.reader].release()
        with self._lock:
            entry = self.plan["tables"][done.table][done.index]
            entry["cursor"], entry["done"] = done.cursor, done.done
            self.plan["rows"] = int(self.plan.get("rows") or 0) + done.rows
            return copy.deepcopy(self.plan)

    @property
    def finished(self) -> bool:
        with self._lock:
            return plan_finished(self.plan)

    @property
    def tables(self) -> list[str]:
        with self._lock:
            return list(self.plan["tables"])

    def check(self) -> None:
        """Raise what stopped a reader (it is gone, and so is its part of the backfill)."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(10)
        self._threads.clear()
