"""actors/sinks/qdrant/edge.py: the embedded Qdrant Edge store, for real, in temporary directories.

What the contract suite (tests/contract) does not cover: which sink ``open_sink``
builds, durability across kill -9, one sync per call, the lock, a store of the
old embedded mode, the payload layout shared with the server sink, BM25 and
hybrid search with the real model, index builds.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from actors.changes import point_id, text_hash
from actors.sinks.base import FieldFilter, PointError, SinkError, VectorPoint, open_sink
from actors.sinks.qdrant import EdgeSink, QdrantSink, QdrantSinkConfig
from actors.sinks.qdrant import edge as edge_module

# qdrant-client's version check of a URL where nothing answers (on purpose) warns from its own thread
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")

REPO = Path(__file__).resolve().parents[2]
DIM = 8
TABLE = "public.docs"


def _vector(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _point(i: int, text: str | None = None, payload: dict[str, Any] | None = None, table: str = TABLE,
           vector: np.ndarray | None = None, generation: int = 0) -> VectorPoint:
    text = f"row {i}" if text is None else text
    return VectorPoint(point_id(table, [i]), table, [i], _vector(i) if vector is None else vector, text,
                       text_hash(text), {"i": i} if payload is None else payload, generation)


def _config(path: Path | str, **kw: Any) -> QdrantSinkConfig:
    return QdrantSinkConfig(path=str(path), collection="unit", **kw)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[EdgeSink]:
    s = EdgeSink(_config(tmp_path / "q"))
    s.ensure_ready(DIM)
    try:
        yield s
    finally:
        s.close()


# -- which sink -----------------------------------------------------------------------------------


def test_open_sink_builds_edge_for_an_empty_url_and_the_client_sink_for_a_url(tmp_path: Path) -> None:
    embedded = open_sink(_config(tmp_path / "q"))
    memory = open_sink(_config(":memory:"))
    try:
        assert type(embedded) is EdgeSink and type(memory) is EdgeSink
        assert embedded.shared is False and memory.shared is False
    finally:
        embedded.close()
        memory.close()
    # a server URL goes to qdrant-client (nothing listens here: its one-line connection error says so)
    with pytest.raises(SinkError, match="cannot open Qdrant at http://127.0.0.1:9"):
        open_sink(QdrantSinkConfig(url="http://127.0.0.1:9", collection="unit"))


def test_memory_store_is_edge_in_a_temporary_directory_without_wal_removed_on_close() -> None:
    s = EdgeSink(_config(":memory:"))
    s.ensure_ready(DIM)
    s.upsert([_point(i) for i in range(5)])
    assert s.count() == 5 and s.sync_stats()["syncs"] == 0  # never synced: not durable, by design
    root = s.root
    assert root.is_dir() and not (s.points.path / "wal").exists()
    s.close()
    assert not root.exists()


# -- layout -----------------------------------------------------------------------------------------


def test_same_point_ids_and_payload_layout_as_the_server_sink(sink: EdgeSink) -> None:
    server = QdrantSink(_config(":memory:"))  # qdrant-client's local mode: what a server stores
    server.ensure_ready(DIM)
    try:
        batch = [_point(1, payload={"title": "Dünë", "n": None}, generation=4),
                 _point(2, payload={"big": 12345678901234567890123}),  # past 64 bits: the exact text too
                 _point(3, table="public.notes")]
        sink.upsert(batch)
        server.upsert(batch)
        edge_records = {str(r.id): r.payload for r in sink.points.shard.retrieve([p.id for p in batch], True, False)}
        server_records = {str(r.id): r.payload for r in server.client.retrieve("unit", ids=[p.id for p in batch])}
        assert edge_records.keys() == server_records.keys() == {p.id for p in batch}
        for pid, stored in edge_records.items():
            assert stored.keys() == server_records[pid].keys()
            for key, value in stored.items():
                if key == "payload" and pid == batch[1].id:
                    # Edge keeps a number past 64 bits as a double (so filters still see it); "exact" has it all
                    assert value == {"big": float(12345678901234567890123)} and type(value["big"]) is float
                else:
                    assert value == server_records[pid][key], (pid, key)
        assert set(edge_records[batch[0].id]) == {"table", "key", "text", "text_hash", "payload", "generation"}
        assert "exact" in edge_records[batch[1].id]  # only where a value needs it
        assert sink.get_points([batch[1].id])[batch[1].id].payload == {"big": 12345678901234567890123}
        # state documents: the same ids and documents, in a shard of their own, never points
        sink.set_state("slot/unit", {"position": 2**63 + 5})
        server.set_state("slot/unit", {"position": 2**63 + 5})
        assert sink.get_state("slot/unit") == server.get_state("slot/unit") == {"position": 2**63 + 5}
        assert sink.count() == 3 and (sink.state.path / "edge_config.json").is_file()
    finally:
        server.close()


def test_ensure_ready_indexes_table_and_generation_and_payload_indexes_quote_field_names(sink: EdgeSink) -> None:
    schema = {key: info.data_type for key, info in sink.points.shard.info().payload_schema.items()}
    assert schema == {"table": edge_module.qe.PayloadSchemaType.Keyword,
                      "generation": edge_module.qe.PayloadSchemaType.Integer}
    sink.ensure_payload_indexes({"a.b": "keyword", "year": "integer"})
    sink.ensure_payload_indexes({"a.b": "keyword", "year": "float"})  # another kind replaces the index
    schema = {key: info.data_type for key, info in sink.points.shard.info().payload_schema.items()}
    assert schema['payload."a.b"'] == edge_module.qe.PayloadSchemaType.Keyword
    assert schema['payload.year'] == edge_module.qe.PayloadSchemaType.Float
    with pytest.raises(ValueError, match="double quote"):
        sink.ensure_payload_indexes({'a"b': "keyword"})
    with pytest.raises(ValueError, match="unknown kind 'fulltext'"):
        sink.ensure_payload_indexes({"color": "fulltext"})


def test_another_dimension_is_refused_naming_both(tmp_path: Path) -> None:
    s = EdgeSink(_config(tmp_path / "q"))
    s.ensure_ready(DIM)
    s.upsert([_point(1)])
    s.close()
    again = EdgeSink(_config(tmp_path / "q"))
    try:
        with pytest.raises(SinkError) as info:
            again.ensure_ready(16)
        message = str(info.value)
        assert "holds 8-dimensional vectors but the model produces 16" in message and "\n" not in message
        again.ensure_ready(DIM)  # still usable with the right one
        assert again.count() == 1
    finally:
        again.close()


def test_a_vector_of_the_wrong_shape_or_with_nan_is_a_point_error_and_nothing_is_written(sink: EdgeSink) -> None:
    for bad in (np.ones(DIM + 1, np.float32), np.full(DIM, np.nan, np.float32)):
        with pytest.raises(PointError) as info:
            sink.upsert([_point(1), _point(2, vector=bad)])
        assert info.value.permanent and info.value.point_id == point_id(TABLE, [2]) and "\n" not in str(info.value)
    assert sink.count() == 0


# -- durability -----------------------------------------------------------------------------------------


def test_one_sync_per_call_however_many_requests_it_takes(tmp_path: Path) -> None:
    s = EdgeSink(_config(tmp_path / "q", max_request_bytes=16 << 10))
    s.ensure_ready(DIM)
    try:
        sent: list[str] = []
        send = s._request

        def counted(kind: str, target: str, items: list[Any], **options: Any) -> Any:
            sent.append(kind)
            return send(kind, target, items, **options)

        s._request = counted  # type: ignore[method-assign]
        before = s.sync_stats()["syncs"]
        s.upsert([_point(i, text="t" * 3000) for i in range(30)])  # ~3 KB each: several requests
        assert sent.count("upsert") >= 5
        assert s.sync_stats()["syncs"] == before + 1
        s.delete([point_id(TABLE, [i]) for i in range(10)])
        s.update_payloads([dataclasses.replace(_point(i), vector=None) for i in range(10, 20)])
        s.set_state("slot/unit", {"position": 1})
        assert s.sync_stats()["syncs"] == before + 4
        s.search(_vector(1), 5)
        s.get_points([point_id(TABLE, [11])])
        assert s.sync_stats()["syncs"] == before + 4  # reads never sync
    finally:
        s.close()


def test_grouped_calls_share_one_sync_per_shard_at_the_end(sink: EdgeSink) -> None:
    before = sink.sync_stats()["syncs"]
    with sink.grouped():
        sink.upsert([_point(i) for i in range(10)])
        sink.delete([point_id(TABLE, [0])])
        sink.update_payloads([dataclasses.replace(_point(1), vector=None, text="x")])
        sink.set_state("slot/unit", {"position": 3})
        assert sink.sync_stats()["syncs"] == before  # nothing synced inside the block
        assert sink.points.dirty and sink.state.dirty
    assert sink.sync_stats()["syncs"] == before + 2  # points, then state
    assert not sink.points.dirty and not sink.state.dirty
    assert sink.count() == 9 and sink.get_state("slot/unit") == {"position": 3}
    with pytest.raises(RuntimeError):
        with sink.grouped():
            sink.upsert([_point(20)])
            raise RuntimeError("the batch failed")
    assert sink.points.dirty  # left to the next sync: nothing of a failed block was acknowledged
    sink.upsert([_point(21)])
    assert not sink.points.dirty


def _dirty_kib(directory: Path) -> dict[str, int]:
    """Dirty KiB of this process's mappings of the files under ``directory`` (/proc/self/smaps)."""
    import re

    dirty: dict[str, int] = {}
    current = None
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = line.split()[-1] if str(directory) in line else None
            elif current and line.startswith(("Shared_Dirty:", "Private_Dirty:")):
                dirty[current] = dirty.get(current, 0) + int(line.split()[1])
    return dirty


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_a_write_call_returns_with_its_wal_written_back(sink: EdgeSink) -> None:
    """Edge appends to a memory-mapped WAL: dirty pages a power loss would take.  Each call's sync
    writes them back before it returns (without it about a megabyte per 500 points stays dirty)."""
    wal = sink.points.path / "wal"
    for call in (lambda: sink.upsert([_point(i, text="t" * 500) for i in range(500)]),
                 lambda: sink.delete([point_id(TABLE, [i]) for i in range(100)]),
                 lambda: sink.update_payloads([dataclasses.replace(_point(i), vector=None) for i in range(200, 300)])):
        call()
        dirty = _dirty_kib(wal)
        assert dirty and all(kib == 0 for kib in dirty.values()), dirty
    sink.set_state("slot/unit", {"position": 7})
    assert all(kib == 0 for kib in _dirty_kib(sink.state.path / "wal").values())


