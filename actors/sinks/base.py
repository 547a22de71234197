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
* ``search`` returns cosine similarity as ``score``, highest first.  Its
  ``table``, ``filters`` and ``score_threshold`` are applied inside the store
  (a Qdrant filter, a SQL ``WHERE``), never by fetching more and dropping: a
  filtered search returns every match up to ``k``.  ``filters`` are
  :class:`FieldFilter` conditions on fields of the row payload, all of which
  must hold.  ``mode`` ``"hybrid"`` (BM25 over the stored text fused with the
  dense result by reciprocal rank fusion) and ``"keyword"`` (BM25 alone) take
  ``text``; a sink that cannot run a mode raises :class:`UnsupportedSearch`.
* ``ensure_payload_indexes`` declares the payload fields searches filter on
  (a store that needs no index for that may ignore it).
* State documents (``get_state``/``set_state``) live beside the points but are
  never counted, iterated or returned by ``search``.
* ``points_page`` pages through the points in id order with an opaque cursor
  (``iter_points`` is built on it); ``get_points`` reads points by id.  No sink
  method holds every stored id or row in memory: reads page, bulk deletes
  (``delete_table``, ``delete_table_except_generation``) run in bounded chunks
  on the store's side.
* No single request to the store exceeds its size limit (Qdrant:
  ``sink.max_request_bytes``; MySQL: the server's ``max_allowed_packet``): a
  call is split into as many requests as it takes.  A single point that cannot
  fit, or that a column cannot hold, raises :class:`PointTooLarge` before
  anything of that call is written; it is *permanent* for that change
  (retrying cannot help), unlike a :class:`SinkError`.
* Every point carries a ``generation`` (an int, 0 by default) that upserts and
  payload updates store with it: a backfill stamps the points it writes with
  a new generation, and ``delete_table_except_generation`` then removes the
  points of a table that backfill did not write (rows deleted at the source
  while nothing was replicating), without listing ids anywhere.
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
    #: written with the point (see the module docstring): the backfill that wrote it, 0 = none
    generation: int = 0


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
    #: the ``generation`` it was last written with (0: none, or written before generations existed)
    generation: int = 0


@dataclass(slots=True)
class SearchHit:
    table: str
    key: list[Any]
    score: float
    payload: dict[str, Any]


#: search modes (see the module docstring)
SEARCH_MODES = ("dense", "hybrid", "keyword")
#: kinds of payload index ``ensure_payload_indexes`` takes
PAYLOAD_INDEX_KINDS = ("keyword", "integer", "float", "bool")

Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class FieldFilter:
    """One condition on a field of the row payload (``SearchHit.payload``).

    Exactly one of ``equals`` (the value), ``any_of`` (one of these values) or
    ``range`` (``(("gte", 1950), ("lt", 2000))``: bounds named ``gt``, ``gte``,
    ``lt``, ``lte``, numbers) is set.  A search's filters all hold (AND).  A
    point whose payload lacks the field, or holds null there, never matches.
    """

    field: str
    equals: Scalar | None = None
    any_of: tuple[Scalar, ...] | None = None
    range: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        set_ = [x is not None for x in (self.equals, self.any_of, self.range)]
        if sum(set_) != 1:
            raise ValueError(f"filter on {self.field!r}: give exactly one of a value, 'in' or a range")
        if self.range is not None:
            if not self.range:
                raise ValueError(f"filter on {self.field!r}: an empty range")
            for op, bound in self.range:
                if op not in ("gt", "gte", "lt", "lte"):
                    raise ValueError(f"filter on {self.field!r}: unknown bound {op!r} (use gt, gte, lt, lte)")
                if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                    raise ValueError(f"filter on {self.field!r}: bound {op} must be a number, not {bound!r}")

    @property
    def bounds(self) -> dict[str, float]:
        """``range`` as a dict (empty for the other kinds)."""
        return dict(self.range or ())


class UnsupportedSearch(ValueError):
    """A search this sink cannot run (a mode it lacks); the message says which and what works."""


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


class PointError(ValueError):
    """A write that can never succeed for one point, whatever is retried: a *poison* change.

    ``permanent`` is True (a :class:`SinkError` is not: the store may come
    back), ``point_id`` names the point.  Nothing of the call that raised it was
    written, so the writer can set that change aside (dead-letter it) and
    apply the rest of its batch.
    """

    permanent = True

    def __init__(self, point_id: str, message: str) -> None:
        self.point_id = point_id
        super().__init__(message)


class PointTooLarge(PointError):
    """One point does not fit in one request to the store, or a column cannot hold it.

    ``size`` and ``limit`` are in bytes; ``key`` is the setting that sets the
    limit (``sink.max_request_bytes``, ``max_allowed_packet``, or the column,
    e.g. ``text (MEDIUMTEXT)``).  The message is one line naming both.
    """

    def __init__(self, point_id: str, table: str, size: int, limit: int, key: str, fix: str) -> None:
        self.table = table
        self.size = int(size)
        self.limit = int(limit)
        self.key = key
        super().__init__(
            point_id,
            f"point {point_id} of {table} is {self.size:,} bytes, over the limit of {self.limit:,} bytes set by "
            f"{key}: {fix}",
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
    def delete_table(self, table: str) -> int:
        """Delete every point of source ``table`` (what a TRUNCATE leaves); returns how many.

        Runs on the store's side in bounded chunks (no id is listed in this
        process, no single transaction or request grows with the table).  Not
        atomic: an interrupted call leaves fewer points, and calling it again
        finishes the job (idempotent); durable on return.  Other tables and
        state documents are untouched.
        """

    @abc.abstractmethod
    def delete_table_except_generation(self, table: str, generation: int) -> int:
        """Delete the points of ``table`` whose ``generation`` is not ``generation``; returns how many.

        What a completed backfill calls: it wrote every row it found with
        ``generation``, so any other point of the table (an older generation,
        or 0: written by the stream or before generations existed) belongs to a
        row deleted meanwhile.  ``generation`` must be >= 1.  Bounded chunks,
        idempotent and durable on return, like :meth:`delete_table`.
        """

    @abc.abstractmethod
    def search(self, vector: np.ndarray | None, k: int, *, table: str | None = None,
               filters: Sequence[FieldFilter] = (), score_threshold: float | None = None,
               text: str = "", mode: str = "dense") -> list[SearchHit]:
        """The ``k`` best points, best first (see the module docstring).

        ``dense``: the nearest to ``vector`` by cosine similarity.  ``table``
        keeps one source table's points; ``filters`` all hold; hits scoring
        under ``score_threshold`` are left out (dense scores only).  ``hybrid``
        needs ``vector`` and ``text``, ``keyword`` only ``text``; a sink without
        that mode raises :class:`UnsupportedSearch`.
        """

    def ensure_payload_indexes(self, fields: dict[str, str]) -> None:
        """Index payload fields searches filter on: field -> one of :data:`PAYLOAD_INDEX_KINDS`.

        Idempotent; called after ``ensure_ready``.  Default: nothing to do
        (the store filters without an index)."""

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
        """Overwrite table/key/text/text_hash/payload/generation of existing points, keeping their vectors.

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

    @abc.abstractmethod
    def list_states(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every state document whose name starts with ``prefix``, by name (dead letters: a
        few thousand at most, see ``actors/deadletter.py``)."""

    def bound_retries(self, seconds: float) -> None:
        """Give up retrying a transient failure inside one call after about ``seconds``: for a
        caller that retries (and reports the outage) itself, as the writer does.  Default: a
        sink that does not retry inside its calls has nothing to bound."""

    def ping(self) -> None:
        """Raise when the store cannot be reached; a cheap read (health checks call it)."""
        self.get_state(PING_STATE)

    def close(self) -> None:
        """Release connections and files."""


def check_generation(generation: int) -> int:
    """``generation`` as an int, or ValueError unless it is 1 .. 2**63 - 1 (0 means "none")."""
    if isinstance(generation, bool) or not isinstance(generation, (int, np.integer)) or not 1 <= generation < 2**63:
        raise ValueError(f"generation must be an integer from 1 to 2**63 - 1, not {generation!r}")
    return int(generation)


def open_sink(config: Any) -> VectorSink:
    """Build the sink named by ``config.kind`` from its own settings model
    (``QdrantSinkConfig``, ``MySQLSinkConfig``; ``cluster.config.SinkConfig`` is their union)."""
    if config.kind == "qdrant":
        if not config.url:
            # embedded: Qdrant Edge at sink.path (":memory:": a temporary, non-durable one)
            from actors.sinks.qdrant import EdgeSink

            return EdgeSink(config)
        from actors.sinks.qdrant import QdrantSink

        return QdrantSink(config)
    if config.kind == "mysql":
        from actors.sinks.mysql import MySQLSink

        return MySQLSink(config)
    raise SinkError(f"unknown sink kind {config.kind!r} (sink.kind): use 'qdrant' or 'mysql'")
