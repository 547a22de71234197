"""actors/writer.py Writer against a real embedded (local-mode) Qdrant sink."""

from __future__ import annotations

import numpy as np
import pytest

from actors.changes import Change, ChangeBatch, point_id, text_hash
from actors.sinks.base import SinkError
from actors.sinks.qdrant import QdrantSink
from actors.writer import OrderingError, Writer, state_name
from actors.sinks.qdrant import QdrantSinkConfig

DIM = 8
A = "public.books"
B = "public.authors"
C = "public.other"


@pytest.fixture
def sink(tmp_path):
    s = QdrantSink(QdrantSinkConfig(path=str(tmp_path / "q"), collection="unit"))
    s.ensure_ready(DIM)
    yield s
    s.close()


@pytest.fixture
def writer(sink):
    w = Writer(sink, slot="unit_slot")
    w.open(DIM)
    return w


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def up(table: str, key, text: str = "", lsn: int = 0, **payload) -> Change:
    key = key if isinstance(key, tuple) else (key,)
    return Change("upsert", table, key, text=text or f"text {table} {key}", payload=payload or {"k": list(key)}, lsn=lsn)


def dele(table: str, key, lsn: int = 0) -> Change:
    key = key if isinstance(key, tuple) else (key,)
    return Change("delete", table, key, lsn=lsn)


def trunc(table: str) -> Change:
    return Change("truncate", table, ())


def apply(writer: Writer, seq: int, changes: list[Change], seeds: list[int] | None = None, **kw):
    n = sum(1 for c in changes if c.op == "upsert")
    seeds = seeds if seeds is not None else list(range(seq * 1000, seq * 1000 + n))
    vectors = np.stack([vec(s) for s in seeds]) if n else None
    return writer.apply(ChangeBatch(seq=seq, changes=changes, **kw), vectors)


def stored(sink: QdrantSink, table: str | None = None, with_vectors: bool = False) -> dict[str, object]:
    return {p.id: p for p in sink.iter_points(table, with_vectors=with_vectors)}


def stored_keys(sink: QdrantSink, table: str) -> set:
    return {tuple(p.key) for p in sink.iter_points(table)}


# -- basic writes ---------------------------------------------------------------------


def test_upserts_are_stored_with_text_payload_and_vector(writer, sink):
    result = apply(writer, 1, [up(A, 1, "Dune", name="Dune", year=1965), up(A, 2, "Emma", name="Emma")], seeds=[1, 2], ack_lsn=77)
    assert (result.seq, result.ack_lsn, result.upserts, result.deletes) == (1, 77, 2, 0)
    assert result.snapshot_complete is False and result.seconds >= 0
    assert sink.count() == 2
    points = stored(sink, A, with_vectors=True)
    p1 = points[point_id(A, (1,))]
    assert p1.table == A and p1.key == [1]
    assert p1.text == "Dune" and p1.text_hash == text_hash("Dune")
    assert p1.payload == {"name": "Dune", "year": 1965}
    np.testing.assert_allclose(p1.vector, vec(1), atol=1e-6)
    np.testing.assert_allclose(points[point_id(A, (2,))].vector, vec(2), atol=1e-6)
    assert sink.text_hashes([point_id(A, (1,)), point_id(A, (99,))]) == {point_id(A, (1,)): text_hash("Dune")}


def test_upserts_then_deletes_in_one_batch_last_change_wins(writer, sink):
    changes = [up(A, 1), up(A, 2), up(A, 3), dele(A, 1), dele(A, 3), dele(A, 404)]
    result = apply(writer, 1, changes)
    assert result.upserts == 3 and result.deletes == 3
    assert stored_keys(sink, A) == {(2,)}
    assert sink.count() == 1


def test_delete_existing_point(writer, sink):
    apply(writer, 1, [up(A, 1), up(A, 2)])
    apply(writer, 2, [dele(A, 1)])
    assert stored_keys(sink, A) == {(2,)}