def test_a_segment_edge_is_still_preparing_does_not_break_the_sync(sink: EdgeSink) -> None:
    """Edge's WAL creates its next segments as ``tmp-*`` files in a thread and renames them: the sync
    skips them (one vanished between listing and fsync once, in the benchmark)."""
    sink.upsert([_point(1)])
    stray = sink.points.path / "wal" / "tmp-open-999"
    stray.symlink_to(sink.points.path / "gone")  # listed, but opening it fails as for a renamed file
    try:
        sink.upsert([_point(2)])
    finally:
        stray.unlink()
    assert sink.count() == 2


def test_a_checkpoint_flushes_the_shard_and_lets_the_wal_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = EdgeSink(_config(tmp_path / "q"))
    s.ensure_ready(DIM)
    try:
        monkeypatch.setattr(edge_module, "CHECKPOINT_S", 0.0)  # every sync is a checkpoint
        s.upsert([_point(i) for i in range(20)])
        stats = s.sync_stats()
        assert stats["checkpoints"] >= 1 and stats["syncs"] >= 1
        assert (s.points.path / "wal" / "first-index").is_file()  # the WAL knows what the segments hold
        monkeypatch.setattr(edge_module, "CHECKPOINT_S", 3600.0)
        s.upsert([_point(i) for i in range(20, 25)])
        assert s.sync_stats()["checkpoints"] == stats["checkpoints"]  # a plain WAL sync
    finally:
        s.close()


