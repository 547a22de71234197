"""Compare the vector store with the source tables, and repair it (``embedcluster verify``).

Plain classes, no Ray and no command line.  :class:`Verifier` reads the source
through a :class:`RowSource` (:class:`PgRowSource` on PostgreSQL) and the store
through a :class:`PointStore`: any :class:`~actors.sinks.base.VectorSink`, or
the running pipeline's writer actor (``cluster/verify.py``).  Three classes of
difference, per configured table:

``missing``  a row with no point.
``stale``    a point whose text hash (``text_hash`` of ``TableSpec.render(row)[0]``),
             payload, table or key differs from what the row renders to.
``orphans``  a point of the table whose row is gone.

Bounded memory, any table size: the rows are read in primary-key order,
``chunk`` at a time (keyset pagination, like the backfill), and the points of
each chunk's ids are fetched by id; then the table's points are paged through
(``points_page``) and each page's keys are looked up in the source with one
query.  Nothing holds more than one chunk or page, plus 10 example keys per class.

Against a running pipeline, lag is never reported as a difference.  Each chunk
(and each page's lookup) is read in a REPEATABLE READ transaction whose first
statement reads the WAL insert position: every commit the snapshot sees ends
at or before it.  The store is read only once the slot's confirmed position
has passed it, and the pipeline confirms only what it has durably written.
The store may meanwhile be *ahead* of the snapshot (later changes applied), so
each key that differs is checked again: read fresh, wait for the slot again,
compare again (up to ``rechecks`` times); only what still differs is reported.
When the slot is not active (no pipeline running) nothing is waited for: the
comparison runs as is and the report says how much WAL the slot has not
confirmed yet (those changes may explain differences).

Repair (``repair=True``) writes what :class:`~actors.writer.Writer` would:
points with id ``point_id(table, key)``, the rendered text, its hash, the
payload, and a vector of the same model (``embed``); orphans are deleted.  The
slot is not touched.  Only keys that still differed after the re-check are
repaired, and each row is read again right before its point is written, under
``FOR SHARE``: a change of that row commits only after the write, so the
pipeline applies it after the repair, never before.  A point deleted because
its row was absent is followed by one more read of those keys: a row inserted
meanwhile (which the pipeline may have written just before the delete) is
written again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator, Protocol, Sequence

import numpy as np
import psycopg

from actors.changes import format_lsn, parse_lsn, point_id, text_hash
from actors.sinks.base import StoredPoint, VectorPoint
from actors.source_config import SourceConfig
from actors.source_schema import SlotInfo, TableSpec, connect, learn_types, pg_ident, slot_info
from actors.writer import state_name

log = logging.getLogger(__name__)

CLASSES = ("missing", "stale", "orphans")
#: example keys kept per class and table
EXAMPLES = 10
#: keys whose rows are locked, embedded and written together by a repair
REPAIR_BATCH = 64
#: keys per lookup statement
KEYS_PER_QUERY = 1000
#: the file beside an embedded (single-process) store in which its owner, the writer actor of a
#: running pipeline, records how to reach it (``actors.remote.announce_owner``): verify joins
#: that Ray cluster when the store is locked (``ray.init(address="auto")`` may pick another
#: local cluster on a machine that runs several)
OWNER_FILE = "embedcluster-owner.json"


class VerifyError(RuntimeError):
    """verify cannot run or finish; the message is one line saying why and what to do."""


class VerifyTimeout(VerifyError):
    """The slot did not confirm a snapshot's position in time."""


# -- the two sides --------------------------------------------------------------------------


@dataclass(slots=True)
class RowsRead:
    """Rows read in one snapshot.  ``lsn``: the WAL position every commit the snapshot
    sees ends at or before; ``cursor``: where the next keyset chunk starts (opaque)."""

    lsn: int
    rows: list[dict[str, Any]]
    cursor: Any = None