def test_delete_then_reinsert_same_key_in_one_batch(writer, sink):
    apply(writer, 1, [up(A, 1, "old", v="old")], seeds=[10])
    apply(writer, 2, [dele(A, 1), up(A, 1, "new", v="new")], seeds=[20])
    points = stored(sink, A, with_vectors=True)
    assert len(points) == 1
    p = points[point_id(A, (1,))]
    assert p.text == "new" and p.payload == {"v": "new"}
    np.testing.assert_allclose(p.vector, vec(20), atol=1e-6)


def test_two_upserts_of_same_key_in_batch_keep_the_last_vector(writer, sink):
    apply(writer, 1, [up(A, 1, "first", v=1), up(A, 2, "other"), up(A, 1, "second", v=2)], seeds=[1, 2, 3])
    points = stored(sink, A, with_vectors=True)
    assert len(points) == 2
    p = points[point_id(A, (1,))]
    assert p.text == "second" and p.payload == {"v": 2}
    np.testing.assert_allclose(p.vector, vec(3), atol=1e-6)
    np.testing.assert_allclose(points[point_id(A, (2,))].vector, vec(2), atol=1e-6)


def test_vectors_follow_upserts_across_deletes(writer, sink):
    # deletes in between do not consume vector rows
    apply(writer, 1, [dele(A, 9), up(A, 1), dele(A, 8), up(A, 2)], seeds=[11, 12])
    points = stored(sink, A, with_vectors=True)
    np.testing.assert_allclose(points[point_id(A, (1,))].vector, vec(11), atol=1e-6)
    np.testing.assert_allclose(points[point_id(A, (2,))].vector, vec(12), atol=1e-6)


def test_same_key_in_two_tables_are_two_points(writer, sink):
    apply(writer, 1, [up(A, 1), up(B, 1), up(A, "1")])
    assert sink.count() == 3
    assert stored_keys(sink, A) == {(1,), ("1",)}
    assert stored_keys(sink, B) == {(1,)}


def test_composite_keys(writer, sink):
    apply(writer, 1, [up(A, ("acme", 1)), up(A, ("acme", 2))])
    apply(writer, 2, [dele(A, ("acme", 1))])
    assert stored_keys(sink, A) == {("acme", 2)}


def test_replaying_a_batch_is_idempotent(writer, sink):
    changes = [up(A, 1, "one", n=1), up(A, 2, "two", n=2), up(B, 1, "b", n=3), dele(A, 3)]
    apply(writer, 1, changes, seeds=[1, 2, 3])
    before = stored(sink, with_vectors=True)
    apply(writer, 2, changes, seeds=[1, 2, 3])
    after = stored(sink, with_vectors=True)
    assert sink.count() == 3
    assert set(before) == set(after)
    for pid, p in before.items():
        q = after[pid]
        assert (q.table, q.key, q.text, q.text_hash, q.payload) == (p.table, p.key, p.text, p.text_hash, p.payload)
        np.testing.assert_allclose(q.vector, p.vector, atol=1e-6)


def test_apply_counters_and_lsn(writer):
    apply(writer, 1, [up(A, 1, lsn=0x100), dele(A, 2, lsn=0x180)])
    apply(writer, 2, [up(A, 3, lsn=0x150)])
    stats = writer.stats()
    assert stats == {
        "rows_applied": 3,
        "upserts": 2,
        "deletes": 1,
        "payload_only_updates": 0,
        "last_batch": 2,
        "last_commit_lsn": "0/180",
        "dead_letters": 0,
        "dead_lettered": 0,
        "sink_unavailable_s": None,
    }


def test_empty_batch_advances_sequence(writer, sink):
    result = writer.apply(ChangeBatch(seq=1, ack_lsn=5), None)
    assert result.upserts == 0 and result.deletes == 0 and result.ack_lsn == 5
    assert writer.last_seq == 1
    assert sink.count() == 0


# -- ordering and validation ---------------------------------------------------------