_CHILD = textwrap.dedent("""
    import sys, dataclasses
    import numpy as np
    from actors.changes import point_id, text_hash
    from actors.sinks.base import VectorPoint
    from actors.sinks.qdrant import EdgeSink, QdrantSinkConfig

    def point(i, text=None):
        v = np.random.default_rng(i).normal(size=8).astype(np.float32)
        text = text or f"row {i}"
        return VectorPoint(point_id("public.docs", [i]), "public.docs", [i], v / np.linalg.norm(v), text,
                           text_hash(text), {"i": i}, 3)

    sink = EdgeSink(QdrantSinkConfig(path=sys.argv[1], collection="unit"))
    sink.ensure_ready(8)
    print("open", flush=True)
    mode = sys.argv[2]
    if mode == "hold":
        sys.stdin.read()
    n = 0
    while True:  # until killed: every line is printed right after the call returned
        batch = [point(i) for i in range(n, n + 50)]
        sink.upsert(batch)
        sink.delete([batch[0].id])
        sink.update_payloads([dataclasses.replace(batch[1], vector=None, text="changed", text_hash=text_hash("changed"))])
        sink.set_state("slot/unit", {"position": n + 50})
        print("written", n + 50, flush=True)
        n += 50
""")


class _Child:
    """A child process running :data:`_CHILD` on ``path``; lines read with a deadline."""

    def __init__(self, path: Path, mode: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), mode], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the child ended: {self.proc.stderr.read() if self.proc.stderr else ''}")
            self.lines.append(line.strip())
            if predicate(line.strip()):
                return line.strip()
        raise AssertionError(f"no such line from the child within {timeout} s: {self.lines[-3:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def test_every_call_that_returned_survives_kill_9(tmp_path: Path) -> None:
    """A child writes batch after batch (upsert, delete, payload update, state) and is SIGKILLed right
    after a call returned, while writing the next batch: reopening finds everything it reported."""
    path = tmp_path / "q"
    child = _Child(path, "write")
    try:
        line = child.wait_for(lambda s: s.startswith("written") and int(s.split()[1]) >= 500)
    finally:
        child.kill()  # at once: the next batch is being written
    assert child.proc.returncode == -signal.SIGKILL
    written = int(line.split()[1])

    s = EdgeSink(_config(path))
    s.ensure_ready(DIM)
    try:
        stored = {p.id: p for p in s.iter_points()}
        for n in range(0, written, 50):
            first, second = point_id(TABLE, [n]), point_id(TABLE, [n + 1])
            assert first not in stored  # its delete survived
            assert stored[second].text == "changed"  # its payload update survived
            for i in range(n + 2, n + 50):
                assert stored[point_id(TABLE, [i])].generation == 3
        assert s.get_state("slot/unit")["position"] >= written
        # BM25 follows the text that was written: exactly the updated points hold "changed"
        hits = s.search(None, written // 50 + 5, text="changed", mode="keyword")
        assert all(h.key[0] % 50 == 1 for h in hits)
        assert {h.key[0] for h in hits} >= {n + 1 for n in range(0, written, 50)}
    finally:
        s.close()


def test_without_the_wal_a_killed_writer_loses_what_it_did_not_flush(tmp_path: Path) -> None:
    """The premise of the durability design: what brings writes back after kill -9 is Edge's WAL
    replay (the segments are only persisted by flush); with ``wal_enabled=False`` they are gone."""
    script = textwrap.dedent("""
        import sys, uuid
        import qdrant_edge as qe
        shard = qe.EdgeShard.create(sys.argv[1], qe.EdgeConfig(
            vectors={"": qe.EdgeVectorParams(size=2, distance=qe.Distance.Cosine)}, wal_enabled=sys.argv[2] == "wal"))
        shard.update(qe.UpdateOperation.upsert_points([qe.Point(str(uuid.uuid4()), [1.0, 0.5], {}) for _ in range(40)]))
        print("written", flush=True)
        sys.stdin.read()
    """)
    counts = {}
    for mode in ("wal", "nowal"):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / mode), mode], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready and proc.stdout.readline().strip() == "written"
        finally:
            proc.kill()
            proc.wait(timeout=30)
            proc.stdin.close()
            proc.stdout.close()
        shard = edge_module.qe.EdgeShard.load(str(tmp_path / mode))
        counts[mode] = shard.count(edge_module.qe.CountRequest(exact=True))
        shard.close()
    assert counts == {"wal": 40, "nowal": 0}


