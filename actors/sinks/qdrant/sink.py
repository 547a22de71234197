"""Qdrant sink over qdrant-client: a server or cloud (``sink.url``), or qdrant-client's local mode.

``open_sink`` builds this sink for a ``sink.url``; an empty ``url`` gets the
embedded Qdrant Edge store (:mod:`actors.sinks.qdrant.edge`).  qdrant-client's
local modes stay available to whoever builds :class:`QdrantSink` directly:
``path=":memory:"`` is the in-process stand-in for a server in tests (there
is no server binary here), a ``path`` directory the old embedded store.

Against a server every write uses ``wait=True``: applied before the call
returns.  In local mode (a ``path``) every point of a call is committed to
its SQLite file before ``upsert`` (``delete``, ...) returns, and the sink is
not shared (one process).

Request sizes: every request goes through :meth:`QdrantSink._request`, and a
call is split so that no request body exceeds ``sink.max_request_bytes`` (a
server refuses bodies over its ``service.max_request_size_mb``; locally, the
limit bounds the memory of one request).  Sizes are upper bounds of the REST
JSON body computed per point before anything is sent
(:func:`actors.sinks.qdrant.layout.point_bytes`).  In local mode the requests
of one call still form one SQLite transaction; against a server they are
separate requests (writes are idempotent, and nothing is acknowledged before
the call returns).

The payload layout, the filter paths and the filter semantics are
:mod:`actors.sinks.qdrant.layout`'s, shared with the Edge store.  Bulk deletes
(``delete_table``, ``delete_table_except_generation``) are filter deletes on
``table`` and ``generation``, run by the store itself (a server indexes both).
Search is dense only here: ``mode="hybrid"``/``"keyword"`` raise
:class:`UnsupportedSearch` (the collection has no BM25 vector).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.local.qdrant_local import QdrantLocal

from actors.sinks.base import (
    FieldFilter,
    MissingPointError,
    PointTooLarge,
    SearchHit,
    SinkError,
    StoredPoint,
    UnsupportedSearch,
    VectorPoint,
    VectorSink,
    check_generation,
)
from actors.sinks.qdrant import layout
from actors.sinks.qdrant.config import QdrantSinkConfig

log = logging.getLogger(__name__)

_STATE_NAMESPACE = uuid.UUID("0b7c6c5e-2a0e-4f38-9d8b-5d7c2f0e9a41")
_SCROLL_PAGE = 512

# Upper bounds of a REST request body, in bytes (see actors/sinks/qdrant/layout.py)
_FLOAT_BYTES = layout.FLOAT_BYTES
_POINT_OVERHEAD = layout.POINT_OVERHEAD
_REQUEST_OVERHEAD = layout.REQUEST_OVERHEAD
#: ids per read (retrieve) request, whatever the byte limit allows: bounds the answer too
_READ_IDS = 4096


class QdrantSink(VectorSink):
    """Vectors in one Qdrant collection; bookkeeping in ``<collection>_state``."""

    def __init__(self, config: QdrantSinkConfig) -> None:
        self.config = config
        self.collection = config.collection
        self.state_collection = f"{config.collection}_state"
        self.shared = bool(config.url)
        self.max_request_bytes = int(config.max_request_bytes)
        # Local mode is not thread-safe; the writer actor serves searches from
        # another thread while it applies batches.
        self._lock = threading.RLock()
        # embedded mode: per-collection SQLite transactions (see _tune_local_storage)
        self._transactions: list[_CallTransaction] = []
        try:
            if config.url:
                api_key = config.api_key.get_secret_value() if config.api_key else None
                self.client = QdrantClient(url=config.url, api_key=api_key, timeout=30)
                self.client.get_collections()  # fail fast on a bad URL
            elif config.path == ":memory:":
                # not durable: for benchmarks that isolate the pipeline from storage cost
                self.client = QdrantClient(location=":memory:")
            else:
                Path(config.path).mkdir(parents=True, exist_ok=True)
                self.client = QdrantClient(path=config.path)
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise SinkError(
                    f"the embedded Qdrant store at {config.path} (sink.path) is open in another process; "
                    "stop the other embedcluster run, or set sink.url to a Qdrant server"
                ) from None
            raise
        except Exception as exc:  # noqa: BLE001 - any connection failure becomes one line
            where = config.url or config.path
            raise SinkError(
                f"cannot open Qdrant at {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                "check sink.url (or leave it empty for embedded mode at sink.path)"
            ) from None
        self.dimension: int | None = None
        # Where point writes go.  ``QdrantClient.upsert`` first walks every
        # point looking for FastEmbed inference objects (``models.Document``...),
        # which this sink never sends: ~11 us per point of writer CPU, taken
        # from the model on a small machine.  In embedded mode the writes go to
        # the local backend behind the client directly; its API is the
        # client's.  A server keeps the public client.
        local = getattr(self.client, "_client", None)
        self._local: QdrantLocal | None = local if isinstance(local, QdrantLocal) else None
        self._writes: Any = self._local or self.client

    # -- set-up -----------------------------------------------------------------

    def ensure_ready(self, dimension: int) -> None:
        with self._lock:
            if self.client.collection_exists(self.collection):
                info = self.client.get_collection(self.collection)
                vectors = info.config.params.vectors
                size = getattr(vectors, "size", None)
                if size is None:
                    raise SinkError(
                        f"Qdrant collection {self.collection} uses named vectors, which embedcluster does not "
                        "write; choose another sink.collection"
                    )
                if size != dimension:
                    raise SinkError(
                        f"Qdrant collection {self.collection} holds {size}-dimensional vectors but the model "
                        f"produces {dimension}; choose another sink.collection or delete that collection"
                    )
            else:
                self.client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
                )
                log.info("created Qdrant collection %s (%d-d, cosine)", self.collection, dimension)
            if not self.client.collection_exists(self.state_collection):
                self.client.create_collection(
                    self.state_collection,
                    vectors_config=models.VectorParams(size=1, distance=models.Distance.DOT),
                )
            self.dimension = dimension
            self._tune_local_storage()
            # the store's own filter deletes (delete_table, delete_table_except_generation) use them
            self._index({"table": models.PayloadSchemaType.KEYWORD, "generation": models.PayloadSchemaType.INTEGER})

    def ensure_payload_indexes(self, fields: dict[str, str]) -> None:
        """Payload indexes on ``payload."<field>"`` (a server; local mode filters without indexes)."""
        layout.check_index_kinds(fields)
        with self._lock:
            self._index({layout.field_path(f): _INDEX_SCHEMAS[kind] for f, kind in fields.items()})

    def _index(self, wanted: dict[str, Any]) -> None:
        if self._local is not None:
            return  # qdrant-client's local mode has no payload indexes (it scans)
        info = self.client.get_collection(self.collection)
        have = {key: getattr(schema, "data_type", None) for key, schema in (info.payload_schema or {}).items()}
        for key, schema in wanted.items():
            if have.get(key) != schema:
                self.client.create_payload_index(self.collection, field_name=key, field_schema=schema, wait=True)

    def _tune_local_storage(self) -> None:
        """Embedded mode: WAL journaling, and one SQLite transaction per sink call.

        qdrant-client's local mode commits each point in its own transaction,
        and with the default rollback journal every commit costs several
        fsyncs.  Two changes, both keeping "durable when the call returns":

        * WAL with ``synchronous=FULL`` still fsyncs every commit (a write
          acknowledged to PostgreSQL survives power loss), but once per commit.
        * :class:`_CallTransaction` makes the points of one ``upsert`` /
          ``delete`` / payload call a single transaction, committed before the
          call returns: one fsync per batch instead of one per point.  If the
          call fails, the whole batch rolls back and the call raises, so the
          pipeline does not acknowledge the slot and replays the batch.

        Measured here (3,000 384-d points, batches of 256): 0.30 -> 0.10
        wall-ms and 0.23 -> 0.10 CPU-ms per point; the CPU goes back to the
        model.  These are private attributes of qdrant-client, hence the
        guards: without them the store keeps its own (slower, equally durable)
        behaviour.
        """
        self._transactions = []
        collections = getattr(self._local, "collections", None) or {}
        for name in (self.collection, self.state_collection):
            persistence = getattr(collections.get(name), "storage", None)
            conn = getattr(persistence, "storage", None)
            if isinstance(conn, _CallTransaction):
                self._transactions.append(conn)
                continue
            if not isinstance(conn, sqlite3.Connection):
                continue
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            except Exception as exc:  # noqa: BLE001 - an optimisation only
                log.debug("could not switch %s to WAL: %s", name, exc)
            wrapped = _CallTransaction(conn)
            persistence.storage = wrapped
            self._transactions.append(wrapped)

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """The sink lock, plus one SQLite transaction per collection in embedded mode."""
        with self._lock, contextlib.ExitStack() as stack:
            for transaction in self._transactions:
                stack.enter_context(transaction.batch())
            yield

    # -- writes -------------------------------------------------------------------

    def _request(self, method: str, collection: str, **kwargs: Any) -> Any:
        """One request to the store (``upsert``, ``delete``, ``batch_update_points``, ``retrieve``).

        Every call that may carry many points or ids goes through here, one
        bounded request at a time; writes wait until the store has applied them.
        """
        if method != "retrieve":
            kwargs["wait"] = True
        return getattr(self._writes, method)(collection, **kwargs)

    def _too_large(self, p: VectorPoint, size: int) -> PointTooLarge:
        return PointTooLarge(
            p.id, p.table, size, self._point_budget(), "sink.max_request_bytes",
            f"shorten the row's text (tables[].text) or raise sink.max_request_bytes "
            f"(now {self.max_request_bytes:,}; a Qdrant server also needs service.max_request_size_mb above it)",
        )

    def _point_budget(self) -> int:
        """The most bytes one point may take in a request."""
        return self.max_request_bytes - _REQUEST_OVERHEAD

    def _chunks(self, items: Sequence[Any], sizes: Sequence[int], max_items: int = 0) -> Iterator[list[Any]]:
        """``items`` in consecutive runs whose ``sizes`` sum to at most the point budget
        (each size must fit on its own), and at most ``max_items`` each when given."""
        budget = self._point_budget()
        chunk: list[Any] = []
        used = 0
        for item, size in zip(items, sizes):
            if chunk and (used + size > budget or (max_items and len(chunk) >= max_items)):
                yield chunk
                chunk, used = [], 0
            chunk.append(item)
            used += size
        if chunk:
            yield chunk

    def _id_chunks(self, ids: Sequence[str], max_items: int = 0) -> Iterator[list[str]]:
        return self._chunks(ids, [layout.id_bytes(i) for i in ids], max_items)

    def _payload_sizes(self, points: Sequence[VectorPoint], payloads: Sequence[dict[str, Any]],
                       with_vectors: bool) -> list[int]:
        """Upper bound of each point's bytes in a request; raises PointTooLarge for one over the budget
        (before anything of the call is written)."""
        budget = self._point_budget()
        sizes = []
        for p, payload in zip(points, payloads):
            dimension = len(p.vector) if with_vectors and p.vector is not None else 0
            size = layout.point_bytes(p.id, payload, dimension)
            if size > budget:
                raise self._too_large(p, size)
            sizes.append(size)
        return sizes

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Insert or overwrite points, in requests of at most ``sink.max_request_bytes``; durable on return.

        Raises :class:`PointTooLarge` (nothing written) when one point alone exceeds the limit.
        """
        if not points:
            return
        payloads = [layout.stored_payload(p) for p in points]
        sizes = self._payload_sizes(points, payloads, with_vectors=True)
        # model_construct: the fields are ours and already typed; pydantic's
        # validation of 384 floats per point cost ~20 us of writer CPU, which on
        # a small machine is taken from the model.  Local mode validates ids and
        # dimensions itself; a server validates on arrival.
        structs = [
            models.PointStruct.model_construct(
                id=p.id, vector=np.asarray(p.vector, dtype=np.float32).tolist(), payload=payload
            )
            for p, payload in zip(points, payloads)
        ]
        with self._write():
            for chunk in self._chunks(structs, sizes):
                self._request("upsert", self.collection, points=chunk)

    def delete(self, point_ids: Sequence[str]) -> None:
        """Delete points by id (missing ids ignored), in requests of at most ``sink.max_request_bytes``."""
        if not point_ids:
            return
        with self._write():
            for chunk in self._id_chunks(point_ids):
                self._request("delete", self.collection, points_selector=models.PointIdsList(points=chunk))

    def _delete_matching(self, flt: models.Filter) -> int:
        """Delete the points ``flt`` selects, by a filter the store evaluates itself (no ids listed here)."""
        with self._write():
            if not self._readable(self.collection):
                return 0
            n = int(self.client.count(self.collection, count_filter=flt, exact=True).count)
            if n:
                self._request("delete", self.collection, points_selector=models.FilterSelector(filter=flt))
        return n

    def delete_table(self, table: str) -> int:
        """Delete every point of ``table`` with one filter delete; returns how many there were."""
        return self._delete_matching(models.Filter(must=[_match("table", table)]))

    def delete_table_except_generation(self, table: str, generation: int) -> int:
        """Delete the points of ``table`` whose ``generation`` differs (points without one included)."""
        generation = check_generation(generation)
        return self._delete_matching(
            models.Filter(must=[_match("table", table)], must_not=[_match("generation", generation)])
        )

    def update_payloads(self, points: Sequence[VectorPoint]) -> None:
        """Overwrite everything but the vector of existing points (see :class:`VectorSink`).

        All sizes and the existence of every point are checked before anything
        is written; then requests of at most ``sink.max_request_bytes``.
        """
        if not points:
            return
        payloads = [layout.stored_payload(p) for p in points]
        sizes = self._payload_sizes(points, payloads, with_vectors=False)
        ops = [
            models.SetPayloadOperation(set_payload=models.SetPayload(payload=payload, points=[p.id]))
            for p, payload in zip(points, payloads)
        ]
        ids = list(dict.fromkeys(p.id for p in points))
        with self._write():
            # Checked before anything is written (the contract: all or nothing).
            # Local mode alone would update the points before a missing one and
            # then raise a bare KeyError, its in-memory copy keeping them even
            # though the SQLite transaction rolls back.
            found: set[str] = set()
            for chunk in self._id_chunks(ids, _READ_IDS):
                records = self._request("retrieve", self.collection, ids=chunk, with_payload=False, with_vectors=False)
                found.update(str(r.id) for r in records)
            missing = [i for i in ids if i not in found]
            if missing:
                raise MissingPointError(missing)
            for chunk in self._chunks(ops, sizes):
                self._request("batch_update_points", self.collection, update_operations=chunk)

    # -- reads ----------------------------------------------------------------------

    def search(self, vector: np.ndarray | None, k: int, *, table: str | None = None,
               filters: Sequence[FieldFilter] = (), score_threshold: float | None = None,
               text: str = "", mode: str = "dense") -> list[SearchHit]:
        """Dense search; ``table``, ``filters`` and ``score_threshold`` go into the query (the store applies them)."""
        layout.check_search(vector, k, text, mode, score_threshold)
        if mode != "dense":
            raise UnsupportedSearch(
                f"search mode {mode!r} needs BM25 over the stored text, which the Qdrant server sink (sink.url) "
                "does not keep: use mode 'dense', or the embedded store (an empty sink.url)"
            )
        conditions = layout.conditions(filters, table, _ClientConditions())
        with self._lock:
            if k == 0 or not self._readable(self.collection):
                return []
            result = self.client.query_points(
                self.collection,
                query=np.asarray(vector, dtype=np.float32).tolist(),
                query_filter=models.Filter(must=conditions) if conditions else None,
                score_threshold=score_threshold,
                limit=k,
                with_payload=layout.HIT_FIELDS,
            )
        hits = []
        for point in result.points:
            hit_table, key, payload = layout.hit_fields(point.payload)
            hits.append(SearchHit(table=hit_table, key=key, score=float(point.score), payload=payload))
        return hits

    def count(self) -> int:
        with self._lock:
            return int(self.client.count(self.collection, exact=True).count)

    def points_page(self, table: str | None, cursor: str | None, limit: int | None = None,
                    with_vectors: bool = False) -> tuple[list[StoredPoint], str | None]:
        # the cursor is the id the next page starts at (Qdrant's next_page_offset)
        flt = None
        if table is not None:
            flt = models.Filter(must=[models.FieldCondition(key="table", match=models.MatchValue(value=table))])
        with self._lock:
            if not self._readable(self.collection):
                return [], None
            records, offset = self.client.scroll(
                self.collection,
                scroll_filter=flt,
                limit=limit or _SCROLL_PAGE,
                offset=cursor,
                with_payload=True,
                with_vectors=with_vectors,
            )
        return [_stored_point(rec, with_vectors) for rec in records], None if offset is None else str(offset)

    def _retrieve(self, point_ids: Sequence[str], with_payload: Any) -> list[Any]:
        """The stored records among ``point_ids`` (each id once), in bounded requests."""
        ids = list(dict.fromkeys(point_ids))
        records: list[Any] = []
        with self._lock:
            if not ids or not self._readable(self.collection):
                return records
            for chunk in self._id_chunks(ids, _READ_IDS):
                records += self._request("retrieve", self.collection, ids=chunk, with_payload=with_payload,
                                         with_vectors=False)
        return records

    def get_points(self, point_ids: Sequence[str]) -> dict[str, StoredPoint]:
        return {str(rec.id): _stored_point(rec, False) for rec in self._retrieve(point_ids, True)}

    def text_hashes(self, point_ids: Sequence[str]) -> dict[str, str]:
        return {str(r.id): (r.payload or {}).get("text_hash", "") for r in self._retrieve(point_ids, ["text_hash"])}

    def _readable(self, collection: str) -> bool:
        """Whether ``collection`` can be read: always after ensure_ready; before it (a reader
        that creates nothing, such as ``verify``) a store nothing was written to has no points."""
        return self.dimension is not None or self.client.collection_exists(collection)

    # -- bookkeeping ------------------------------------------------------------------

    def _state_id(self, name: str) -> str:
        return str(uuid.uuid5(_STATE_NAMESPACE, name))

    def get_state(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            if not self._readable(self.state_collection):
                return None
            records = self.client.retrieve(self.state_collection, ids=[self._state_id(name)], with_payload=True)
        if not records:
            return None
        return layout.state_value(records[0].payload)

    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        with self._write():
            if value is None:
                self.client.delete(
                    self.state_collection,
                    points_selector=models.PointIdsList(points=[self._state_id(name)]),
                    wait=True,
                )
                return
            self.client.upsert(
                self.state_collection,
                points=[models.PointStruct(id=self._state_id(name), vector=[1.0], payload=layout.state_payload(name, value))],
                wait=True,
            )

    def list_states(self, prefix: str) -> dict[str, dict[str, Any]]:
        # The state collection holds a few documents (the slot's, dead letters): scrolled whole,
        # page by page, and matched here (a prefix match needs a text index in Qdrant).
        found: dict[str, dict[str, Any]] = {}
        offset = None
        while True:
            with self._lock:
                if not self._readable(self.state_collection):
                    return found
                records, offset = self.client.scroll(self.state_collection, limit=_SCROLL_PAGE, offset=offset,
                                                     with_payload=True, with_vectors=False)
            for rec in records:
                name = (rec.payload or {}).get("name", "")
                if name.startswith(prefix):
                    found[name] = layout.state_value(rec.payload)
            if offset is None:
                return found

    def close(self) -> None:
        with self._lock:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass


def _stored_point(rec: Any, with_vectors: bool) -> StoredPoint:
    """A retrieved or scrolled record as a :class:`StoredPoint` (the inverse of ``layout.stored_payload``)."""
    vector = None
    if with_vectors and rec.vector is not None:
        vector = np.asarray(rec.vector, dtype=np.float32)
    return layout.stored_point(str(rec.id), rec.payload, vector)


_INDEX_SCHEMAS = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "bool": models.PayloadSchemaType.BOOL,
}


