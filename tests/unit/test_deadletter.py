"""Dead letters (actors/deadletter.py) and the writer's isolation of failing changes, on a real
embedded Qdrant store whose request limit rejects oversized points (a real failure, no fake sink)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from actors.changes import Change, ChangeBatch, EmbeddedVectors, point_id
from actors.deadletter import DeadLetters, TooManyDeadLetters
from actors.retry import Backoff
from actors.sinks.qdrant import QdrantSink, QdrantSinkConfig
from actors.writer import WriteInterrupted, Writer, state_name

DIM = 8
T = "public.docs"
LIMIT = 16 << 10  # the smallest request limit the config allows
BIG = "x" * (LIMIT + 1000)  # one point over it: PointTooLarge, permanent for that change


@pytest.fixture
def sink(tmp_path):
    s = QdrantSink(QdrantSinkConfig(path=str(tmp_path / "q"), collection="dl", max_request_bytes=LIMIT))
    s.ensure_ready(DIM)
    yield s
    s.close()


def _writer(sink: QdrantSink, **kw) -> Writer:
    w = Writer(sink, "dl_slot", **kw)
    w.open(DIM)
    # a completed backfill, so positions are recorded like in a streaming pipeline
    w.begin_backfill([T], "pub")
    w.apply(ChangeBatch(seq=1, changes=[], ack_lsn=0x10, snapshot_complete=True), None)
    return w


def _vectors(n: int) -> np.ndarray:
    v = np.random.default_rng(n).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _up(key: int, text: str, lsn: int) -> Change:
    return Change("upsert", T, (key,), text=text, payload={"n": key}, lsn=lsn)


def _keys(sink: QdrantSink) -> set[int]:
    return {p.key[0] for p in sink.iter_points(T)}


def test_a_poison_change_is_isolated_dead_lettered_and_the_rest_written(sink):
    writer = _writer(sink)
    changes = [_up(k, BIG if k in (7, 13) else f"row {k}", lsn=0x100 + k) for k in range(20)]
    result = writer.apply(ChangeBatch(seq=2, changes=changes, ack_lsn=0x200), _vectors(20))
    assert (result.dead_lettered, result.dead_letters, result.ack_lsn) == (2, 2, 0x200)
    assert _keys(sink) == set(range(20)) - {7, 13}
    # recorded before the position: the state reflects the batch, the slot may move on
    assert sink.get_state(state_name("dl_slot"))["position"] == 0x200
    letters = DeadLetters(sink, "dl_slot").entries()
    assert sorted((d.table, d.key, d.op, d.lsn) for d in letters) == [(T, [7], "upsert", 0x107), (T, [13], "upsert", 0x10D)]
    assert all("sink.max_request_bytes" in d.error and d.attempts == 1 for d in letters)  # permanent: no retries
    assert writer.stats()["dead_letters"] == 2


def test_a_later_successful_write_resolves_the_record_and_a_payload_update_waits(sink):
    writer = _writer(sink)
    writer.apply(ChangeBatch(seq=2, changes=[_up(1, BIG, 0x100), _up(2, "fine", 0x100)], ack_lsn=0x110), _vectors(2))
    assert len(writer.deadletters) == 1
    # only the payload changes (text unchanged): the point is not stored, the record stays and is noted
    payload_only = Change("upsert", T, (1,), text=BIG, payload={"n": 100}, lsn=0x120, text_unchanged=True)
    result = writer.apply(ChangeBatch(seq=3, changes=[payload_only], ack_lsn=0x130), None)
    assert result.dead_letters == 1 and _keys(sink) == {2}
    assert DeadLetters(sink, "dl_slot").entries()[0].lsn == 0x120
    # the row gets a text the store accepts: written, and its record is gone
    result = writer.apply(ChangeBatch(seq=4, changes=[_up(1, "short now", 0x140)], ack_lsn=0x150), _vectors(1))
    assert result.dead_letters == 0 and _keys(sink) == {1, 2}
    assert DeadLetters(sink, "dl_slot").entries() == []


def test_records_survive_a_new_writer_and_merge_attempts(sink):
    writer = _writer(sink)
    writer.apply(ChangeBatch(seq=2, changes=[_up(5, BIG, 0x100)], ack_lsn=0x110), _vectors(1))
    again = Writer(sink, "dl_slot")
    again.open(DIM)  # loads the ids from the store
    assert len(again.deadletters) == 1
    again.apply(ChangeBatch(seq=1, changes=[_up(5, BIG + "y", 0x200)], ack_lsn=0x210), _vectors(1))
    (letter,) = DeadLetters(sink, "dl_slot").entries()
    assert (letter.attempts, letter.lsn) == (2, 0x200) and letter.first_seen <= letter.last_seen


def test_past_max_dead_letters_the_pipeline_stops_on_purpose(sink):
    writer = _writer(sink, max_dead_letters=1)
    writer.apply(ChangeBatch(seq=2, changes=[_up(1, BIG, 0x100)], ack_lsn=0x110), _vectors(1))
    with pytest.raises(TooManyDeadLetters) as info:
        writer.apply(ChangeBatch(seq=3, changes=[_up(2, BIG, 0x120)], ack_lsn=0x130), _vectors(1))
    assert info.value.permanent and "pipeline.max_dead_letters = 1" in str(info.value)
    assert "\n" not in str(info.value)
    # nothing of the failed batch was acknowledged: the position stays
    assert sink.get_state(state_name("dl_slot"))["position"] == 0x110


def test_texts_the_model_failed_on_are_dead_lettered(sink):
    writer = _writer(sink)
    vectors = EmbeddedVectors(_vectors(3), {1: "RuntimeError: the model failed"})
    changes = [_up(k, f"row {k}", 0x100 + k) for k in range(3)]
    result = writer.apply(ChangeBatch(seq=2, changes=changes, ack_lsn=0x200), vectors)
    assert result.dead_lettered == 1 and _keys(sink) == {0, 2}
    (letter,) = DeadLetters(sink, "dl_slot").entries()
    assert letter.key == [1] and letter.error == "embedding failed: RuntimeError: the model failed"


def test_a_deleted_row_resolves_its_record(sink):
    writer = _writer(sink)
    writer.apply(ChangeBatch(seq=2, changes=[_up(3, BIG, 0x100)], ack_lsn=0x110), _vectors(1))
    writer.apply(ChangeBatch(seq=3, changes=[Change("delete", T, (3,), lsn=0x120)], ack_lsn=0x130), None)
    assert DeadLetters(sink, "dl_slot").entries() == []


def test_a_write_waiting_for_an_absent_sink_is_interrupted_unacknowledged(tmp_path):
    sink = QdrantSink(QdrantSinkConfig(path=str(tmp_path / "q"), collection="dl"))
    sink.ensure_ready(DIM)
    writer = _writer(sink, max_retry_delay=0.2)
    sink.close()  # the store is gone: every call fails, ping too
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            writer.apply(ChangeBatch(seq=2, changes=[_up(1, "a", 0x100)], ack_lsn=0x110), _vectors(1))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive(), "the write gave up while the sink was away"
    assert writer.stats()["sink_unavailable_s"] is not None and writer.outages == 1
    writer.interrupt()
    thread.join(10)
    assert not thread.is_alive() and isinstance(outcome[0], WriteInterrupted)
    assert writer.dead_lettered == 0  # an outage never dead-letters


def test_backoff_grows_to_its_cap_with_jitter_and_resets():
    backoff = Backoff(base=0.2, cap=5.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    assert 0.1 <= delays[0] <= 0.2 and all(d <= 5.0 for d in delays) and max(delays) >= 2.5
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert backoff.next() <= 0.2


def test_state_names_of_slots_do_not_mix(sink):
    a, b = DeadLetters(sink, "a"), DeadLetters(sink, "ab")
    from actors.deadletter import DeadLetter

    a.record(DeadLetter(point_id(T, [1]), T, [1], "upsert", 1, "x", 1))
    b.record(DeadLetter(point_id(T, [2]), T, [2], "upsert", 2, "y", 1))
    assert [d.key for d in a.entries()] == [[1]] and [d.key for d in b.entries()] == [[2]]