# -- one process per directory, and the old embedded mode ------------------------------------------------


def test_a_second_open_is_refused_in_one_line_here_and_in_another_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "q"
    monkeypatch.setattr(edge_module, "LOCK_WAIT_S", 0.5)  # another process's lock is waited for this long
    first = EdgeSink(_config(path))
    try:
        with pytest.raises(SinkError) as info:
            EdgeSink(_config(path))
        assert "already open in this process" in str(info.value) and "\n" not in str(info.value)
    finally:
        first.close()

    child = _Child(path, "hold")
    try:
        child.wait_for(lambda s: s == "open")
        with pytest.raises(SinkError) as info:
            EdgeSink(_config(path))
        message = str(info.value)
        assert f"is open in another process (pid {child.proc.pid})" in message and str(path) in message
        assert "\n" not in message
    finally:
        child.kill()
    again = EdgeSink(_config(path))  # the lock went with the process
    again.close()


def test_lock_holder_names_the_process_holding_the_store_and_takes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "q"
    assert edge_module.lock_holder(path, "unit") is None  # no store yet
    child = _Child(path, "hold")
    try:
        child.wait_for(lambda s: s == "open")
        assert edge_module.lock_holder(path, "unit") == child.proc.pid
        assert edge_module.lock_holder(path, "other") is None
    finally:
        child.kill()
    assert edge_module.lock_holder(path, "unit") is None  # released with the process; the probe left it free
    s = EdgeSink(_config(path))
    try:
        assert edge_module.lock_holder(path, "unit") == os.getpid()
    finally:
        s.close()
    assert edge_module.lock_holder(path, "unit") is None


