"""Points, read-backs and comparisons shared by the contract cases."""

from __future__ import annotations

from typing import Any

import numpy as np

from actors.changes import point_id, text_hash
from actors.sinks.base import VectorPoint, VectorSink

#: small vectors keep every case fast; the contract does not depend on the size
DIM = 8
#: the request size limit of a "limited" store (conftest.Store.open(limited=True)): Qdrant's
#: sink.max_request_bytes, MySQL's max_allowed_packet on a server of its own
LIMIT = 64 << 10
DOCS = "public.docs"
NOTES = "public.notes"

#: id -> ((table, key, text, text_hash, payload, generation), vector)
Snapshot = dict[str, tuple[tuple[Any, ...], np.ndarray]]


def unit(seed: int) -> np.ndarray:
    """A random unit float32 vector (what the embedder writes)."""
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def point(table: str, key: Any, text: str | None = None, payload: dict[str, Any] | None = None,
          vector: np.ndarray | None = None, generation: int = 0) -> VectorPoint:
    """A point as the writer builds it: deterministic id, hash of the text; by default a
    unit vector seeded by the id, so the same point always gets the same vector."""
    key = list(key) if isinstance(key, (list, tuple)) else [key]
    pid = point_id(table, key)
    text = f"text of {table} {key}" if text is None else text
    vector = unit(int(pid[:8], 16)) if vector is None else vector
    return VectorPoint(pid, table, key, vector, text, text_hash(text), {"k": key} if payload is None else payload,
                       generation)


def points(table: str, keys: range) -> list[VectorPoint]:
    return [point(table, k) for k in keys]


def snapshot(sink: VectorSink, table: str | None = None) -> Snapshot:
    """Every stored point (of ``table``), vectors included."""
    out: Snapshot = {}
    for p in sink.iter_points(table, with_vectors=True):
        assert p.vector is not None and p.vector.dtype == np.float32 and p.vector.shape == (DIM,), p
        out[p.id] = ((p.table, p.key, p.text, p.text_hash, p.payload, p.generation), p.vector)
    return out


def written(pts: list[VectorPoint]) -> Snapshot:
    """What :func:`snapshot` should return once exactly ``pts`` are stored."""
    return {p.id: ((p.table, p.key, p.text, p.text_hash, p.payload, p.generation), np.asarray(p.vector, np.float32))
            for p in pts}


def assert_same(got: Snapshot, want: Snapshot) -> None:
    """Same ids, equal fields, float32 vectors equal within 1e-6."""
    assert sorted(got) == sorted(want)
    for pid, (fields, vector) in want.items():
        assert got[pid][0] == fields, pid
        np.testing.assert_allclose(got[pid][1], vector, rtol=0, atol=1e-6, err_msg=pid)
