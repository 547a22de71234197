"""The sink interface every vector store implements.

The writer only ever calls these methods, so Qdrant and MySQL are
interchangeable.  Contract for implementers:

* ``upsert``/``delete`` return only once the write is durable: the pipeline
  acknowledges the replication slot right after they return.
* Both are idempotent: point ids are deterministic (``actors.changes.point_id``),
  so a replayed change overwrites, never duplicates.  Deleting ids that are
  not stored is harmless.
* ``update_payloads`` only updates points that exist: if any point of the call
  is not stored it raises :class:`MissingPointError` (a :class:`SinkError`)
  instead of silently dropping the write, and applies none of the call where
  the store allows it (one transaction).  The writer sends a payload-only
  update only for a point it wrote before, so a missing one means the store
  and the pipeline disagree; raising keeps the slot unacknowledged.
* ``search`` returns cosine similarity as ``score``, highest first.
* State documents (``get_state``/``set_state``) live beside the points but are
  never counted, iterated or returned by ``search``.
* ``points_page`` pages through the points in id order with an opaque cursor
  (``iter_points`` is built on it); ``get_points`` reads points by id.
* Vectors read back (``iter_points(with_vectors=True)``) are the stored
  float32 values; a cosine store may keep them normalised to unit length, so
  only the direction of a non-unit vector is guaranteed (the embedder writes
  unit vectors).

``tests/contract/`` runs one set of cases for these rules on every sink.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np


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


#: the state document :meth:`VectorSink.ping` reads (it never exists)
PING_STATE = "embedcluster/ping"


class SinkError(RuntimeError):
    """A sink problem the user must fix (message is one actionable line)."""


class MissingPointError(SinkError):
    """``update_payloads`` named points that are not stored; that write was not applied."""

    def __init__(self, point_ids: Sequence[str]) -> None:
        self.point_ids = list(point_ids)
        more = f" (and {len(self.point_ids) - 1} more)" if len(self.point_ids) > 1 else ""
        super().__init__(
            f"payload update for point {self.point_ids[0]}{more}, which is not stored: the write was not applied "
            "and nothing was acknowledged; the pipeline replays the change from the slot and embeds the row again "
            "(a point removed from the store outside the pipeline causes this)"
        )


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
    def points_page(self, table: str | None, cursor: str | None, limit: int | None = None,
                    with_vectors: bool = False) -> tuple[list[StoredPoint], str | None]:
        """One page of stored points (of one table if given), in id order.

        ``cursor`` is None for the first page, else what the previous page
        returned; the answer is (at most ``limit`` points — None: the sink's own
        page size —, the cursor of the next page or None after the last).  The
        cursor is an opaque string, so a caller in another process can page on;
        points written or deleted meanwhile may or may not be seen, every point
        stored throughout is seen exactly once.
        """

    def iter_points(self, table: str | None = None, with_vectors: bool = False) -> Iterator[StoredPoint]:
        """Every stored point (of one table if given), page by page (memory stays bounded)."""
        cursor: str | None = None
        while True:
            page, cursor = self.points_page(table, cursor, None, with_vectors)
            yield from page
            if cursor is None:
                return

    @abc.abstractmethod
    def get_points(self, point_ids: Sequence[str]) -> dict[str, StoredPoint]:
        """The stored points among ``point_ids`` by id, without vectors; absent ids are left out."""

    @abc.abstractmethod
    def text_hashes(self, point_ids: Sequence[str]) -> dict[str, str]:
        """Stored content hash for each of ``point_ids`` that exists."""

    @abc.abstractmethod
    def update_payloads(self, points: Sequence[VectorPoint]) -> None:
        """Overwrite table/key/text/text_hash/payload of existing points, keeping their vectors.

        ``point.vector`` is ignored (the writer passes None).  Every point must
        exist: otherwise raise :class:`MissingPointError` naming it, having
        applied nothing of this call where the store allows it; durable on return.
        """

    @abc.abstractmethod
    def get_state(self, name: str) -> dict[str, Any] | None:
        """Small JSON document kept beside the vectors (pipeline bookkeeping)."""

    @abc.abstractmethod
    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        """Store (or with None, remove) a state document; durable on return."""

    def ping(self) -> None:
        """Raise when the store cannot be reached; a cheap read (health checks call it)."""
        self.get_state(PING_STATE)

    def close(self) -> None:
        """Release connections and files."""


def open_sink(config: Any) -> VectorSink:
    """Build the sink named by ``config.kind`` from its own settings model
    (``QdrantSinkConfig``, ``MySQLSinkConfig``; ``cluster.config.SinkConfig`` is their union)."""
    if config.kind == "qdrant":
        from actors.sinks.qdrant import QdrantSink

        return QdrantSink(config)
    if config.kind == "mysql":
        from actors.sinks.mysql import MySQLSink

        return MySQLSink(config)
    raise SinkError(f"unknown sink kind {config.kind!r} (sink.kind): use 'qdrant' or 'mysql'")
