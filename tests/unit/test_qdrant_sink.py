"""actors/sinks/qdrant.py: embedded store durability settings survive a reopen."""

import numpy as np

from actors.changes import point_id
from actors.sinks.base import VectorPoint
from actors.sinks.qdrant import QdrantSink
from cluster.config import SinkConfig


def _point(i: int) -> VectorPoint:
    v = np.random.default_rng(i).normal(size=4).astype(np.float32)
    return VectorPoint(point_id("public.t", (i,)), "public.t", [i], v / np.linalg.norm(v), f"text {i}", "h", {"i": i})


def test_embedded_store_uses_wal_with_full_sync_and_reopens(tmp_path):
    config = SinkConfig(path=str(tmp_path / "q"), collection="unit")
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