class _ClientConditions(layout.ConditionFactory):
    def match(self, key: str, value: Any) -> Any:
        return _match(key, value)

    def match_any(self, key: str, values: list[Any]) -> Any:
        return models.FieldCondition(key=key, match=models.MatchAny(any=values))

    def range(self, key: str, bounds: dict[str, float]) -> Any:
        return models.FieldCondition(key=key, range=models.Range(**bounds))

    def either(self, conditions: list[Any]) -> Any:
        return models.Filter(should=conditions)


def _match(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


class _CallTransaction:
    """A local-mode collection's SQLite connection whose per-point commits
    can be folded into one transaction.

    qdrant-client writes each point inside ``with connection:`` (commit on
    success, rollback on error).  Inside :meth:`batch` those blocks neither
    commit nor roll back; the batch does either once at its end.  Outside a
    batch it behaves exactly like the connection it wraps.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._depth = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __enter__(self) -> "_CallTransaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._depth:
            return False  # the enclosing batch commits or rolls back
        return bool(self._connection.__exit__(exc_type, exc, tb))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if not self._depth:
                self._connection.rollback()
            raise
        self._depth -= 1
        if not self._depth:
            # Durable (WAL, synchronous=FULL) before the sink call returns.  A
            # failed commit rolls back too, so nothing of this call lingers in
            # an open transaction to be committed later with another call.
            try:
                self._connection.commit()
            except BaseException:
                self._connection.rollback()
                raise