class RowSource(Protocol):
    """The source side (rows as :meth:`TableSpec.row_from_texts` makes them)."""

    def read_chunk(self, spec: TableSpec, cursor: Any, limit: int) -> RowsRead:
        """Up to ``limit`` rows after ``cursor`` (None: from the start) in primary-key order."""

    def read_keys(self, spec: TableSpec, keys: Sequence[Sequence[Any]]) -> RowsRead:
        """The rows of these keys that exist (one snapshot)."""

    def locked_rows(self, spec: TableSpec, keys: Sequence[Sequence[Any]]) -> ContextManager[list[dict[str, Any]]]:
        """The current rows of these keys, kept from changing until the block ends."""

    def wait_applied(self, lsn: int) -> bool:
        """Wait until the slot confirmed ``lsn``: True then; False at once when the slot is not
        active (nothing to wait for); :class:`VerifyTimeout` when it takes too long."""

    def slot(self) -> SlotInfo:
        """The slot now."""


class PointStore(Protocol):
    """The store side: what verify needs of a sink (a VectorSink has all of it)."""

    def get_points(self, point_ids: Sequence[str]) -> dict[str, StoredPoint]: ...

    def points_page(self, table: str | None, cursor: str | None,
                    limit: int | None = None) -> tuple[list[StoredPoint], str | None]: ...

    def get_state(self, name: str) -> dict[str, Any] | None: ...

    def upsert(self, points: Sequence[VectorPoint]) -> None: ...

    def delete(self, point_ids: Sequence[str]) -> None: ...


# -- what is compared --------------------------------------------------------------------------


@dataclass(slots=True)
class Expected:
    """What the store must hold for one row."""

    key: list[Any]
    text: str
    text_hash: str
    payload: dict[str, Any]


@dataclass(slots=True)
class Difference:
    kind: str  # one of CLASSES
    id: str
    key: list[Any]
    #: stale only: what differs ("text", "payload", "key", joined by "+")
    reason: str = ""


def expected_point(spec: TableSpec, row: dict[str, Any]) -> tuple[str, Expected]:
    """Point id and expected contents of one source row, rendered as the reader renders it."""
    text, payload = spec.render(row)
    key = list(spec.key_of(row))
    return point_id(spec.name, key), Expected(key, text, text_hash(text), payload)


def _canonical(value: Any) -> str:
    """JSON text that tells True from 1 and 1 from 1.0 (Python's == does not)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stale_reason(table: str, want: Expected, got: StoredPoint) -> str:
    """What differs between a row's expected point and the stored one ("" when nothing)."""
    reasons = []
    if got.text_hash != want.text_hash:
        reasons.append("text")
    if _canonical(got.payload) != _canonical(want.payload):
        reasons.append("payload")
    if got.table != table or _canonical(list(got.key)) != _canonical(want.key):
        reasons.append("key")
    return "+".join(reasons)


def classify(table: str, candidates: dict[str, list[Any]], expected: dict[str, Expected],
             stored: dict[str, StoredPoint]) -> list[Difference]:
    """The differences among ``candidates`` (point id -> key): rows as ``expected``, points as ``stored``."""
    out = []
    for pid, key in candidates.items():
        want, got = expected.get(pid), stored.get(pid)
        if want is not None and got is None:
            out.append(Difference("missing", pid, want.key))
        elif want is not None and got is not None:
            reason = stale_reason(table, want, got)
            if reason:
                out.append(Difference("stale", pid, want.key, reason))
        elif got is not None:
            out.append(Difference("orphans", pid, list(got.key)))
    return out


# -- the report ----------------------------------------------------------------------------------


@dataclass
class TableReport:
    table: str
    #: rows read from the source, points paged from the store
    rows: int = 0
    points: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    examples: dict[str, list[Difference]] = field(default_factory=lambda: {c: [] for c in CLASSES})
    repaired: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))

    def add(self, diff: Difference, examples: int) -> None:
        self.counts[diff.kind] += 1
        if len(self.examples[diff.kind]) < examples:
            self.examples[diff.kind].append(diff)

    @property
    def differences(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "points": self.points,
            **self.counts,
            "examples": {c: [_example(d) for d in self.examples[c]] for c in CLASSES},
            "repaired": dict(self.repaired),
        }