def test_a_store_held_by_a_process_that_is_exiting_is_waited_for(tmp_path: Path) -> None:
    """A restart after a crash: the old writer still holds the store for a moment, then exits."""
    path = tmp_path / "q"
    child = _Child(path, "hold")
    child.wait_for(lambda s: s == "open")
    killer = threading.Timer(1.0, child.kill)
    killer.start()
    started = time.monotonic()
    try:
        s = EdgeSink(_config(path))  # waits for the lock instead of refusing at once
    finally:
        killer.join()
    try:
        assert 0.9 <= time.monotonic() - started < edge_module.LOCK_WAIT_S
    finally:
        s.close()


def test_a_store_of_the_old_embedded_mode_is_refused_and_left_alone(tmp_path: Path) -> None:
    from qdrant_client import QdrantClient, models

    path = tmp_path / "qdrant"
    client = QdrantClient(path=str(path))
    client.create_collection("unit", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    client.upsert("unit", points=[models.PointStruct(id=1, vector=[1.0] * DIM, payload={})])
    client.close()
    before = sorted((p.relative_to(path), p.stat().st_size) for p in path.rglob("*"))
    for collection in ("unit", "another"):
        with pytest.raises(SinkError) as info:
            EdgeSink(QdrantSinkConfig(path=str(path), collection=collection))
        message = str(info.value)
        assert "old embedded mode" in message and "collection/unit/storage.sqlite" in message
        assert "delete that directory" in message and "sink.path" in message and "\n" not in message
    assert sorted((p.relative_to(path), p.stat().st_size) for p in path.rglob("*")) == before  # untouched


# -- search ------------------------------------------------------------------------------------------------


def test_boolean_filters_match_true_and_false(sink: EdgeSink) -> None:
    """qdrant-edge-py reads a Python bool as 0/1 in MatchValue: the sink passes numpy's bool."""
    sink.upsert([_point(i, payload={"flag": i % 2 == 0}) for i in range(6)])
    assert sorted(h.key[0] for h in sink.search(_vector(1), 10, filters=[FieldFilter("flag", equals=True)])) == [0, 2, 4]
    assert sorted(h.key[0] for h in sink.search(_vector(1), 10, filters=[FieldFilter("flag", any_of=(False,))])) == \
        [1, 3, 5]


def test_a_payload_update_moves_bm25_to_the_new_text(sink: EdgeSink) -> None:
    sink.upsert([_point(1, text="the zyzzyva beetle"), _point(2, text="an ordinary row")])
    assert [h.key for h in sink.search(None, 5, text="zyzzyva", mode="keyword")] == [[1]]
    sink.update_payloads([dataclasses.replace(_point(1, text="a quokka smiles"), vector=None)])
    assert sink.search(None, 5, text="zyzzyva", mode="keyword") == []
    assert [h.key for h in sink.search(None, 5, text="quokka", mode="keyword")] == [[1]]
    # the dense vector stayed
    (stored,) = [p for p in sink.iter_points(with_vectors=True) if p.key == [1]]
    np.testing.assert_allclose(stored.vector, _vector(1), atol=1e-6)


@pytest.fixture(scope="module")
def embedder() -> Any:
    from actors.embedder import Embedder

    return Embedder(model="default", device="cpu", threads=2, dtype="float32")


def test_keyword_search_finds_part_numbers_the_dense_model_misses(embedder: Any, tmp_path: Path) -> None:
    """30 near-identical rows that differ in a six-digit part number: the model (all-MiniLM-L6-v2)
    does not put every row first for its own number; BM25 does, and hybrid keeps it near the top."""
    import random

    rng = random.Random(7)
    numbers = [str(rng.randrange(10**5, 10**6)) for _ in range(30)]
    texts = [f"Minutes of the facilities meeting: budget, parking permits and the cafeteria menu; part {n}."
             for n in numbers]
    vectors = embedder.embed(texts)
    queries = embedder.embed(numbers)
    s = EdgeSink(_config(tmp_path / "q"))
    s.ensure_ready(vectors.shape[1])
    try:
        s.upsert([_point(i, text=t, vector=vectors[i]) for i, t in enumerate(texts)])
        dense_first = [s.search(queries[i], 1)[0].key == [i] for i in range(30)]
        keyword_first = [s.search(None, 1, text=n, mode="keyword")[0].key == [i] for i, n in enumerate(numbers)]
        hybrid_top3 = [[i] in [h.key for h in s.search(queries[i], 3, text=n, mode="hybrid")]
                       for i, n in enumerate(numbers)]
        assert not all(dense_first), "precondition: the dense model should miss some part numbers"
        assert all(keyword_first)
        assert all(hybrid_top3)
    finally:
        s.close()


def test_an_index_build_runs_after_enough_upserts_and_search_stays_exact(
        sink: EdgeSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_module, "INDEX_AFTER_POINTS", 100)
    batch = [_point(i) for i in range(150)]
    sink.upsert(batch[:60])
    assert sink.optimizes == 0
    sink.upsert(batch[60:])
    assert sink.optimizes == 1 and sink._unindexed == 0
    q = _vector(999)
    stored = np.stack([p.vector for p in batch])
    want = [batch[i].key for i in np.argsort(-(stored @ q))[:10]]
    assert [h.key for h in sink.search(q, 10)] == want


def test_a_closed_sink_says_so(tmp_path: Path) -> None:
    s = EdgeSink(_config(tmp_path / "q"))
    s.ensure_ready(DIM)
    s.close()
    s.close()  # again: harmless
    with pytest.raises(SinkError, match="was closed"):
        s.count()
    with pytest.raises(SinkError, match="was closed"):
        s.upsert([_point(1)])


def test_the_segment_cap_is_set_on_a_new_store_and_on_one_made_before_it(tmp_path: Path) -> None:
    # without the cap every index build merged the newest points into one large segment and rebuilt
    # its whole graph, so builds cost more as the store grew (benchmarks/bench_writer.py --large:
    # 300,000 points 248 -> 147 s); Edge honours it only at scale (segments past its indexing threshold)
    import json

    s = EdgeSink(_config(tmp_path / "q"))
    s.ensure_ready(DIM)
    s.upsert([_point(i) for i in range(10)])
    s.close()
    config_file = tmp_path / "q" / "edge" / "unit" / "points" / "edge_config.json"
    stored = json.loads(config_file.read_text())
    assert stored["optimizers"]["max_segment_size"] == edge_module.optimizers(DIM).max_segment_size
    stored["optimizers"]["max_segment_size"] = None  # what a store of the earlier version holds
    config_file.write_text(json.dumps(stored))
    s = EdgeSink(_config(tmp_path / "q"))
    s.ensure_ready(DIM)
    try:
        assert s.count() == 10
        kb = json.loads(config_file.read_text())["optimizers"]["max_segment_size"]
        assert kb == edge_module.optimizers(DIM).max_segment_size == edge_module.MAX_SEGMENT_POINTS * DIM * 4 // 1024
    finally:
        s.close()
