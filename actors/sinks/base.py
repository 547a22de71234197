"""The sink interface every vector store implements.

The writer only ever calls these methods, so Qdrant and MySQL are
interchangeable.  Contract for implementers:

* ``upsert``/``delete`` return only once the write is durable: the pipeline
  acknowledges the replication slot right after they return.
* Both are idempotent: point ids are deterministic (``actors.changes.point_id``),
  so a replayed change overwrites, never duplicates.
* ``search`` returns cosine similarity as ``score``, highest first.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from cluster.config import SinkConfig


@dataclass(slots=True)
class VectorPoint:
    """A row's vector plus what is stored beside it."""

    id: str
    table: str
    key: list[Any]
    vector: np.ndarray | None  # None only for payload-only updates
    text: str
    text_hash: str
    payload: dict[str, Any]


@dataclass(slots=True)
class StoredPoint:
    """A point read back from a sink (vector omitted unless asked for)."""

    id: str
    table: str
    key: list[Any]
    text: str
    text_hash: str
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(slots=True)
class SearchHit:
    table: str
    key: list[Any]
    score: float
    payload: dict[str, Any]


class SinkError(RuntimeError):
    """A sink problem the user must fix (message is one actionable line)."""


class VectorSink(abc.ABC):
    """Where vectors live.  See the module docstring for the contract."""

    #: True when several processes may open the store at once (a server URL,
    #: a SQL database); False for single-process stores such as embedded Qdrant,
    #: whose owner must also answer searches.
    shared: bool = True

    @abc.abstractmethod
    def ensure_ready(self, dimension: int) -> None:
        """Create the collection/table if missing; raise SinkError on a dimension mismatch."""

    @abc.abstractmethod
    def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Insert or overwrite points; durable on return."""

    @abc.abstractmethod
    def delete(self, point_ids: Sequence[str]) -> None:
        """Delete points by id; missing ids are ignored; durable on return."""

    @abc.abstractmethod
    def search(self, vector: np.ndarray, k: int) -> list[SearchHit]:
        """The ``k`` nearest points by cosine similarity, best first."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of stored row points (state records excluded)."""

    @abc.abstractmethod
    def iter_points(self, table: str | None = None, with_vectors: bool = False) -> Iterator[StoredPoint]:
        """Every stored point (of one table if given), in no particular order."""

    @abc.abstractmethod
    def text_hashes(self, point_ids: Sequence[str]) -> dict[str, str]:
        """Stored content hash for each of ``point_ids`` that exists."""

    @abc.abstractmethod
    def update_payloads(self, points: Sequence[VectorPoint]) -> None:
        """Overwrite payload/text of existing points, keeping their vectors (text unchanged)."""

    @abc.abstractmethod
    def get_state(self, name: str) -> dict[str, Any] | None:
        """Small JSON document kept beside the vectors (pipeline bookkeeping)."""

    @abc.abstractmethod
    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        """Store (or with None, remove) a state document; durable on return."""

    def close(self) -> None:
        """Release connections and files."""


def open_sink(config: "SinkConfig") -> VectorSink:
    """Build the sink named by ``config.kind``."""
    if config.kind == "qdrant":
        from actors.sinks.qdrant import QdrantSink

        return QdrantSink(config)
    if config.kind == "mysql":
        from actors.sinks.mysql import MySQLSink

        return MySQLSink(config)
    raise SinkError(f"unknown sink kind {config.kind!r} (sink.kind): use 'qdrant' or 'mysql'")