def _example(diff: Difference) -> dict[str, Any]:
    out: dict[str, Any] = {"key": diff.key, "id": diff.id}
    if diff.reason:
        out["reason"] = diff.reason
    return out


@dataclass
class Report:
    slot: str
    tables: list[TableReport] = field(default_factory=list)
    #: every wait found the slot active: the comparison was made against what the pipeline confirmed
    pipeline_running: bool = True
    slot_exists: bool = True
    #: when the slot was not active: WAL bytes it had not confirmed at the end
    unconfirmed_bytes: int | None = None
    #: keys compared again (up to ``rechecks`` times) because they differed at first sight
    rechecked: int = 0
    #: seconds spent waiting for the slot to confirm snapshots (the pipeline's lag, as verify met it)
    waited_s: float = 0.0
    repair: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: how the store was reached (set by the caller)
    store: str = ""

    @property
    def totals(self) -> dict[str, int]:
        return {c: sum(t.counts[c] for t in self.tables) for c in CLASSES}

    @property
    def differences(self) -> int:
        return sum(self.totals.values())

    @property
    def repaired(self) -> dict[str, int]:
        return {c: sum(t.repaired[c] for t in self.tables) for c in CLASSES}

    @property
    def clean(self) -> bool:
        return self.differences == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "differences": self.differences,
            **self.totals,
            "tables": {t.table: t.as_dict() for t in self.tables},
            "repair": self.repair,
            "repaired": self.repaired if self.repair else None,
            "slot": self.slot,
            "slot_exists": self.slot_exists,
            "pipeline_running": self.pipeline_running,
            "unconfirmed_bytes": self.unconfirmed_bytes,
            "rechecked": self.rechecked,
            "waited_s": round(self.waited_s, 3),
            "store": self.store,
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


# -- the comparison ---------------------------------------------------------------------------------


