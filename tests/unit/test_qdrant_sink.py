"""actors/sinks/qdrant/sink.py (qdrant-client): its local mode's durability settings, request sizes, dense-only search."""

import numpy as np

from actors.changes import point_id
from actors.sinks.base import VectorPoint
from actors.sinks.qdrant import QdrantSink
from actors.sinks.qdrant import QdrantSinkConfig


def _point(i: int) -> VectorPoint:
    v = np.random.default_rng(i).normal(size=4).astype(np.float32)
    return VectorPoint(point_id("public.t", (i,)), "public.t", [i], v / np.linalg.norm(v), f"text {i}", "h", {"i": i})


def test_embedded_store_uses_wal_with_full_sync_and_reopens(tmp_path):
    config = QdrantSinkConfig(path=str(tmp_path / "q"), collection="unit")
    sink = QdrantSink(config)
    sink.ensure_ready(4)
    conn = sink.client._client.collections["unit"].storage.storage
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: every commit is fsynced
    sink.upsert([_point(i) for i in range(5)])
    sink.delete([point_id("public.t", (0,))])
    sink.close()

    reopened = QdrantSink(config)
    reopened.ensure_ready(4)
    assert reopened.count() == 4
    assert {p.key[0] for p in reopened.iter_points("public.t")} == {1, 2, 3, 4}
    reopened.close()


def _rows_on_disk(path) -> int:
    """Points committed to the collection's SQLite file, read by an independent connection."""
    import sqlite3

    with sqlite3.connect(path) as reader:
        return reader.execute("SELECT count(*) FROM points").fetchone()[0]


def test_one_upsert_is_one_transaction_committed_before_it_returns(tmp_path):
    config = QdrantSinkConfig(path=str(tmp_path / "q"), collection="unit")
    sink = QdrantSink(config)
    sink.ensure_ready(4)
    storage = sink.client._client.collections["unit"].storage
    db_file = str(storage.location)
    conn = storage.storage._connection

    sink.upsert([_point(i) for i in range(50)])

    assert _rows_on_disk(db_file) == 50  # durable when upsert returns, seen from another connection
    assert not conn.in_transaction
    sink.delete([point_id("public.t", (i,)) for i in range(10)])
    assert _rows_on_disk(db_file) == 40
    sink.close()


def test_a_failing_call_rolls_back_the_whole_batch(tmp_path):
    import sqlite3

    from actors.sinks.qdrant import _CallTransaction

    db_file = tmp_path / "t.sqlite"
    connection = sqlite3.connect(db_file)
    connection.execute("CREATE TABLE points (id TEXT PRIMARY KEY, point BLOB)")
    connection.commit()
    wrapped = _CallTransaction(connection)

    def persist(key: str) -> None:  # what qdrant-client's persistence does per point
        with wrapped:
            wrapped.execute("INSERT OR REPLACE INTO points VALUES (?, ?)", (key, b"x"))

    try:
        with wrapped.batch():
            persist("a")
            persist("b")
            assert _rows_on_disk(db_file) == 0  # nothing is committed point by point
            raise OSError("disk full")
    except OSError:
        pass
    assert _rows_on_disk(db_file) == 0  # the batch rolled back as a whole; the pipeline replays it
    assert not connection.in_transaction

    with wrapped.batch():
        persist("a")
        persist("b")
    assert _rows_on_disk(db_file) == 2

    persist("c")  # outside a batch: the connection's own per-statement commit
    assert _rows_on_disk(db_file) == 3
    connection.close()


def test_max_request_bytes_defaults_below_the_servers_32_mib_and_is_validated():
    import pytest
    from pydantic import ValidationError

    assert QdrantSinkConfig().max_request_bytes == (32 << 20) - (1 << 20)
    with pytest.raises(ValidationError, match="max_request_bytes"):
        QdrantSinkConfig(max_request_bytes=100)


def test_a_split_upsert_is_still_one_transaction_in_the_embedded_store(tmp_path):
    """Several requests of one call (a small sink.max_request_bytes) commit together, once."""
    config = QdrantSinkConfig(path=str(tmp_path / "q"), collection="unit", max_request_bytes=16 << 10)
    sink = QdrantSink(config)
    sink.ensure_ready(4)
    storage = sink.client._client.collections["unit"].storage
    db_file = str(storage.location)
    calls = []
    send = sink._request

    def counted(method, collection, **kwargs):
        calls.append(method)
        if len(calls) == 2:  # the first request is applied, but not committed yet
            assert _rows_on_disk(db_file) == 0
        return send(method, collection, **kwargs)

    sink._request = counted
    big = [VectorPoint(p.id, p.table, p.key, p.vector, "t" * 2000, "h", {}) for p in (_point(i) for i in range(30))]
    sink.upsert(big)
    assert calls.count("upsert") >= 4 and _rows_on_disk(db_file) == 30
    sink.close()


def test_a_point_too_large_names_the_key_and_how_to_raise_it(tmp_path):
    import pytest

    from actors.sinks.base import PointTooLarge

    sink = QdrantSink(QdrantSinkConfig(path=":memory:", collection="unit", max_request_bytes=16 << 10))
    sink.ensure_ready(4)
    p = _point(1)
    p.text = "x" * (20 << 10)
    with pytest.raises(PointTooLarge) as info:
        sink.upsert([p])
    message = str(info.value)
    assert "sink.max_request_bytes" in message and "service.max_request_size_mb" in message
    assert info.value.limit == (16 << 10) - 512 and info.value.size > 20 << 10
    sink.close()


def test_the_server_sink_runs_dense_search_only_and_says_which_modes_it_lacks():
    import pytest

    from actors.sinks.base import UnsupportedSearch

    sink = QdrantSink(QdrantSinkConfig(path=":memory:", collection="unit"))
    sink.ensure_ready(4)
    sink.upsert([_point(i) for i in range(3)])
    for mode in ("hybrid", "keyword"):
        with pytest.raises(UnsupportedSearch) as info:
            sink.search(_point(1).vector, 3, text="text", mode=mode)
        message = str(info.value)
        assert isinstance(info.value, ValueError) and mode in message and "sink.url" in message and "\n" not in message
    assert [h.key for h in sink.search(_point(1).vector, 1)] == [[1]]
    with pytest.raises(ValueError, match="unknown search mode"):
        sink.search(_point(1).vector, 3, mode="semantic")
    sink.close()


def test_payload_indexes_are_checked_and_local_mode_needs_none():
    import warnings

    import pytest

    sink = QdrantSink(QdrantSinkConfig(path=":memory:", collection="unit"))
    sink.ensure_ready(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # qdrant-client warns when asked for an index it cannot use
        sink.ensure_payload_indexes({"year": "integer", "a.b": "keyword"})
    with pytest.raises(ValueError, match="unknown kind"):
        sink.ensure_payload_indexes({"year": "date"})
    with pytest.raises(ValueError, match="double quote"):
        sink.ensure_payload_indexes({'a"b': "keyword"})
    sink.close()


def test_a_filter_field_is_addressed_as_one_quoted_payload_key():
    from actors.sinks.qdrant.layout import field_path

    assert field_path("year") == "payload.year"
    assert field_path("a.b") == 'payload."a.b"' and field_path("with space") == 'payload."with space"'
    assert field_path("tab[0]") == 'payload."tab[0]"'
