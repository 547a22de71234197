"""The VectorSink contract (``actors/sinks/base.py``), one set of cases run on every sink of ``conftest.SINK_KINDS``.

Sink-specific behaviour (durability settings, dialect SQL, retries, locks,
index lifecycle, paging) stays in the sinks' own tests.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

import numpy as np
import pytest

from actors.changes import point_id, text_hash
from actors.sinks.base import (
    FieldFilter,
    MissingPointError,
    PointError,
    PointTooLarge,
    SearchHit,
    SinkError,
    UnsupportedSearch,
    VectorPoint,
    VectorSink,
)
from tests.contract.conftest import Store
from tests.contract.points import DIM, DOCS, LIMIT, NOTES, assert_same, point, points, snapshot, unit, written


def _absent_id() -> str:
    return str(uuid.uuid4())


# -- idempotent writes ----------------------------------------------------------------------


def test_replaying_an_upsert_is_idempotent(sink: VectorSink) -> None:
    batch = points(DOCS, range(6)) + points(NOTES, range(3))
    sink.upsert(batch)
    first = snapshot(sink)
    sink.upsert(batch)
    assert sink.count() == 9
    assert_same(snapshot(sink), first)
    assert_same(first, written(batch))


def test_replaying_upsert_then_delete_is_idempotent(sink: VectorSink) -> None:
    batch = points(DOCS, range(8))
    gone = [p.id for p in batch[:3]]
    for _ in range(2):  # the pipeline replays a batch it could not acknowledge
        sink.upsert(batch)
        sink.delete(gone)
        assert sink.count() == 5
        assert_same(snapshot(sink), written(batch[3:]))


def test_deleting_ids_that_do_not_exist_is_harmless(sink: VectorSink) -> None:
    sink.delete([_absent_id()])  # on an empty store
    sink.delete([])
    batch = points(DOCS, range(4))
    sink.upsert(batch)
    sink.delete([_absent_id(), _absent_id()])
    sink.delete([])
    assert sink.count() == 4
    assert_same(snapshot(sink), written(batch))


# -- what is stored ---------------------------------------------------------------------------


def test_upsert_then_read_back_every_field(sink: VectorSink) -> None:
    payload = {
        "title": "Dünë — 東京 🚀",
        "nested": {"list": [1, "two", None, {"deep": True}], "empty": {}, "none": None},
        "none": None,
        "yes": True,
        "no": False,
        "int": -42,
        "big": 2**40,
        "float": 0.1,
    }
    p = point(DOCS, ["acme", 7], text="première ligne\nzweite Zeile ✓", payload=payload)
    long_way = point(NOTES, 1, vector=unit(3) * 7.5)  # not unit length: only the direction is kept
    sink.upsert([p, long_way])

    stored = {s.id: s for s in sink.iter_points(with_vectors=True)}
    assert sorted(stored) == sorted([p.id, long_way.id])
    got = stored[p.id]
    assert (got.id, got.table, got.key, got.text, got.text_hash) == (p.id, DOCS, ["acme", 7], p.text, text_hash(p.text))
    assert got.payload == payload
    # True == 1 and 1 == 1.0 in Python: the types must survive too
    assert [type(got.payload[k]) for k in ("yes", "no", "int", "big", "float")] == [bool, bool, int, int, float]
    assert type(got.payload["nested"]["list"][3]["deep"]) is bool
    assert got.vector is not None and got.vector.dtype == np.float32
    np.testing.assert_allclose(got.vector, p.vector, rtol=0, atol=1e-6)
    direction = stored[long_way.id].vector
    assert float(direction @ unit(3) / np.linalg.norm(direction)) == pytest.approx(1.0, abs=1e-6)
    assert all(s.vector is None for s in sink.iter_points())  # vectors only when asked for


def test_postgres_values_come_back_exactly(sink: VectorSink) -> None:
    """What the reader makes of PostgreSQL values (actors.pgvalues): exact numerics as text, integral
    numerics as ints beyond 64 bits, arrays as (nested) lists with NULLs, ISO timestamps, base64."""
    payload = {
        "amount": "12345678901234567890.1234567891",  # numeric: exact text, never a float
        "scaled": "7.00",
        "nan": "NaN",
        "big": 12345678901234567890123,  # an integral numeric past int64
        "int8": -9223372036854775808,
        "tags": ["a,b", 'c "d"', "", "NULL", None],
        "matrix": [[1, 2], [3, None]],
        "flags": [True, False, None],
        "numerics": [1, "2.50"],
        "empty": [],
        "docs": [{"k": [1, {"z": None}]}, None, "s"],
        "at": "2024-01-01T21:34:05.123456+00:00",
        "day": "2024-01-31",
        "never": "infinity",
        "raw": "AP8Q",
        "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "f": 1e15,
        "none": None,
    }
    key = ["12345678901234567890.1234567891", 12345678901234567890123]
    p = point(DOCS, key, payload=payload)
    sink.upsert([p])
    (got,) = list(sink.iter_points())
    assert got.key == key and got.payload == payload
    # types too, all the way down (True == 1 == 1.0 in Python; JSON text tells them apart)
    assert exact(got.payload) == exact(payload) and exact(got.key) == exact(key)
    updated = VectorPoint(p.id, DOCS, key, None, p.text, p.text_hash, {**payload, "tags": [None, "x"]})
    sink.update_payloads([updated])
    (got,) = list(sink.iter_points())
    assert exact(got.payload) == exact(updated.payload)


def exact(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def test_payload_update_changes_text_and_payload_and_keeps_the_vector(sink: VectorSink) -> None:
    batch = points(DOCS, range(3))
    sink.upsert(batch)
    old = batch[1]
    new = VectorPoint(old.id, old.table, old.key, None, "new text", text_hash("new text"), {"v": 2, "tags": ["x"]})
    sink.update_payloads([new])  # vector=None: what the writer sends for unchanged text

    assert sink.count() == 3
    kept_vector = VectorPoint(new.id, new.table, new.key, old.vector, new.text, new.text_hash, new.payload)
    assert_same(snapshot(sink), written([batch[0], kept_vector, batch[2]]))
    assert sink.text_hashes([old.id]) == {old.id: text_hash("new text")}


def test_payload_update_of_a_missing_point_raises_and_applies_nothing(sink: VectorSink) -> None:
    batch = points(DOCS, range(3))
    sink.upsert(batch)
    before = snapshot(sink)
    missing = point(DOCS, 99)
    call = [
        VectorPoint(batch[0].id, DOCS, batch[0].key, None, "changed", text_hash("changed"), {"v": "changed"}),
        VectorPoint(missing.id, DOCS, missing.key, None, missing.text, missing.text_hash, missing.payload),
        VectorPoint(batch[2].id, DOCS, batch[2].key, None, "changed", text_hash("changed"), {"v": "changed"}),
    ]
    with pytest.raises(MissingPointError) as info:
        sink.update_payloads(call)
    assert isinstance(info.value, SinkError)
    message = str(info.value)
    assert missing.id in message and "not applied" in message and "\n" not in message
    assert info.value.point_ids == [missing.id]
    # all or nothing: the existing points of the same call were not changed, nothing was inserted
    assert sink.count() == 3
    assert_same(snapshot(sink), before)
    assert sink.text_hashes([missing.id]) == {}


# -- reads ------------------------------------------------------------------------------------------


def test_iter_points_by_table_and_count(sink: VectorSink) -> None:
    docs, notes = points(DOCS, range(5)), points(NOTES, range(3))
    sink.upsert(docs + notes)
    sink.set_state("contract/doc", {"not": "a point"})
    assert {p.id for p in sink.iter_points(DOCS)} == {p.id for p in docs}
    assert {p.id for p in sink.iter_points(NOTES)} == {p.id for p in notes}
    assert {p.id for p in sink.iter_points()} == {p.id for p in docs + notes}
    assert list(sink.iter_points("public.nothing")) == []
    assert sink.count() == 8  # the state document is not counted


def test_text_hashes_of_present_ids_only(sink: VectorSink) -> None:
    batch = points(DOCS, range(4))
    sink.upsert(batch)
    asked = [batch[0].id, _absent_id(), batch[3].id, batch[0].id]
    assert sink.text_hashes(asked) == {batch[0].id: batch[0].text_hash, batch[3].id: batch[3].text_hash}
    assert sink.text_hashes([_absent_id()]) == {}
    assert sink.text_hashes([]) == {}


def test_get_points_by_id_without_vectors(sink: VectorSink) -> None:
    batch = points(DOCS, range(4)) + [point(NOTES, ["n", 1], text="note", payload={"yes": True, "n": None})]
    sink.upsert(batch)
    sink.set_state("contract/doc", {"not": "a point"})
    asked = [batch[0].id, _absent_id(), batch[4].id, batch[0].id]
    got = sink.get_points(asked)
    assert sorted(got) == sorted([batch[0].id, batch[4].id])
    for p in (batch[0], batch[4]):
        s = got[p.id]
        assert (s.id, s.table, s.key, s.text, s.text_hash, s.payload) == (p.id, p.table, p.key, p.text, p.text_hash, p.payload)
        assert s.vector is None
    assert type(got[batch[4].id].payload["yes"]) is bool
    assert sink.get_points([_absent_id()]) == {} and sink.get_points([]) == {}


@pytest.mark.parametrize("limit", [1, 3, 100])
def test_points_page_walks_every_point_once_in_id_order(sink: VectorSink, limit: int) -> None:
    docs, notes = points(DOCS, range(7)), points(NOTES, range(2))
    sink.upsert(docs + notes)
    for table, want in ((DOCS, docs), (NOTES, notes), (None, docs + notes)):
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page, cursor = sink.points_page(table, cursor, limit)
            assert len(page) <= limit and all(p.vector is None for p in page)
            assert cursor is None or isinstance(cursor, str)  # opaque, and it crosses processes
            seen += [p.id for p in page]
            if cursor is None:
                break
        assert seen == sorted(p.id for p in want), table
    page, cursor = sink.points_page("public.nothing", None, limit)
    assert (page, cursor) == ([], None)
    (first,), _ = sink.points_page(DOCS, None, 1, with_vectors=True)
    assert first.vector is not None and first.vector.shape == (DIM,)


def test_reads_before_ensure_ready_find_nothing_in_a_new_store(store: Store) -> None:
    """A reader that creates nothing (``embedcluster verify``) may read before ``ensure_ready``."""
    fresh = store.kind.open(store.config)
    try:
        assert fresh.get_points([_absent_id()]) == {}
        assert fresh.points_page(DOCS, None, 10) == ([], None) and list(fresh.iter_points()) == []
        assert fresh.get_state("slot/contract") is None
    finally:
        fresh.close()


def test_points_page_goes_on_past_deletes_behind_and_ahead(sink: VectorSink) -> None:
    batch = points(DOCS, range(9))
    sink.upsert(batch)
    ids = sorted(p.id for p in batch)
    page, cursor = sink.points_page(DOCS, None, 3)
    assert [p.id for p in page] == ids[:3]
    sink.delete([ids[0], ids[3]])  # one already seen, the first of the next page
    seen = []
    while cursor is not None:
        page, cursor = sink.points_page(DOCS, cursor, 3)
        seen += [p.id for p in page]
    assert seen == ids[4:]


# -- state documents ---------------------------------------------------------------------------------


def test_state_documents_set_overwrite_and_clear(sink: VectorSink) -> None:
    assert sink.get_state("slot/contract") is None
    sink.set_state("slot/contract", {"backfill_complete": False})
    doc = {"backfill_complete": True, "tables": ["public.docs"], "n": 3, "at": 1.5, "nested": {"a": [1, None, {"b": "ü"}]}}
    sink.set_state("slot/contract", doc)  # overwrite
    sink.set_state("slot/other", {"x": None})
    assert sink.get_state("slot/contract") == doc
    assert sink.get_state("slot/other") == {"x": None}
    sink.set_state("slot/contract", None)
    assert sink.get_state("slot/contract") is None
    assert sink.get_state("slot/other") == {"x": None}  # names are independent
    sink.set_state("never/set", None)  # clearing a missing document is harmless
    assert sink.get_state("never/set") is None


def test_state_documents_are_never_points(sink: VectorSink) -> None:
    sink.set_state("slot/contract", {"backfill_complete": True})
    assert sink.count() == 0
    assert list(sink.iter_points()) == []
    assert sink.search(unit(1), 10) == []
    sink.upsert([point(DOCS, 1)])
    assert sink.count() == 1
    assert [h.key for h in sink.search(unit(1), 10)] == [[1]]


# -- search ---------------------------------------------------------------------------------------------


def test_search_matches_exact_cosine_similarity(sink: VectorSink) -> None:
    rng = np.random.default_rng(11)
    raw = rng.normal(size=(50, DIM)) * rng.uniform(0.1, 10.0, size=(50, 1))  # not unit length: true cosine
    batch = [point(DOCS if i % 2 else NOTES, i, payload={"i": i}, vector=raw[i].astype(np.float32)) for i in range(50)]
    sink.upsert(batch)
    stored = np.stack([p.vector for p in batch]).astype(np.float64)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    queries = [rng.normal(size=DIM) * 3 for _ in range(4)] + [raw[17] * 3]
    for q in queries:
        cosine = stored @ (q / np.linalg.norm(q))
        best = np.argsort(-cosine)[:10]
        hits = sink.search(q.astype(np.float32), 10)
        assert [point_id(h.table, h.key) for h in hits] == [batch[i].id for i in best]
        np.testing.assert_allclose([h.score for h in hits], cosine[best], rtol=0, atol=1e-4)
        assert [h.payload for h in hits] == [{"i": int(i)} for i in best]
    assert hits[0].key == [17] and hits[0].score == pytest.approx(1.0, abs=1e-4)  # the last query: a stored vector


def test_search_with_k_beyond_the_count_returns_all_and_an_empty_store_none(sink: VectorSink) -> None:
    q = unit(5)
    assert sink.search(q, 5) == []
    batch = points(DOCS, range(4))
    sink.upsert(batch)
    hits = sink.search(q, 50)
    assert sorted(point_id(h.table, h.key) for h in hits) == sorted(p.id for p in batch)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


# -- set-up and health ----------------------------------------------------------------------------------


def test_ping_succeeds_on_a_ready_sink(sink: VectorSink) -> None:
    assert sink.ping() is None
    assert sink.count() == 0  # a read: nothing was written


def test_ensure_ready_again_keeps_points_and_another_dimension_raises(sink: VectorSink) -> None:
    batch = points(DOCS, range(3))
    sink.upsert(batch)
    sink.ensure_ready(DIM)
    assert_same(snapshot(sink), written(batch))
    with pytest.raises(SinkError) as info:
        sink.ensure_ready(DIM * 2)
    assert "\n" not in str(info.value)


def test_points_and_state_survive_a_reopen(store: Store, sink: VectorSink) -> None:
    if not store.kind.durable:
        pytest.skip(f"{store.kind.name} keeps nothing once closed, by design")
    batch = points(DOCS, range(5))
    sink.upsert(batch)
    sink.delete([batch[0].id])
    sink.update_payloads([VectorPoint(batch[1].id, DOCS, batch[1].key, None, "t2", text_hash("t2"), {"v": 2})])
    sink.set_state("slot/contract", {"backfill_complete": True})
    before = snapshot(sink)

    again = store.reopen(sink)
    assert again.count() == 4
    assert_same(snapshot(again), before)
    assert again.get_state("slot/contract") == {"backfill_complete": True}


# -- request sizes ----------------------------------------------------------------------------------------
#
# On a store whose requests may not exceed LIMIT bytes (Qdrant: sink.max_request_bytes;
# MySQL: a server started with max_allowed_packet = LIMIT), measured as the store
# receives them (see conftest.py).


def _many_ids(n: int) -> list[str]:
    """``n`` distinct well-formed UUIDs, none of them a point of this suite."""
    return [f"00000000-0000-4000-8000-{i:012x}" for i in range(n)]


def test_deleting_a_million_ids_in_one_call_stays_within_the_request_limit(store: Store) -> None:
    sink = store.open(limited=True)
    keep, gone = points(DOCS, range(5)), points(DOCS, range(5, 10)) + points(NOTES, range(2))
    sink.upsert(keep + gone)
    ids = _many_ids(1_000_000)
    for i, p in enumerate(gone):  # stored ids at the start, in the middle and at the end of the call
        ids.insert([0, 1, 400_000, 500_000, 999_000, 1_000_000, len(ids)][i], p.id)
    with store.requests(sink) as sent:
        sink.delete(ids)
    assert sink.count() == 5
    assert_same(snapshot(sink), written(keep))
    deletes = sent.sizes("delete")
    assert max(sent.sizes()) <= LIMIT, max(sent.sizes())
    assert sum(deletes) >= 36 * len(ids)  # every id was sent (36 characters each)
    assert len(deletes) >= 36 * len(ids) // LIMIT + 1  # in as many requests as that takes
    sink.delete(ids)  # a replay is harmless
    assert sink.count() == 5


def test_an_upsert_larger_than_the_request_limit_is_split_and_lands_whole(store: Store) -> None:
    sink = store.open(limited=True)
    # 4 bytes a character in UTF-8: a limit counted in characters would let 4x too much into a request
    batch = [point(DOCS, k, text="🚀" * 2000 + str(k), payload={"k": k, "note": "ü" * 500}) for k in range(40)]
    with store.requests(sink) as sent:
        sink.upsert(batch)
    assert max(sent.sizes()) <= LIMIT, max(sent.sizes())
    upserts = sent.sizes("upsert")
    assert sum(upserts) > 40 * 9000 and len(upserts) >= 40 * 9000 // LIMIT + 1
    assert_same(snapshot(sink), written(batch))

    # payload updates of the same size are split the same way
    updated = [dataclasses.replace(p, vector=None, text="€" * 3000, text_hash=text_hash("€" * 3000)) for p in batch]
    with store.requests(sink) as sent:
        sink.update_payloads(updated)
    assert max(sent.sizes()) <= LIMIT, max(sent.sizes())
    assert sum(sent.sizes("update")) > 40 * 9000
    assert sink.text_hashes([p.id for p in batch]) == {p.id: text_hash("€" * 3000) for p in batch}


def _assert_poison(error: PointError, p: VectorPoint, key: str) -> None:
    assert isinstance(error, ValueError) and not isinstance(error, SinkError)  # not a store outage
    assert error.permanent is True and error.point_id == p.id
    message = str(error)
    assert "\n" not in message and p.id in message and key in message, message
    if isinstance(error, PointTooLarge):
        assert error.size > error.limit and f"{error.limit:,}" in message and f"{error.size:,}" in message


def test_a_point_larger_than_the_request_limit_is_a_permanent_error_and_nothing_is_written(store: Store) -> None:
    sink = store.open(limited=True)
    fine = points(DOCS, range(3))
    poison = point(DOCS, 99, text="x" * LIMIT)
    started = time.monotonic()
    with pytest.raises(PointTooLarge) as info:
        sink.upsert(fine + [poison] + points(NOTES, range(2)))
    assert time.monotonic() - started < 10  # refused at once, not retried as if the store were down
    _assert_poison(info.value, poison, store.kind.limit_key)
    assert info.value.limit <= LIMIT
    assert sink.count() == 0  # nothing of that call

    sink.upsert(fine)  # the sink is still usable, and the rest of the batch can go on without it
    too_long = dataclasses.replace(fine[1], vector=None, text="y" * LIMIT, text_hash=text_hash("y" * LIMIT))
    with pytest.raises(PointTooLarge) as info:
        sink.update_payloads([dataclasses.replace(fine[0], vector=None, text="changed"), too_long])
    _assert_poison(info.value, too_long, store.kind.limit_key)
    assert_same(snapshot(sink), written(fine))


# -- bulk deletes and generations -----------------------------------------------------------------------------


def test_delete_table_removes_that_tables_points_only(sink: VectorSink) -> None:
    docs, notes = points(DOCS, range(7)), points(NOTES, range(3))
    sink.upsert(docs + notes)
    sink.set_state("contract/doc", {"not": "a point"})
    assert sink.delete_table(DOCS) == 7
    assert_same(snapshot(sink), written(notes))
    assert sink.delete_table(DOCS) == 0  # again: nothing left, harmless
    assert sink.delete_table("public.nothing") == 0
    assert sink.get_state("contract/doc") == {"not": "a point"}
    sink.upsert(docs[:2])  # the table can be written again (a TRUNCATE followed by inserts)
    assert_same(snapshot(sink), written(notes + docs[:2]))


def test_generation_is_stored_by_upserts_and_payload_updates(sink: VectorSink) -> None:
    big = 2**62 + 7  # beyond a float's exact integers
    a, b = point(DOCS, 1, generation=big), point(DOCS, 2)
    sink.upsert([a, b])
    assert {p.id: p.generation for p in sink.iter_points()} == {a.id: big, b.id: 0}
    assert sink.get_points([a.id])[a.id].generation == big
    sink.update_payloads([dataclasses.replace(b, vector=None, generation=5), dataclasses.replace(a, vector=None, generation=0)])
    assert {p.id: p.generation for p in sink.iter_points()} == {a.id: 0, b.id: 5}


def test_delete_table_except_generation_removes_what_the_backfill_did_not_write(sink: VectorSink) -> None:
    earlier = points(DOCS, range(6)) + [point(DOCS, 6, generation=3)]  # generation 0 (none) and an older one
    notes = points(NOTES, range(2))
    sink.upsert(earlier + notes)
    # a backfill with generation 7 finds rows 0-2 (upserts) and 3 (a payload update), not 4-6
    again = [dataclasses.replace(p, generation=7) for p in earlier[:3]]
    sink.upsert(again)
    payload_only = dataclasses.replace(earlier[3], vector=None, payload={"v": 2}, generation=7)
    sink.update_payloads([payload_only])
    assert sink.delete_table_except_generation(DOCS, 7) == 3
    kept = again + [dataclasses.replace(payload_only, vector=earlier[3].vector)]
    assert_same(snapshot(sink, DOCS), written(kept))
    assert_same(snapshot(sink, NOTES), written(notes))  # another table, whatever its generations
    assert sink.delete_table_except_generation(DOCS, 7) == 0
    assert sink.delete_table_except_generation("public.nothing", 7) == 0
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            sink.delete_table_except_generation(DOCS, bad)  # type: ignore[arg-type]
    assert sink.count() == 6


# -- filtered search, table, score threshold, modes ------------------------------------------------------------


@pytest.fixture
def searchable(sink: VectorSink) -> VectorSink:
    """The sink of the filter cases (every kind runs them)."""
    return sink


def _ids(hits: list[SearchHit]) -> list[str]:
    return [point_id(h.table, h.key) for h in hits]


def _nearest(batch: list[VectorPoint], q: np.ndarray, k: int) -> list[str]:
    """The ids of the ``k`` points of ``batch`` nearest to ``q`` by exact cosine similarity."""
    stored = np.stack([p.vector for p in batch]).astype(np.float64)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    order = np.argsort(-(stored @ (q / np.linalg.norm(q))), kind="stable")[:k]
    return [batch[i].id for i in order]


def test_a_filter_returns_every_match_up_to_k_never_fewer(searchable: VectorSink) -> None:
    """1,000 points, 7 of them teal: a k=10 search for teal returns exactly those 7, best first;
    fetching the 10 nearest and dropping the rest would return almost none of them."""
    sink = searchable
    rng = np.random.default_rng(5)
    teal = set(rng.choice(1000, size=7, replace=False).tolist())
    batch = [point(DOCS, i, payload={"color": "teal" if i in teal else "grey", "n": i}) for i in range(1000)]
    sink.upsert(batch)
    q = unit(77)
    hits = sink.search(q, 10, filters=[FieldFilter("color", equals="teal")])
    want = _nearest([p for p in batch if p.key[0] in teal], q, 10)
    assert _ids(hits) == want and len(hits) == 7
    assert all(h.payload["color"] == "teal" for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # more matches than k: exactly k, the nearest of the matches
    hits = sink.search(q, 10, filters=[FieldFilter("color", equals="grey")])
    assert _ids(hits) == _nearest([p for p in batch if p.key[0] not in teal], q, 10)


def test_table_keeps_one_tables_points(searchable: VectorSink) -> None:
    sink = searchable
    docs, notes = points(DOCS, range(30)), points(NOTES, range(4))
    sink.upsert(docs + notes)
    sink.set_state("contract/doc", {"not": "a point"})
    q = unit(3)
    assert _ids(sink.search(q, 10, table=NOTES)) == _nearest(notes, q, 10)
    assert _ids(sink.search(q, 5, table=DOCS)) == _nearest(docs, q, 5)
    assert sink.search(q, 5, table="public.nothing") == []
    # with a filter too: both hold
    got = sink.search(q, 10, table=DOCS, filters=[FieldFilter("k", any_of=(1, 2, 3))])
    assert sorted(h.key for h in got) == [[1], [2], [3]]


def test_score_threshold_leaves_out_lower_scores_inside_the_store(searchable: VectorSink) -> None:
    sink = searchable
    batch = points(DOCS, range(200))
    sink.upsert(batch)
    q = batch[17].vector
    everything = sink.search(q, 200)
    threshold = float(everything[12].score) - 1e-4  # the 13 best pass, the 14th does not (random vectors)
    assert everything[13].score < threshold
    hits = sink.search(q, 50, score_threshold=threshold)
    assert _ids(hits) == _ids(everything[:13])
    assert all(h.score >= threshold for h in hits)
    assert sink.search(q, 50, score_threshold=1.5) == []  # nothing scores above 1
    # with k below the matches: k of them
    assert _ids(sink.search(q, 5, score_threshold=threshold)) == _ids(everything[:5])


def _typed_points() -> list[VectorPoint]:
    colors = ["red", "green", "blue"]
    batch = []
    for i in range(24):
        payload: dict[str, Any] = {"i": i, "color": colors[i % 3], "odd": bool(i % 2), "price": i * 1.5}
        if i % 4 == 0:
            payload["price"] = None  # null never matches
        if i % 6 == 0:
            del payload["color"]  # nor does a missing field
        batch.append(point(DOCS, i, payload=payload))
    return batch


def _keys(hits: list[SearchHit]) -> list[int]:
    return sorted(h.key[0] for h in hits)


def test_filters_on_strings_numbers_and_booleans_and_all_of_them_hold(searchable: VectorSink) -> None:
    sink = searchable
    batch = _typed_points()
    sink.upsert(batch)
    q = unit(9)
    expected = {
        (FieldFilter("color", equals="red"),): [i for i in range(24) if i % 3 == 0 and i % 6],
        (FieldFilter("i", equals=7),): [7],
        (FieldFilter("odd", equals=True),): [i for i in range(24) if i % 2],
        (FieldFilter("odd", equals=False),): [i for i in range(24) if not i % 2],
        (FieldFilter("price", equals=4.5),): [3],
        (FieldFilter("color", any_of=("green", "blue")),): [i for i in range(24) if i % 3 and i % 6],
        (FieldFilter("i", any_of=(2, 3, 99)),): [2, 3],
        (FieldFilter("i", any_of=()),): [],
        (FieldFilter("i", range=(("gte", 5), ("lt", 9))),): [5, 6, 7, 8],
        (FieldFilter("i", range=(("gt", 20),)),): [21, 22, 23],
        (FieldFilter("price", range=(("lte", 6.0),)),): [1, 2, 3],  # 0 and 4 hold null
        (FieldFilter("i", range=(("gte", 10),)), FieldFilter("odd", equals=True), FieldFilter("color", equals="green")):
            [13, 19],
        (FieldFilter("nothing", equals="x"),): [],
    }
    for flts, keys in expected.items():
        assert _keys(sink.search(q, 30, filters=list(flts))) == keys, flts


def test_field_names_with_dots_spaces_and_quotes_are_addressed_exactly(searchable: VectorSink) -> None:
    """A field called ``a.b`` is not ``b`` inside ``a``; one a sink cannot address is refused in one line."""
    sink = searchable
    dotted = point(DOCS, 1, payload={"a.b": 1, "with space": "yes", "it's": "x", "tab[0]": 5})
    nested = point(DOCS, 2, payload={"a": {"b": 1}, "with": {"space": "yes"}})
    sink.upsert([dotted, nested])
    q = unit(1)
    assert _ids(sink.search(q, 5, filters=[FieldFilter("a.b", equals=1)])) == [dotted.id]
    assert _ids(sink.search(q, 5, filters=[FieldFilter("with space", equals="yes")])) == [dotted.id]
    assert _ids(sink.search(q, 5, filters=[FieldFilter("it's", equals="x")])) == [dotted.id]
    assert _ids(sink.search(q, 5, filters=[FieldFilter("tab[0]", equals=5)])) == [dotted.id]
    quoted = point(DOCS, 3, payload={'say "hi"': 1})
    sink.upsert([quoted])
    try:
        hits = sink.search(q, 5, filters=[FieldFilter('say "hi"', equals=1)])
    except ValueError as exc:
        assert 'say "hi"' in str(exc) and "\n" not in str(exc)
    else:
        assert _ids(hits) == [quoted.id]


def test_payload_indexes_are_idempotent_and_filters_agree_with_them(searchable: VectorSink) -> None:
    sink = searchable
    batch = _typed_points()
    sink.upsert(batch)
    q = unit(4)
    before = {f: _keys(sink.search(q, 30, filters=[flt])) for f, flt in (
        ("color", FieldFilter("color", equals="blue")), ("i", FieldFilter("i", range=(("lt", 4),))),
        ("price", FieldFilter("price", range=(("gt", 30.0),))), ("odd", FieldFilter("odd", equals=True)))}
    fields = {"color": "keyword", "i": "integer", "price": "float", "odd": "bool"}
    sink.ensure_payload_indexes(fields)
    sink.ensure_payload_indexes(fields)  # again: harmless
    sink.upsert([point(DOCS, 100, payload={"i": 1, "color": "blue", "odd": True, "price": 99.0})])  # after indexing
    after = {f: _keys(sink.search(q, 30, filters=[flt])) for f, flt in (
        ("color", FieldFilter("color", equals="blue")), ("i", FieldFilter("i", range=(("lt", 4),))),
        ("price", FieldFilter("price", range=(("gt", 30.0),))), ("odd", FieldFilter("odd", equals=True)))}
    assert after == {f: sorted(keys + [100]) for f, keys in before.items()}


def test_keyword_and_hybrid_search_find_an_exact_term_or_are_refused(searchable: VectorSink) -> None:
    """A sink either runs BM25 over the stored text (the rare word's point first) or raises
    UnsupportedSearch, a one-line ValueError; dense search never needs the text."""
    sink = searchable
    batch = [point(DOCS, i, text=f"an ordinary row about item {i}") for i in range(40)]
    rare = point(DOCS, 99, text="the zyzzyva beetle of the palm")
    sink.upsert(batch + [rare])
    for mode, vector in (("keyword", None), ("hybrid", unit(2))):
        try:
            hits = sink.search(vector, 5, text="zyzzyva", mode=mode)
        except UnsupportedSearch as exc:
            assert isinstance(exc, ValueError) and mode in str(exc) and "\n" not in str(exc)
            continue
        assert hits and _ids(hits)[0] == rare.id, mode
        if mode == "keyword":
            assert _ids(hits) == [rare.id]  # no other text holds the word
        # filters hold in every mode
        assert sink.search(vector, 5, text="zyzzyva", mode=mode, table=NOTES) == []
    with pytest.raises(ValueError):
        sink.search(unit(2), 5, mode="semantic")