class Verifier:
    """Compares (and with ``repair`` fixes) the store against the source; see the module docstring.

    ``embed(texts) -> unit vectors`` is needed for a repair only.
    """

    def __init__(self, specs: dict[str, TableSpec], source: RowSource, store: PointStore, slot: str, *,
                 chunk: int = 1000, rechecks: int = 3, examples: int = EXAMPLES,
                 embed: Callable[[list[str]], np.ndarray] | None = None, repair_batch: int = REPAIR_BATCH) -> None:
        self.specs = specs
        self.source = source
        self.store = store
        self.slot = slot
        self.chunk = max(1, int(chunk))
        self.rechecks = max(1, int(rechecks))
        self.examples = examples
        self.embed = embed
        self.repair_batch = max(1, int(repair_batch))
        self._repair = False
        self._report = Report(slot)

    def run(self, repair: bool = False) -> Report:
        if repair and self.embed is None:
            raise VerifyError("a repair needs the embedding model (embed)")
        started = time.monotonic()
        self._repair = repair
        report = self._report = Report(self.slot, repair=repair)
        self._note_backfill()
        for spec in self.specs.values():
            table = TableReport(spec.name)
            report.tables.append(table)
            self._rows_pass(spec, table)
            self._points_pass(spec, table)
            log.info("verify %s: %d rows, %d points, %s", spec.name, table.rows, table.points,
                     ", ".join(f"{table.counts[c]} {c}" for c in CLASSES))
        info = self.source.slot()
        report.slot_exists = info.exists
        if not report.pipeline_running or not info.active:
            report.pipeline_running = False
            report.unconfirmed_bytes = info.lag_bytes
        report.seconds = time.monotonic() - started
        return report

    def _note_backfill(self) -> None:
        state = self.store.get_state(state_name(self.slot))
        if not state or not state.get("backfill_complete"):
            self._report.notes.append(
                f"the store holds no completed backfill for slot {self.slot}: a pipeline still backfilling "
                "has not written every row yet"
            )
            return
        absent = sorted(set(self.specs) - set(state.get("tables") or []))
        if absent:
            self._report.notes.append(f"the store's backfill did not cover {', '.join(absent)}")

    def _wait(self, lsn: int) -> bool:
        started = time.monotonic()
        waited = self.source.wait_applied(lsn)
        self._report.waited_s += time.monotonic() - started
        if not waited:
            self._report.pipeline_running = False
        return waited

    # -- the rows, chunk by chunk: missing and stale points

    def _rows_pass(self, spec: TableSpec, table: TableReport) -> None:
        cursor = None
        while True:
            read = self.source.read_chunk(spec, cursor, self.chunk)
            table.rows += len(read.rows)
            if read.rows:
                expected = dict(expected_point(spec, row) for row in read.rows)
                self._wait(read.lsn)
                stored = self.store.get_points(list(expected))
                candidates = {pid: want.key for pid, want in expected.items()}
                self._settle(spec, table, classify(spec.name, candidates, expected, stored))
            if len(read.rows) < self.chunk:
                return
            cursor = read.cursor

    # -- the points, page by page: orphans

    def _points_pass(self, spec: TableSpec, table: TableReport) -> None:
        cursor: str | None = None
        while True:
            page, cursor = self.store.points_page(spec.name, cursor, self.chunk)
            table.points += len(page)
            if page:
                read = self.source.read_keys(spec, [p.key for p in page])
                present = {expected_point(spec, row)[0] for row in read.rows}
                gone = {p.id: list(p.key) for p in page if p.id not in present}
                if gone:
                    self._wait(read.lsn)  # a delete not applied yet leaves its point until then
                    self._settle(spec, table, classify(spec.name, gone, {}, self.store.get_points(list(gone))))
            if cursor is None:
                return

    # -- what differs at first sight is compared again

    def _settle(self, spec: TableSpec, table: TableReport, diffs: list[Difference]) -> None:
        diffs = self._recheck(spec, diffs)
        for diff in diffs:
            table.add(diff, self.examples)
        if self._repair and diffs:
            self._repair_keys(spec, table, diffs)

    def _recheck(self, spec: TableSpec, diffs: list[Difference]) -> list[Difference]:
        self._report.rechecked += len(diffs)
        for _ in range(self.rechecks):
            if not diffs:
                break
            candidates = {d.id: d.key for d in diffs}
            read = self.source.read_keys(spec, list(candidates.values()))
            expected = dict(expected_point(spec, row) for row in read.rows)
            waited = self._wait(read.lsn)
            diffs = classify(spec.name, candidates, expected, self.store.get_points(list(candidates)))
            if not waited:
                break  # no pipeline: nothing changes the store but us, one fresh look is enough
        return diffs

    # -- repair

    def _repair_keys(self, spec: TableSpec, table: TableReport, diffs: list[Difference]) -> None:
        for start in range(0, len(diffs), self.repair_batch):
            group = diffs[start : start + self.repair_batch]
            deleted = self._rewrite(spec, {d.id: d.key for d in group}, delete=True)
            if deleted:
                # a row inserted after it was read as absent: its point may have been written by the
                # pipeline and deleted just now; written again here, under its lock
                self._rewrite(spec, deleted, delete=False)
            for diff in group:
                table.repaired[diff.kind] += 1

    def repair(self, spec: TableSpec, keys: dict[str, list[Any]]) -> None:
        """Write the current rows of ``keys`` (point id -> key) through the normal write path,
        delete the points of keys whose row is gone (``embedcluster deadletter retry``)."""
        if self.embed is None:
            raise VerifyError("a repair needs the embedding model (embed)")
        deleted = self._rewrite(spec, keys, delete=True)
        if deleted:
            self._rewrite(spec, deleted, delete=False)  # see _repair_keys

    def _rewrite(self, spec: TableSpec, keys: dict[str, list[Any]], delete: bool) -> dict[str, list[Any]]:
        """Write the current rows of ``keys`` (locked while written); delete the points of absent
        ones when ``delete``.  Returns the deleted point ids and keys."""
        assert self.embed is not None
        with self.source.locked_rows(spec, list(keys.values())) as rows:
            expected = dict(expected_point(spec, row) for row in rows)
            if expected:
                vectors = self.embed([want.text for want in expected.values()])
                self.store.upsert([
                    # as actors.writer.Writer builds an upserted point
                    VectorPoint(id=pid, table=spec.name, key=want.key, vector=vectors[i], text=want.text,
                                text_hash=want.text_hash, payload=want.payload)
                    for i, (pid, want) in enumerate(expected.items())
                ])
            gone = {pid: key for pid, key in keys.items() if pid not in expected} if delete else {}
            if gone:
                self.store.delete(list(gone))
        return gone