@pytest.mark.parametrize("second", [1, 2])
def test_out_of_order_seq_raises(writer, sink, second):
    apply(writer, 2, [up(A, 1)])
    with pytest.raises(OrderingError, match="batch"):
        apply(writer, second, [up(A, 2)])
    assert writer.last_seq == 2
    assert stored_keys(sink, A) == {(1,)}  # nothing from the rejected batch
    apply(writer, 3, [up(A, 3)])
    assert stored_keys(sink, A) == {(1,), (3,)}


def test_seq_zero_is_rejected_on_fresh_writer(writer):
    with pytest.raises(OrderingError):
        apply(writer, 0, [up(A, 1)])


@pytest.mark.parametrize("n_vectors", [None, 0, 1, 3])
def test_vector_count_mismatch_raises(writer, sink, n_vectors):
    changes = [up(A, 1), dele(A, 5), up(A, 2)]
    vectors = None if n_vectors is None else np.zeros((n_vectors, DIM), dtype=np.float32)
    with pytest.raises(ValueError, match="2 texts to embed"):
        writer.apply(ChangeBatch(seq=1, changes=changes), vectors)
    assert sink.count() == 0
    assert writer.last_seq == 0  # the same batch can be retried
    apply(writer, 1, changes)
    assert stored_keys(sink, A) == {(1,), (2,)}


# -- truncate ------------------------------------------------------------------------


def test_truncate_removes_only_that_table(writer, sink):
    apply(writer, 1, [up(A, k) for k in range(5)] + [up(B, k) for k in range(3)])
    result = apply(writer, 2, [trunc(A)])
    assert result.deletes == 5
    assert stored_keys(sink, A) == set()
    assert stored_keys(sink, B) == {(0,), (1,), (2,)}
    assert sink.count() == 3


def test_truncate_in_the_middle_of_a_batch(writer, sink):
    apply(writer, 1, [up(A, 1), up(A, 2), up(B, 1)])
    # before the truncate: written then removed; after it: kept
    apply(writer, 2, [up(A, 3), dele(B, 1), trunc(A), up(A, 4, "four"), up(B, 2)], seeds=[30, 40, 50])
    assert stored_keys(sink, A) == {(4,)}
    assert stored_keys(sink, B) == {(2,)}
    points = stored(sink, with_vectors=True)
    np.testing.assert_allclose(points[point_id(A, (4,))].vector, vec(40), atol=1e-6)
    np.testing.assert_allclose(points[point_id(B, (2,))].vector, vec(50), atol=1e-6)


def test_truncate_many_points_pages_through_scroll(writer, sink, monkeypatch):
    monkeypatch.setattr("actors.sinks.qdrant.sink._SCROLL_PAGE", 4)
    n = 11  # several scroll pages
    changes = [up(A, k) for k in range(n)] + [up(B, 0)]
    writer.apply(ChangeBatch(seq=1, changes=changes), np.tile(vec(1), (n + 1, 1)))
    assert sink.count() == n + 1
    apply(writer, 2, [trunc(A)])
    assert sink.count() == 1 and stored_keys(sink, B) == {(0,)}


# -- backfill ------------------------------------------------------------------------


def test_backfill_removes_stale_points_and_records_state(writer, sink):
    # an earlier, interrupted run left these behind
    apply(writer, 1, [up(A, 1), up(A, 2), up(A, 3), up(B, 1), up(B, 2), up(C, 1)])
    sink.set_state(state_name("unit_slot"), {"backfill_complete": True, "tables": ["old"]})
    writer.begin_backfill([B, A], "pub")
    assert writer.backfill_state() is None
    assert writer.last_seq == 0
    # snapshot sees A1, A3 (A2 was deleted at the source meanwhile) and B2, plus a new A4
    r1 = apply(writer, 1, [up(A, 1), up(A, 3)], phase="backfill")
    assert r1.snapshot_complete is False
    assert stored_keys(sink, A) == {(1,), (2,), (3,)}  # nothing removed before the snapshot completes
    assert writer.backfill_state() is None
    r2 = apply(writer, 2, [up(B, 2), up(A, 4)], phase="backfill", snapshot_complete=True)
    assert r2.snapshot_complete is True
    assert stored_keys(sink, A) == {(1,), (3,), (4,)}
    assert stored_keys(sink, B) == {(2,)}
    assert stored_keys(sink, C) == {(1,)}  # not part of the backfill: untouched
    state = writer.backfill_state()
    assert state is not None
    assert state["backfill_complete"] is True
    assert state["tables"] == sorted([A, B])
    assert state["stale_removed"] == 2
    assert isinstance(state["completed_at"], float)


