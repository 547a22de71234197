"""actors/verify.py: classification, chunking, lag and repair, on a real in-memory Qdrant sink.

The source is a table held in memory (:class:`TableSource`) whose changes reach the store
through the real :class:`~actors.writer.Writer` only when verify waits for the slot, the way
a running pipeline lags behind the commits.  The PostgreSQL side (snapshots, the slot) is
``tests/integration/test_production_schemas.py``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytest

from actors.changes import Change, ChangeBatch, point_id, text_hash
from actors.sinks.base import StoredPoint, VectorPoint
from actors.sinks.qdrant import QdrantSink, QdrantSinkConfig
from actors.source_config import TableConfig
from actors.source_schema import SlotInfo, TableSpec
from actors.verify import (
    CLASSES,
    Expected,
    Verifier,
    VerifyTimeout,
    classify,
    expected_point,
    stale_reason,
)
from actors.writer import Writer

DIM = 8
BOOKS = "public.books"
PAIRS = "public.pairs"


def books_spec() -> TableSpec:
    config = TableConfig(name=BOOKS, text="{description}", payload=["name", "year"])
    return TableSpec(config, ["id"], {"id": 23, "name": 25, "description": 25, "year": 23},
                     ["id", "description", "name", "year"])


def pairs_spec() -> TableSpec:
    config = TableConfig(name=PAIRS, text="{a} {b}: {body}", payload=["body"])
    return TableSpec(config, ["a", "b"], {"a": 25, "b": 23, "body": 25}, ["a", "b", "body"])


def book(i: int, description: str | None = None, year: int | None = None) -> dict[str, Any]:
    return {"id": i, "name": f"Book {i}", "description": description or f"A story number {i}.",
            "year": 1900 + i if year is None else year}


def embed(texts: list[str]) -> np.ndarray:
    """Deterministic unit vectors: the same text always gets the same vector."""
    out = []
    for t in texts:
        v = np.random.default_rng(int(text_hash(t)[:8], 16)).normal(size=DIM).astype(np.float32)
        out.append(v / np.linalg.norm(v))
    return np.stack(out) if out else np.zeros((0, DIM), np.float32)


class RecordingStore:
    """The sink, with the size of every read and the ids of every write recorded."""

    def __init__(self, sink: QdrantSink) -> None:
        self.sink = sink
        self.get_sizes: list[int] = []
        self.page_limits: list[int | None] = []
        self.upserted: list[str] = []
        self.deleted: list[str] = []

    def get_points(self, ids: Sequence[str]) -> dict[str, StoredPoint]:
        self.get_sizes.append(len(ids))
        return self.sink.get_points(ids)

    def points_page(self, table: str | None, cursor: str | None, limit: int | None = None):
        self.page_limits.append(limit)
        return self.sink.points_page(table, cursor, limit)

    def get_state(self, name: str) -> dict[str, Any] | None:
        return self.sink.get_state(name)

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        self.upserted += [p.id for p in points]
        self.sink.upsert(points)

    def delete(self, ids: Sequence[str]) -> None:
        self.deleted += list(ids)
        self.sink.delete(ids)


class TableSource:
    """Tables in memory plus a lagging pipeline: committed changes reach the store (through the
    real Writer) only up to the position verify waits for.  ``active=False``: no pipeline runs;
    ``stuck=True``: it runs but confirms nothing."""

    def __init__(self, writer: Writer, specs: dict[str, TableSpec], active: bool = True, stuck: bool = False) -> None:
        self.writer = writer
        self.specs = specs
        self.tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {name: {} for name in specs}
        self.lsn = 100
        self.confirmed = 100
        self.pending: list[tuple[int, str, tuple[Any, ...], dict[str, Any] | None]] = []
        self.active = active
        self.stuck = stuck
        self.seq = 0
        self.chunk_sizes: list[int] = []
        self.key_reads: list[int] = []
        #: called after every snapshot read (a change committed right after it)
        self.after_read: Callable[[], None] | None = None
        #: (key, hook, "before" | "after"): called once, when a repair locks that key's row, before or
        #: after reading it (what the lock of a real database keeps from happening during the write)
        self.in_lock: tuple[tuple[Any, ...], Callable[[], None], str] | None = None

    # -- the application's side
    def commit(self, table: str, key: tuple[Any, ...], row: dict[str, Any] | None, applied: bool = False) -> None:
        self.lsn += 10
        if row is None:
            self.tables[table].pop(key, None)
        else:
            self.tables[table][key] = row
        self.pending.append((self.lsn, table, key, row))
        if applied:
            self.apply_until(self.lsn)

    def apply_until(self, lsn: int) -> None:
        """The pipeline writes every change committed up to ``lsn`` and confirms ``lsn``."""
        due = [p for p in self.pending if p[0] <= lsn]
        self.pending = [p for p in self.pending if p[0] > lsn]
        changes = []
        for _, table, key, row in due:
            if row is None:
                changes.append(Change("delete", table, key))
            else:
                text, payload = self.specs[table].render(row)
                changes.append(Change("upsert", table, key, text, payload))
        if changes:
            self.seq += 1
            batch = ChangeBatch(self.seq, changes)
            self.writer.apply(batch, embed(batch.texts_to_embed()))
        self.confirmed = max(self.confirmed, lsn)

    # -- RowSource
    def _read(self, rows: list[dict[str, Any]]) -> int:
        lsn = self.lsn
        if self.after_read is not None:
            self.after_read()
        return lsn

    def read_chunk(self, spec: TableSpec, cursor: Any, limit: int):
        from actors.verify import RowsRead

        table = self.tables[spec.name]
        keys = sorted(k for k in table if cursor is None or k > cursor)[:limit]
        rows = [dict(table[k]) for k in keys]
        self.chunk_sizes.append(len(rows))
        return RowsRead(self._read(rows), rows, keys[-1] if keys else cursor)

    def read_keys(self, spec: TableSpec, keys: Sequence[Sequence[Any]]):
        from actors.verify import RowsRead

        self.key_reads.append(len(keys))
        table = self.tables[spec.name]
        rows = [dict(table[tuple(k)]) for k in keys if tuple(k) in table]
        return RowsRead(self._read(rows), rows)

    @contextlib.contextmanager
    def locked_rows(self, spec: TableSpec, keys: Sequence[Sequence[Any]]) -> Iterator[list[dict[str, Any]]]:
        hook = None
        if self.in_lock is not None and self.in_lock[0] in [tuple(k) for k in keys]:
            (_, hook, when), self.in_lock = self.in_lock, None
            if when == "before":
                hook()
        table = self.tables[spec.name]
        rows = [dict(table[tuple(k)]) for k in keys if tuple(k) in table]
        if hook is not None and when == "after":
            hook()
        yield rows

    def wait_applied(self, lsn: int) -> bool:
        if not self.active:
            return False
        if self.stuck and lsn > self.confirmed:
            raise VerifyTimeout(f"slot has not confirmed {lsn}")
        self.apply_until(lsn)
        return True

    def slot(self) -> SlotInfo:
        return SlotInfo("unit", True, self.confirmed, self.lsn, self.active)


@pytest.fixture
def sink() -> Iterator[QdrantSink]:
    s = QdrantSink(QdrantSinkConfig(path=":memory:", collection="unit"))
    s.ensure_ready(DIM)
    yield s
    s.close()


def backfilled(sink: QdrantSink, rows: dict[str, list[dict[str, Any]]], **kw: Any) -> TableSource:
    """A source holding ``rows`` per table, all of them written by a completed backfill."""
    specs = {BOOKS: books_spec(), PAIRS: pairs_spec()}
    specs = {name: specs[name] for name in rows}
    writer = Writer(sink, "unit")
    writer.open(DIM)
    writer.begin_backfill(sorted(specs), "unit")
    source = TableSource(writer, specs, **kw)
    for table, table_rows in rows.items():
        for row in table_rows:
            source.tables[table][specs[table].key_of(row)] = row
    changes = []
    for table, table_rows in rows.items():
        for row in table_rows:
            text, payload = specs[table].render(row)
            changes.append(Change("upsert", table, specs[table].key_of(row), text, payload))
    batch = ChangeBatch(1, changes, phase="backfill", snapshot_complete=True)
    writer.apply(batch, embed(batch.texts_to_embed()))
    source.seq = 1
    return source


def verifier(source: TableSource, store: Any, **kw: Any) -> Verifier:
    return Verifier(source.specs, source, store, "unit", embed=embed, **kw)


def counts(report: Any, table: str = BOOKS) -> dict[str, int]:
    (t,) = [t for t in report.tables if t.table == table]
    return dict(t.counts)


def example_keys(report: Any, kind: str, table: str = BOOKS) -> list[list[Any]]:
    (t,) = [t for t in report.tables if t.table == table]
    return [d.key for d in t.examples[kind]]


# -- classification --------------------------------------------------------------------------------


def test_stale_reasons_compare_types_exactly() -> None:
    spec = books_spec()
    pid, want = expected_point(spec, book(1))
    assert pid == point_id(BOOKS, [1]) and want == Expected([1], "A story number 1.", text_hash("A story number 1."),
                                                           {"name": "Book 1", "year": 1901})

    def stored(**change: Any) -> StoredPoint:
        fields = {"id": pid, "table": BOOKS, "key": [1], "text": want.text, "text_hash": want.text_hash,
                  "payload": dict(want.payload), **change}
        return StoredPoint(**fields)

    assert stale_reason(BOOKS, want, stored()) == ""
    assert stale_reason(BOOKS, want, stored(text_hash="x")) == "text"
    assert stale_reason(BOOKS, want, stored(payload={"name": "Book 1", "year": 1901.0})) == "payload"  # 1901 == 1901.0
    assert stale_reason(BOOKS, want, stored(payload={"year": 1901, "name": "Book 1"})) == ""  # key order is no difference
    assert stale_reason(BOOKS, want, stored(key=["1"], text_hash="x")) == "text+key"
    flag = Expected([1], "t", text_hash("t"), {"flag": True})
    assert stale_reason(BOOKS, flag, StoredPoint(pid, BOOKS, [1], "t", text_hash("t"), {"flag": 1})) == "payload"


def test_classify_each_candidate_once() -> None:
    spec = books_spec()
    expected = dict(expected_point(spec, book(i)) for i in (1, 2, 3))
    p1, p2, p3 = (point_id(BOOKS, [i]) for i in (1, 2, 3))
    p9 = point_id(BOOKS, [9])
    stored = {
        p2: StoredPoint(p2, BOOKS, [2], "old", text_hash("old"), expected[p2].payload),
        p3: StoredPoint(p3, BOOKS, [3], expected[p3].text, expected[p3].text_hash, expected[p3].payload),
        p9: StoredPoint(p9, BOOKS, [9], "gone", text_hash("gone"), {}),
    }
    candidates = {p1: [1], p2: [2], p3: [3], p9: [9], point_id(BOOKS, [10]): [10]}
    got = [(d.kind, d.key, d.reason) for d in classify(BOOKS, candidates, expected, stored)]
    assert got == [("missing", [1], ""), ("stale", [2], "text"), ("orphans", [9], "")]


# -- the comparison -----------------------------------------------------------------------------------


def test_a_clean_store_is_read_in_bounded_chunks_and_pages(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 26)],
                               PAIRS: [{"a": a, "b": b, "body": f"{a}{b}"} for a in "xyz" for b in range(4)]})
    store = RecordingStore(sink)
    report = verifier(source, store, chunk=7).run()
    assert report.clean and report.differences == 0 and report.pipeline_running and report.notes == []
    assert [(t.table, t.rows, t.points) for t in report.tables] == [(BOOKS, 25, 25), (PAIRS, 12, 12)]
    # 25 rows: 7+7+7+4, then 12 rows: 7+5; never more than a chunk at once, on either side
    assert source.chunk_sizes == [7, 7, 7, 4, 7, 5]
    assert max(store.get_sizes) <= 7 and max(source.key_reads) <= 7
    assert set(store.page_limits) == {7} and len(store.page_limits) == 4 + 2
    assert report.rechecked == 0 and store.upserted == [] and store.deleted == []


def test_each_class_of_difference_is_counted_with_examples(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 31)]})
    # missing: 12 points deleted (examples stop at 10); stale: a payload and a text; orphans: 2 points
    sink.delete([point_id(BOOKS, [i]) for i in range(10, 22)])
    (p3,) = sink.get_points([point_id(BOOKS, [3])]).values()
    (p5,) = sink.get_points([point_id(BOOKS, [5])]).values()
    sink.upsert([
        VectorPoint(p3.id, BOOKS, p3.key, embed([p3.text])[0], p3.text, p3.text_hash, {**p3.payload, "year": 1}),
        VectorPoint(p5.id, BOOKS, p5.key, embed(["other"])[0], "other", text_hash("other"), p5.payload),
        *[VectorPoint(point_id(BOOKS, [k]), BOOKS, [k], embed(["x"])[0], "x", text_hash("x"), {}) for k in (500, 77)],
    ])
    report = verifier(source, RecordingStore(sink), chunk=8).run()
    assert counts(report) == {"missing": 12, "stale": 2, "orphans": 2} and report.differences == 16
    assert example_keys(report, "missing") == [[i] for i in range(10, 20)]  # primary-key order, 10 of 12
    (t,) = report.tables
    assert [(d.key, d.reason) for d in t.examples["stale"]] == [([3], "payload"), ([5], "text")]
    assert sorted(example_keys(report, "orphans")) == [[77], [500]]
    assert (t.rows, t.points) == (30, 30 - 12 + 2)
    doc = report.as_dict()
    assert (doc["clean"], doc["missing"], doc["stale"], doc["orphans"]) == (False, 12, 2, 2)
    assert doc["tables"][BOOKS]["examples"]["stale"][0] == {"key": [3], "id": p3.id, "reason": "payload"}


def test_changes_not_applied_yet_are_waited_for_not_reported(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 11)]})
    # committed but not written yet: an insert, an update, a delete
    source.commit(BOOKS, (11,), book(11))
    source.commit(BOOKS, (4,), book(4, description="A rewritten story."))
    source.commit(BOOKS, (7,), None)
    report = verifier(source, RecordingStore(sink), chunk=4).run()
    assert report.clean, report.as_dict()
    assert report.pipeline_running and source.pending == []
    assert sink.get_points([point_id(BOOKS, [4])])[point_id(BOOKS, [4])].text == "A rewritten story."


def test_a_store_ahead_of_the_snapshot_is_checked_again_not_reported(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 11)]})
    changes = iter([
        lambda: source.commit(BOOKS, (2,), book(2, year=2024), applied=True),  # after the first chunk was read
        lambda: source.commit(BOOKS, (30,), book(30), applied=True),  # a row past the chunk: seen by the points pass
        lambda: source.commit(BOOKS, (8,), None, applied=True),
    ])
    source.after_read = lambda: next(changes, lambda: None)()
    report = verifier(source, RecordingStore(sink), chunk=5).run()
    assert report.clean, report.as_dict()
    assert report.rechecked >= 1  # row 2 differed at first sight: the store had its newer version


def test_without_a_running_pipeline_differences_are_reported_with_the_unconfirmed_wal(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 6)]}, active=False)
    source.commit(BOOKS, (6,), book(6))  # never applied: nothing runs
    report = verifier(source, RecordingStore(sink)).run()
    assert counts(report) == {"missing": 1, "stale": 0, "orphans": 0}
    assert not report.pipeline_running and report.unconfirmed_bytes == source.lsn - source.confirmed == 10
    assert source.pending  # nobody waited for anything


def test_a_pipeline_that_confirms_nothing_times_out(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(1)]}, stuck=True)
    source.commit(BOOKS, (1,), book(1, year=3))
    with pytest.raises(VerifyTimeout):
        verifier(source, RecordingStore(sink)).run()


def test_a_store_without_a_completed_backfill_says_so(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(1)]})
    sink.set_state("slot/unit", None)
    report = verifier(source, RecordingStore(sink)).run()
    assert report.clean and len(report.notes) == 1 and "no completed backfill" in report.notes[0]


def test_composite_keys_chunk_and_classify(sink: QdrantSink) -> None:
    rows = [{"a": a, "b": b, "body": f"{a}-{b}"} for a in ("p", "q") for b in range(5)]
    source = backfilled(sink, {PAIRS: rows})
    sink.delete([point_id(PAIRS, ["q", 3])])
    sink.upsert([VectorPoint(point_id(PAIRS, ["r", 1]), PAIRS, ["r", 1], embed(["r"])[0], "r", text_hash("r"), {})])
    report = verifier(source, RecordingStore(sink), chunk=3).run()
    assert counts(report, PAIRS) == {"missing": 1, "stale": 0, "orphans": 1}
    assert example_keys(report, "missing", PAIRS) == [["q", 3]] and example_keys(report, "orphans", PAIRS) == [["r", 1]]
    assert source.chunk_sizes == [3, 3, 3, 1]


# -- repair -----------------------------------------------------------------------------------------------


def test_repair_writes_what_the_writer_writes_and_touches_nothing_else(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 21)]})
    before = {p.id: p for p in sink.iter_points(with_vectors=True)}
    sink.delete([point_id(BOOKS, [4])])
    (p6,) = sink.get_points([point_id(BOOKS, [6])]).values()
    sink.upsert([
        VectorPoint(p6.id, BOOKS, p6.key, embed(["wrong"])[0], "wrong", text_hash("wrong"), {"name": "?", "year": 0}),
        VectorPoint(point_id(BOOKS, [99]), BOOKS, [99], embed(["x"])[0], "x", text_hash("x"), {}),
    ])
    store = RecordingStore(sink)
    report = verifier(source, store, chunk=6).run(repair=True)
    assert counts(report) == {"missing": 1, "stale": 1, "orphans": 1}
    assert report.as_dict()["repaired"] == {"missing": 1, "stale": 1, "orphans": 1}
    assert sorted(store.upserted) == sorted([point_id(BOOKS, [4]), p6.id]) and store.deleted == [point_id(BOOKS, [99])]
    after = {p.id: p for p in sink.iter_points(with_vectors=True)}
    assert sorted(after) == sorted(before)
    for pid, want in before.items():  # field for field what the writer had written, the vector of the same text
        got = after[pid]
        assert (got.table, got.key, got.text, got.text_hash, got.payload) == (want.table, want.key, want.text,
                                                                               want.text_hash, want.payload)
        np.testing.assert_allclose(got.vector, want.vector, atol=1e-6)
    assert verifier(source, RecordingStore(sink)).run().clean


def test_repair_rereads_each_row_and_rewrites_one_inserted_while_its_orphan_was_deleted(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 6)]})
    sink.upsert([VectorPoint(point_id(BOOKS, [9]), BOOKS, [9], embed(["x"])[0], "x", text_hash("x"), {})])
    sink.delete([point_id(BOOKS, [2])])
    # the row of the orphan is inserted (and written by the pipeline) between the repair's read and its delete
    source.in_lock = ((9,), lambda: source.commit(BOOKS, (9,), book(9), applied=True), "after")
    store = RecordingStore(sink)
    report = verifier(source, store, chunk=50, repair_batch=50).run(repair=True)
    assert counts(report) == {"missing": 1, "stale": 0, "orphans": 1}
    assert store.deleted == [point_id(BOOKS, [9])] and point_id(BOOKS, [9]) in store.upserted
    assert sink.get_points([point_id(BOOKS, [9])])[point_id(BOOKS, [9])].text == "A story number 9."
    assert verifier(source, RecordingStore(sink)).run().clean


def test_repair_writes_the_row_as_it_is_when_written_not_as_it_was_compared(sink: QdrantSink) -> None:
    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 5)]}, active=False)
    (p2,) = sink.get_points([point_id(BOOKS, [2])]).values()
    (p3,) = sink.get_points([point_id(BOOKS, [3])]).values()
    for p in (p2, p3):
        sink.upsert([VectorPoint(p.id, BOOKS, p.key, embed(["y"])[0], "y", text_hash("y"), p.payload)])
    # changed (2) and deleted (3) after verify compared them, before the repair read them
    source.in_lock = ((2,), lambda: (source.commit(BOOKS, (2,), book(2, description="Newer.")),
                                     source.commit(BOOKS, (3,), None)), "before")
    report = verifier(source, RecordingStore(sink)).run(repair=True)
    assert counts(report)["stale"] == 2
    assert sink.get_points([p2.id])[p2.id].text == "Newer." and sink.get_points([p3.id]) == {}
    assert [c for c in CLASSES if counts(verifier(source, RecordingStore(sink)).run())[c]] == []


def test_the_printed_report_aligns_counts_and_lists_examples(sink: QdrantSink) -> None:
    from cluster.verify import format_report

    source = backfilled(sink, {BOOKS: [book(i) for i in range(1, 16)]}, active=False)
    sink.delete([point_id(BOOKS, [i]) for i in range(2, 14)])
    report = verifier(source, RecordingStore(sink)).run()
    report.store = "direct"
    lines = format_report(report)
    assert lines[:2] == ["table         rows  points  missing  stale  orphans",
                         "public.books    15       3       12      0        0"]
    assert lines[3] == "missing  public.books: " + ", ".join(f"[{i}]" for i in range(2, 12)) + ", ... (2 more)"
    assert lines[5] == "12 differences (12 missing, 0 stale, 0 orphans); `embedcluster verify --repair` fixes them"
    assert lines[6] == ("slot unit is not active (no pipeline running): 0 bytes of WAL not confirmed yet; "
                        "differences may be changes not applied yet; store read direct")