# -- the source on PostgreSQL ---------------------------------------------------------------------------


class PgRowSource:
    """:class:`RowSource` on the configured PostgreSQL database.

    Three connections: snapshots (REPEATABLE READ, read only), the slot's status, and
    the repair's row locks (READ COMMITTED, ``FOR SHARE``).  ``timeout``: how long
    :meth:`wait_applied` waits for the slot.
    """

    POLL_MIN_S = 0.01
    POLL_MAX_S = 0.25

    def __init__(self, source: SourceConfig, specs: dict[str, TableSpec], slot: str, timeout: float = 60.0) -> None:
        self.source = source
        self.slot_name = slot
        self.timeout = timeout
        self._snap = connect(source.dsn_value, source.dsn_masked, autocommit=True)
        self._snap.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._snap.read_only = True
        self._status = connect(source.dsn_value, source.dsn_masked, autocommit=True)
        self._locks: psycopg.Connection | None = None
        self._confirmed = 0
        self._key_sql: dict[str, str] = {}
        self._warned_no_lock = False
        learn_types(self._status, specs.values())  # as the reader does: domains, arrays of user types

    def close(self) -> None:
        for conn in (self._snap, self._status, self._locks):
            if conn is not None:
                conn.close()

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[int]:
        """A REPEATABLE READ transaction; yields the WAL insert position read by its first
        statement (the snapshot is taken then: every commit it sees ends at or before it)."""
        with self._snap.transaction():
            yield parse_lsn(self._snap.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]) or 0

    def read_chunk(self, spec: TableSpec, cursor: Any, limit: int) -> RowsRead:
        """The cursor is (last key read, the greatest key when the scan began): rows inserted
        past the end of the key range while verify runs are not chased (a serial key's tail
        can grow faster than a scan that waits for the slot after every chunk)."""
        keys = spec.quoted_keys
        nkeys = len(spec.key_columns)
        marks = ", ".join(["%s"] * nkeys)
        with self._snapshot() as lsn:
            if cursor is None:
                descending = ", ".join(f"{pg_ident(c)} DESC" for c in spec.key_columns)
                top = self._snap.execute(f"SELECT {keys} FROM {spec.quoted_table} ORDER BY {descending} LIMIT 1").fetchone()
                if top is None:
                    return RowsRead(lsn, [], None)
                after, end = None, tuple(top)
            else:
                after, end = cursor
            # key columns twice: native for the keyset, text for the values (as the backfill reads rows)
            sql = f"SELECT {keys}, {spec.text_select_list()} FROM {spec.quoted_table} WHERE ({keys}) <= ({marks})"
            params = end
            if after is not None:
                sql += f" AND ({keys}) > ({marks})"
                params = (*end, *after)
            raw = self._snap.execute(f"{sql} ORDER BY {keys} LIMIT {int(limit)}", params).fetchall()
        rows = [spec.row_from_texts(r[nkeys:]) for r in raw]
        return RowsRead(lsn, rows, (tuple(raw[-1][:nkeys]), end) if raw else cursor)

    def read_keys(self, spec: TableSpec, keys: Sequence[Sequence[Any]]) -> RowsRead:
        with self._snapshot() as lsn:
            rows = self._rows_by_keys(self._snap, spec, keys)
        return RowsRead(lsn, rows)

    @contextlib.contextmanager
    def locked_rows(self, spec: TableSpec, keys: Sequence[Sequence[Any]]) -> Iterator[list[dict[str, Any]]]:
        if self._locks is None:
            self._locks = connect(self.source.dsn_value, self.source.dsn_masked, autocommit=True)
        conn = self._locks
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{max(1, int(self.timeout))}s'")
            try:
                with conn.transaction():
                    rows = self._rows_by_keys(conn, spec, keys, lock=True)
            except psycopg.errors.InsufficientPrivilege:
                # FOR SHARE needs UPDATE privilege: read without the lock (a change racing the repair may then be overwritten)
                if not self._warned_no_lock:
                    log.warning("verify: cannot lock rows of %s (no UPDATE privilege); repairing without row locks", spec.name)
                    self._warned_no_lock = True
                rows = self._rows_by_keys(conn, spec, keys)
            except psycopg.errors.LockNotAvailable:
                raise VerifyError(
                    f"rows of {spec.name} stayed locked by another transaction for {int(self.timeout)} s; "
                    "repair again later, or raise --timeout"
                ) from None
            yield rows

    def _rows_by_keys(self, conn: psycopg.Connection, spec: TableSpec, keys: Sequence[Sequence[Any]],
                      lock: bool = False) -> list[dict[str, Any]]:
        """The rows of ``keys`` that exist, in the current transaction.  A key that cannot be a key
        of the table (another arity, a value the column's type rejects) matches no row."""
        sql = self._keys_sql(conn, spec) + (" FOR SHARE" if lock else "")
        texts = []
        for key in keys:
            if len(key) == len(spec.key_columns):
                try:
                    texts.append(spec.key_texts(key))
                except Exception:  # noqa: BLE001 - a stored key no value of the column renders to
                    continue
        raw: list[tuple[Any, ...]] = []
        for start in range(0, len(texts), KEYS_PER_QUERY):
            chunk = texts[start : start + KEYS_PER_QUERY]
            try:
                with conn.transaction():  # a savepoint: a bad key fails only this statement
                    raw += conn.execute(sql, [list(column) for column in zip(*chunk)]).fetchall()
            except psycopg.errors.DataError:
                for one in chunk:  # find the rows of the good keys one by one
                    try:
                        with conn.transaction():
                            raw += conn.execute(sql, [[v] for v in one]).fetchall()
                    except psycopg.errors.DataError:
                        continue
        return [spec.row_from_texts(r) for r in raw]

    def _keys_sql(self, conn: psycopg.Connection, spec: TableSpec) -> str:
        """SELECT of the rows of a list of keys (:meth:`TableSpec.rows_by_keys_sql`), once per table."""
        sql = self._key_sql.get(spec.name)
        if sql is None:
            sql = self._key_sql[spec.name] = spec.rows_by_keys_sql(conn)
        return sql

    def wait_applied(self, lsn: int) -> bool:
        if lsn <= self._confirmed:
            return True
        deadline = time.monotonic() + self.timeout
        delay = self.POLL_MIN_S
        while True:
            info = slot_info(self._status, self.slot_name)
            if not info.exists or not info.active:
                return False
            confirmed = info.confirmed_lsn or 0
            if confirmed >= lsn:
                self._confirmed = confirmed
                return True
            if time.monotonic() >= deadline:
                raise VerifyTimeout(
                    f"slot {self.slot_name} has not confirmed WAL position {format_lsn(lsn)} within "
                    f"{self.timeout:g} s (it is at {format_lsn(confirmed)}, {lsn - confirmed} bytes behind): the "
                    "pipeline is far behind or not applying changes; see embedcluster status, or raise --timeout"
                )
            time.sleep(delay)
            delay = min(delay * 2, self.POLL_MAX_S)

    def slot(self) -> SlotInfo:
        return slot_info(self._status, self.slot_name)