def test_backfill_on_empty_sink(writer, sink):
    writer.begin_backfill([A], "pub")
    apply(writer, 1, [up(A, 1)], phase="backfill", snapshot_complete=True)
    assert stored_keys(sink, A) == {(1,)}
    assert writer.backfill_state()["backfill_complete"] is True
    assert writer.backfill_state()["stale_removed"] == 0


def test_backfill_deleted_row_is_not_resurrected(writer, sink):
    apply(writer, 1, [up(A, 1), up(A, 2)])
    writer.begin_backfill([A], "pub")
    apply(writer, 1, [up(A, 1), dele(A, 2)], phase="backfill")
    apply(writer, 2, [], phase="backfill", snapshot_complete=True)
    assert stored_keys(sink, A) == {(1,)}
    assert writer.backfill_state()["tables"] == [A]


def test_second_snapshot_complete_does_not_delete_again(writer, sink):
    apply(writer, 1, [up(A, 1), up(A, 2)])
    writer.begin_backfill([A], "pub")
    apply(writer, 1, [up(A, 1)], snapshot_complete=True)
    assert stored_keys(sink, A) == {(1,)}
    apply(writer, 2, [up(A, 2)])  # re-inserted by the stream afterwards
    apply(writer, 3, [], snapshot_complete=True)
    assert stored_keys(sink, A) == {(1,), (2,)}


def test_state_survives_reopen(tmp_path):
    config = QdrantSinkConfig(path=str(tmp_path / "persist"), collection="unit")
    sink = QdrantSink(config)
    w = Writer(sink, "s1")
    w.open(DIM)
    w.begin_backfill([A], "pub")
    apply(w, 1, [up(A, 1)], snapshot_complete=True)
    sink.close()
    sink = QdrantSink(config)
    try:
        w2 = Writer(sink, "s1")
        w2.open(DIM)
        assert w2.backfill_state()["backfill_complete"] is True
        assert Writer(sink, "other").backfill_state() is None
        assert stored_keys(sink, A) == {(1,)}
    finally:
        sink.close()


# -- search and set-up ----------------------------------------------------------------


def test_ensure_ready_same_dimension_is_idempotent(writer, sink):
    apply(writer, 1, [up(A, 1)])
    sink.ensure_ready(DIM)
    assert sink.count() == 1 and sink.dimension == DIM


def test_ensure_ready_with_other_dimension_raises(sink):
    with pytest.raises(SinkError) as info:
        sink.ensure_ready(DIM * 2)
    message = str(info.value)
    assert "\n" not in message
    assert "unit" in message  # the collection name
    assert str(DIM) in message and str(DIM * 2) in message


# -- payload-only updates (text unchanged: no embedding) ------------------------------------


def same_text(table: str, key, text: str, **payload) -> Change:
    change = up(table, key, text, **payload)
    change.text_unchanged = True
    return change


def test_unchanged_text_updates_payload_and_keeps_vector(writer, sink):
    apply(writer, 1, [up(A, 1, "Dune", year=1965)], seeds=[5])
    # no vectors at all: the model did not run for this batch
    result = writer.apply(ChangeBatch(seq=2, changes=[same_text(A, 1, "Dune", year=1966)]), None)
    assert result.upserts == 1 and writer.payload_only_updates == 1
    point = stored(sink, A, with_vectors=True)[point_id(A, (1,))]
    assert point.payload == {"year": 1966} and point.text == "Dune"
    np.testing.assert_allclose(point.vector, vec(5), atol=1e-6)


def test_unchanged_text_after_upsert_in_same_batch_keeps_that_vector(writer, sink):
    changes = [up(A, 1, "Dune", year=1965), same_text(A, 1, "Dune", year=1966)]
    writer.apply(ChangeBatch(seq=1, changes=changes), np.stack([vec(9)]))
    point = stored(sink, A, with_vectors=True)[point_id(A, (1,))]
    assert point.payload == {"year": 1966}
    np.testing.assert_allclose(point.vector, vec(9), atol=1e-6)
    assert writer.payload_only_updates == 0  # written as one full upsert


def test_vectors_count_only_texts_that_need_embedding(writer):
    apply(writer, 1, [up(A, 1, "Dune")])
    changes = [same_text(A, 1, "Dune", year=1), up(A, 2, "Emma")]
    with pytest.raises(ValueError, match="1 texts to embed but 2 vectors"):
        writer.apply(ChangeBatch(seq=2, changes=changes), np.stack([vec(1), vec(2)]))
    writer.apply(ChangeBatch(seq=2, changes=changes), np.stack([vec(2)]))
    assert ChangeBatch(seq=3, changes=changes).texts_to_embed() == ["Emma"]


# -- the position the store reflects (resume check) ---------------------------------------------


def test_the_store_records_the_position_it_reflects_before_it_is_acknowledged(writer, sink):
    identity = {"system_id": "7", "database": "app", "slot": "unit_slot"}
    writer.begin_backfill([A], "pub", identity)
    apply(writer, 1, [up(A, 1)], phase="backfill")
    assert writer.backfill_state() is None  # no position before the backfill is complete
    apply(writer, 2, [], phase="backfill", snapshot_complete=True, ack_lsn=100)  # the snapshot's position
    state = sink.get_state(state_name("unit_slot"))
    assert state["backfill_complete"] and state["position"] == 100 and state["identity"] == identity
    apply(writer, 3, [up(A, 2, lsn=150)], ack_lsn=160)
    assert sink.get_state(state_name("unit_slot"))["position"] == 160
    apply(writer, 4, [], ack_lsn=170)  # an idle position is recorded the same way
    assert sink.get_state(state_name("unit_slot"))["position"] == 170
    apply(writer, 5, [up(A, 3, lsn=175)], ack_lsn=None)  # inside a transaction: nothing to record
    apply(writer, 6, [], ack_lsn=120)  # never backwards
    assert sink.get_state(state_name("unit_slot"))["position"] == 170
    assert sink.get_state(state_name("unit_slot"))["identity"] == identity


def test_a_restarted_writer_keeps_recording_on_top_of_the_stored_state(writer, sink):
    writer.begin_backfill([A], "pub", {"system_id": "7"})
    apply(writer, 1, [], phase="backfill", snapshot_complete=True, ack_lsn=100)
    again = Writer(sink, slot="unit_slot")  # what a restarted actor is
    again.open(DIM)
    assert again.backfill_state()["position"] == 100  # the coordinator reads it on every (re)start
    apply(again, 1, [up(A, 1, lsn=200)], ack_lsn=210)
    state = sink.get_state(state_name("unit_slot"))
    assert state["position"] == 210 and state["tables"] == [A] and state["identity"] == {"system_id": "7"}


# -- the chunked backfill (actors/backfill.py) ---------------------------------------------------


def _plan(cursor: str | None, done: bool, rows: int) -> dict:
    return {"tables": {A: [{"after": None, "up_to": None, "cursor": [cursor] if cursor else None, "done": done}]},
            "rows": rows}


def test_a_chunked_backfill_stores_its_plan_after_each_batch_and_resumes_with_its_generation(writer, sink):
    apply(writer, 1, [up(A, 1), up(A, 9)])  # an earlier run's points; 9 is gone from the source
    identity = {"system_id": "7", "database": "app", "slot": "unit_slot"}
    writer.begin_backfill([A], "pub", identity, chunked=True)
    state = writer.backfill_state()  # under way: what a restart resumes from
    assert state["chunked"] and not state["backfill_complete"] and state["plan"] is None
    assert state["position"] is None  # nothing recorded yet: the new slot's position is not checked
    generation = state["generation"]
    apply(writer, 1, [up(A, 1)], ack_lsn=100, backfill=_plan("1", False, 1), backfill_rows=1)
    state = sink.get_state(state_name("unit_slot"))
    assert state["plan"] == _plan("1", False, 1) and state["position"] == 100
    apply(writer, 2, [up(A, 5, lsn=120)], ack_lsn=130)  # a streamed change between chunks
    assert sink.get_state(state_name("unit_slot"))["plan"] == _plan("1", False, 1)  # unchanged

    again = Writer(sink, slot="unit_slot")  # the run was killed: a new writer resumes
    again.open(DIM)
    assert again.backfill_state()["plan"] == _plan("1", False, 1)
    again.resume_backfill()
    apply(again, 1, [up(A, 2)], ack_lsn=140, backfill=_plan("2", True, 2), backfill_rows=1)
    apply(again, 2, [], ack_lsn=None, snapshot_complete=True)  # the last batch ends inside a transaction
    assert stored_keys(sink, A) == {(1,), (2,), (5,)}  # 9 had the old generation: removed
    state = again.backfill_state()
    assert state["backfill_complete"] and state["generation"] == generation
    assert state["position"] == 140 and state["identity"] == identity  # kept, not reset to 0


def test_resume_backfill_refuses_without_a_chunked_backfill_under_way(writer):
    writer.begin_backfill([A], "pub")  # a snapshot backfill keeps no state to resume from
    assert writer.backfill_state() is None
    with pytest.raises(RuntimeError, match="no chunked backfill"):
        writer.resume_backfill()


# -- partitioned writers ([sink] writers = W) ---------------------------------------------------


def test_partition_of_is_stable_spreads_keys_and_keeps_one_writer_per_key():
    from actors.writer import partition_of

    ids = [point_id(A, (i,)) for i in range(4000)]
    for count in (2, 3, 4):
        parts = [partition_of(pid, count) for pid in ids]
        assert parts == [partition_of(pid, count) for pid in ids]  # no per-process salt (unlike hash())
        shares = [parts.count(i) / len(ids) for i in range(count)]
        assert all(abs(share - 1 / count) < 0.05 for share in shares), shares
    assert {partition_of(pid, 1) for pid in ids} == {0}
    # the id's own first 32 bits: the same in every process and every release
    assert partition_of("0000000a-0000-5000-8000-000000000000", 4) == 10 % 4


def _partitioned(writers: list[Writer], seq: int, changes: list[Change], calls: list[str] | None = None, **kw):
    """What the coordinator does with W writers: each writes its share of the same batch, the primary last
    records the position once the others' results are in (here: in turn, in one process)."""
    n = sum(1 for c in changes if c.op == "upsert" and not c.text_unchanged)
    vectors = np.stack([vec(seq * 1000 + i) for i in range(n)]) if n else None
    batch = ChangeBatch(seq=seq, changes=changes, **kw)
    count = len(writers)

    def others():
        if calls is not None:
            calls.append("others")
        return [w.apply(batch, vectors, (i, count), writers[0]._generation) for i, w in enumerate(writers[1:], 1)]

    return writers[0].apply(batch, vectors, (0, count), None, others), vectors


def test_partitioned_writers_store_exactly_what_one_writer_stores(tmp_path, sink):
    single = QdrantSink(QdrantSinkConfig(path=str(tmp_path / "single"), collection="unit"))
    single.ensure_ready(DIM)
    one = Writer(single, slot="unit_slot")
    one.open(DIM)
    writers = [Writer(sink, slot="unit_slot") for _ in range(3)]
    for w in writers:
        w.open(DIM)
    batches = [
        [up(A, i, lsn=10) for i in range(40)] + [dele(A, 3, lsn=10), up(B, 1, lsn=10)],
        [up(A, 5, text="new five", lsn=20), dele(A, 7, lsn=20), up(A, 7, text="back", lsn=20),
         same_text(A, 9, f"text {A} (9,)", k=[99])],
    ]
    total = 0
    for seq, changes in enumerate(batches, start=1):
        result, vectors = _partitioned(writers, seq, changes, ack_lsn=seq * 100)
        one.apply(ChangeBatch(seq=seq, changes=changes, ack_lsn=seq * 100), vectors)
        total += result.upserts + result.deletes
    assert total == sum(len(b) for b in batches)  # the primary reports every partition's rows
    got, want = stored(sink, with_vectors=True), stored(single, with_vectors=True)
    assert got.keys() == want.keys()
    for pid, point in want.items():
        assert got[pid].text == point.text and got[pid].payload == point.payload
        assert np.allclose(got[pid].vector, point.vector)  # each point got its own change's vector
    assert writers[0].upserts + writers[1].upserts + writers[2].upserts == one.upserts
    assert all(w.upserts for w in writers)  # every writer had a share
    single.close()


def test_the_primary_records_the_position_only_after_every_partition_is_written(sink):
    writers = [Writer(sink, slot="unit_slot") for _ in range(2)]
    for w in writers:
        w.open(DIM)
    writers[0].begin_backfill([A], "pub", {"system_id": "7"})
    writers[0].apply(ChangeBatch(seq=1, changes=[], snapshot_complete=True, ack_lsn=100), None)
    calls: list[str] = []
    original = writers[0]._record_position

    def record(lsn, plan=None):
        calls.append("position")
        original(lsn, plan)

    writers[0]._record_position = record
    _partitioned(writers, 2, [up(A, i, lsn=150) for i in range(10)], calls, ack_lsn=160)
    assert calls == ["others", "position"]
    assert sink.get_state(state_name("unit_slot"))["position"] == 160

    def failing():
        raise RuntimeError("writer 1 died")

    batch = ChangeBatch(seq=3, changes=[up(A, i, lsn=170) for i in range(10)], ack_lsn=180)
    with pytest.raises(RuntimeError, match="writer 1 died"):
        writers[0].apply(batch, np.stack([vec(i) for i in range(10)]), (0, 2), None, failing)
    assert sink.get_state(state_name("unit_slot"))["position"] == 160  # not moved past an unwritten partition


def test_batches_on_whole_tables_are_never_partitioned(writer):
    vectors = np.stack([vec(1)])
    for kw in ({"snapshot_complete": True}, {"backfill_begin": {"tables": [A], "total": {"rows": 1}}}):
        with pytest.raises(ValueError, match="whole"):
            writer.apply(ChangeBatch(seq=1, changes=[up(A, 1)], **kw), vectors, (0, 2))
    with pytest.raises(ValueError, match="whole"):
        writer.apply(ChangeBatch(seq=1, changes=[up(A, 1), trunc(B)]), vectors, (1, 2), 5)


def test_partition_writers_stamp_the_primarys_generation_so_its_sweep_keeps_their_points(sink):
    writers = [Writer(sink, slot="unit_slot") for _ in range(2)]
    for w in writers:
        w.open(DIM)
    _partitioned(writers, 1, [up(A, i) for i in range(20)])  # an earlier run's points
    generation = writers[0].begin_backfill([A], "pub", chunked=True)
    writers[1].open(DIM)  # the coordinator opens every writer at each (re)start: sequences start over
    assert generation == writers[0]._generation
    keep = [up(A, i) for i in range(0, 20, 2)]  # the odd keys are gone from the source
    result, _ = _partitioned(writers, 1, keep, ack_lsn=100)
    assert result.generation == generation
    writers[0].apply(ChangeBatch(seq=2, changes=[], snapshot_complete=True, ack_lsn=110), None)
    assert stored_keys(sink, A) == {(i,) for i in range(0, 20, 2)}
