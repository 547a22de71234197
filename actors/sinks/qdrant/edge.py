"""The embedded store: Qdrant Edge (``qdrant-edge-py``) in the writer's process (``sink.url`` empty).

Layout: ``<sink.path>/edge/<collection>/points`` holds the row points (dense
vector ``""``, cosine; sparse vector ``bm25`` with IDF, computed from the text
at every write), ``<sink.path>/edge/<collection>/state`` the state documents
(:mod:`actors.sinks.qdrant.layout` gives both payloads, the same as a
server's).  One process owns a directory: the sink holds an exclusive
``flock`` on ``<collection>/lock`` while open (Edge itself locks each WAL), so
a second opener gets a :class:`SinkError` naming the other process.  A
directory left by the old embedded mode (qdrant-client's local mode:
``collection/<name>/storage.sqlite``, ``meta.json``) is refused, never read,
mixed or deleted.

Durability (the pipeline acknowledges the replication slot as soon as a write
call returns).  What Edge guarantees, from its source (qdrant/qdrant at the
commit that bumps the edge packages to 0.9.0, 6d546f607f) and this wheel:

* ``EdgeShard.update`` (``lib/edge/src/edge_shard/update.rs``) appends the
  operation to the shard's WAL, then applies it to the segments.  The append
  (``SerdeWal::write``, ``lib/shard/src/wal.rs``: "does [not] guarantee
  durability"; ``Segment::append``, ``lib/wal/src/segment.rs``) copies the
  entry and its CRC into a memory-mapped segment file ("not guaranteed to be
  durably stored on disk until the segment is flushed"): no fsync, no msync.
  The bytes are in the kernel's page cache of a shared file mapping, so they
  survive the death of the process (kill -9) but not an OS crash or power loss.
* The segments' own files are persisted only by ``flush()``; what reloads a
  write that was not flushed is the WAL: the installed wheel (0.9.0 on the
  mirror) replays it in ``EdgeShard.load`` (its binary holds
  ``EdgeShard::replay_wal`` and ``EdgeConfig.wal_enabled``: "Without a WAL,
  updates are durable only once flush() returns"; the public tree at that
  commit has neither, so this is checked by tests, see below).  Measured:
  points updated without a flush and then SIGKILLed are all back after
  ``load``; with ``wal_enabled=False`` none are.
* ``EdgeShard.flush`` (``lib/edge/src/edge_shard/mod.rs``) msyncs the WAL's
  open segment (the bytes appended since its last flush) and then every
  segment (``flush_all(FlushMode::Sync)``); it also lets the WAL drop what
  the segments now hold.  It costs tens of milliseconds.  A WAL segment that
  fills up (32 MiB) is renamed ``closed-N`` and flushed asynchronously, and
  not at all while an earlier asynchronous flush still runs (``lib/wal/src/lib.rs``,
  ``retire_open_segment``).

So every write call of this sink ends with exactly one sync of the shard it
wrote: an ``fsync`` of each file in that shard's ``wal/`` directory (Linux
writes back the pages dirtied through a shared mapping on ``fsync``, as
``msync(MS_SYNC)`` does; files without dirty pages cost a system call), and of
the directory when its entries changed.  A call returns only once its WAL
entries are on the disk: it survives kill -9 (already true after ``update``)
and also a power loss, like the old local mode's SQLite ``synchronous=FULL``.
At most every :data:`CHECKPOINT_S` seconds that sync is a ``flush()`` of the
shard first (a checkpoint), which bounds the WAL's size and its replay at the
next load.  The requests of one call (it is split by ``sink.max_request_bytes``)
share that one sync; a call that fails raises before syncing and the pipeline
replays it (every write is idempotent).  ``benchmarks/bench_writer.py --sink
edge`` measures the cost with and without the sync.

Index: Edge builds HNSW only when ``optimize()`` runs, which blocks and holds
the GIL.  The sink runs it inside a write call once :data:`INDEX_AFTER_POINTS`
points were upserted since the last build (``optimize()`` is public too, for
a caller that knows a quiet moment); until then the newest points are
searched exactly, which is cheap at that size.  Segments are capped
(:data:`MAX_SEGMENT_POINTS`), so a build costs the same however large the
store is.

``sink.path = ":memory:"``: the same Edge store in a temporary directory,
without WAL, syncs or checkpoints, deleted on close: NOT durable (benchmarks).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import qdrant_edge as qe

from actors.sinks.base import (
    FieldFilter,
    MissingPointError,
    PointError,
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

#: the named sparse vector holding BM25 of the stored text
BM25_VECTOR = "bm25"
#: how long a store locked by another process is waited for before the refusal (that process may be
#: a crashed run's writer, still exiting), and how often the lock is tried meanwhile
LOCK_WAIT_S = 30.0
LOCK_POLL_S = 0.25
#: seconds between checkpoints (``flush()`` of a shard) of a durable store
CHECKPOINT_S = 5.0
#: points upserted since the last index build after which a write call runs ``optimize()``
INDEX_AFTER_POINTS = 50_000
#: the most points one segment of the store takes (Edge's ``max_segment_size``, in KB of dense vectors).
#: Edge's own default lets segments grow to about 256 MB per CPU, and every index build merged the
#: newest points into one large segment and rebuilt its whole HNSW graph, so builds cost more as the
#: store grew (45 s per 50,000 points at 300,000; a 1M backfill would have taken about an hour).  With
#: the cap a build indexes the newest :data:`INDEX_AFTER_POINTS` points as a segment of their own (two
#: of those do not fit under the cap, so they stay apart): about 17 s per build at 1M points as at
#: 100,000 on 2 cores.  A search visits one graph per segment: 20 at 1M, p50 8.9 ms, recall@10 0.995
#: (benchmarks/results/writer_edge_1m.json).
MAX_SEGMENT_POINTS = 100_000
#: HNSW candidate list of a dense search (None: Edge's default); see benchmarks/bench_writer.py --large
SEARCH_HNSW_EF: int | None = None
#: reciprocal rank fusion's k (Cormack et al.): 1 / (k + rank) per list
RRF_K = 60
#: candidates each side of a hybrid search contributes to the fusion (at least k)
HYBRID_DEPTH = 100

_STATE_NAMESPACE = uuid.UUID("0b7c6c5e-2a0e-4f38-9d8b-5d7c2f0e9a41")  # the server path's, same ids
_SCROLL_PAGE = 512
#: ids per read (retrieve) call, whatever the byte limit allows: bounds the answer too
_READ_IDS = 4096
_CONFIG_FILE = "edge_config.json"
_INDEX_SCHEMAS = {
    "keyword": qe.PayloadSchemaType.Keyword,
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool,
}
#: lock files held by this process (a second sink here gets its own message)
_HELD: set[str] = set()
_HELD_LOCK = threading.Lock()


def lock_holder(root: Path, collection: str) -> int | None:
    """The pid holding the store at ``root`` (sink.path) for ``collection``, or None when its lock is free.

    A probe: the flock is tried without waiting and released at once.  It lets a caller that
    can reach the holder (``embedcluster verify`` through the running writer) go there
    directly instead of waiting :data:`LOCK_WAIT_S` for a release that a live run never makes.
    """
    path = Path(root) / "edge" / collection / "lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            try:
                return int(path.read_text().strip() or 0) or None
            except (OSError, ValueError):
                return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def optimizers(dimension: int) -> qe.EdgeOptimizersConfig:
    """Edge's optimizer settings for a store of ``dimension``-d float32 vectors (see MAX_SEGMENT_POINTS)."""
    return qe.EdgeOptimizersConfig(max_segment_size=max(1, MAX_SEGMENT_POINTS * dimension * 4 // 1024))


def legacy_store(root: Path) -> str | None:
    """What marks ``root`` as a store of the old embedded mode (qdrant-client local), or None."""
    collections = root / "collection"
    if collections.is_dir():
        for child in sorted(collections.iterdir()):
            if (child / "storage.sqlite").is_file():
                return f"collection/{child.name}/storage.sqlite"
    if (root / "meta.json").is_file():
        return "meta.json"
    return None


class _Shard:
    """One Edge shard of the sink (a directory), and the one sync that ends each write call to it."""

    def __init__(self, path: Path, durable: bool) -> None:
        self.path = path
        self.durable = durable
        self.shard: qe.EdgeShard | None = None
        self.dirty = False
        self.last_checkpoint = time.monotonic()
        self._wal_entries: list[str] = []
        # what the benchmark reports
        self.syncs = 0
        self.sync_s = 0.0
        self.checkpoints = 0
        self.checkpoint_s = 0.0

    def exists(self) -> bool:
        return (self.path / _CONFIG_FILE).is_file()

    def sync(self) -> None:
        """Make everything written since the last sync durable (see the module docstring)."""
        if not self.dirty or self.shard is None:
            return
        self.dirty = False
        if not self.durable:
            return
        started = time.perf_counter()
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_S:
            self.shard.flush()
            self.last_checkpoint = time.monotonic()
            self.checkpoints += 1
            self.checkpoint_s += time.perf_counter() - started
        self._fsync_wal()
        self.syncs += 1
        self.sync_s += time.perf_counter() - started

    def _fsync_wal(self) -> None:
        wal = self.path / "wal"
        for _ in range(10):
            # tmp-* files are segments Edge's creator thread is still preparing (renamed to open-N
            # when ready, empty): not part of the log yet, and they vanish under our feet
            entries = sorted(name for name in os.listdir(wal) if not name.startswith("tmp-"))
            try:
                for name in entries:
                    fd = os.open(wal / name, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            except FileNotFoundError:
                continue  # a segment was renamed meanwhile: list again and sync every file anew
            break
        else:
            raise OSError(errno.EAGAIN, f"the files of {wal} kept changing while being synced")
        if entries != self._wal_entries:
            # a segment was created, renamed (open-N -> closed-M) or removed: make the names durable too
            fd = os.open(wal, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._wal_entries = entries

    def close(self) -> None:
        shard, self.shard = self.shard, None
        if shard is not None:
            shard.close()  # flushes (Edge flushes a shard when it is dropped)


class EdgeSink(VectorSink):
    """Vectors in an embedded Qdrant Edge store at ``sink.path`` (one process owns it)."""

    shared = False

    def __init__(self, config: QdrantSinkConfig) -> None:
        self.config = config
        self.collection = config.collection
        self.max_request_bytes = int(config.max_request_bytes)
        self.memory = config.path == ":memory:"
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_path = ""
        self._bm25 = qe.Bm25()
        self.dimension: int | None = None
        self._unindexed = 0
        self._grouped = 0  # depth of grouped() blocks: their calls share one sync per shard
        self.optimizes = 0
        self.optimize_s = 0.0
        self.closed = False
        if self.memory:
            # not durable: for benchmarks that isolate the pipeline from storage cost
            self.root = Path(tempfile.mkdtemp(prefix="embedcluster-edge-"))
            self.where = ":memory:"
            self.directory = self.root / self.collection
        else:
            self.root = Path(config.path)
            self.where = str(self.root)
            self.directory = self.root / "edge" / self.collection
            legacy = legacy_store(self.root) if self.root.is_dir() else None
            if legacy is not None:
                raise SinkError(
                    f"sink.path {self.root} holds a store of the old embedded mode (qdrant-client local mode: "
                    f"{legacy}), which the Qdrant Edge store does not read: delete that directory (the pipeline "
                    "then backfills the index again from PostgreSQL) or set sink.path to another directory"
                )
        self.points = _Shard(self.directory / "points", durable=not self.memory)
        self.state = _Shard(self.directory / "state", durable=not self.memory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self.memory:
                self._take_lock()
            for shard in (self.points, self.state):
                if shard.exists():
                    shard.shard = self._load(shard.path)
        except OSError as exc:
            self._abandon()
            raise SinkError(f"cannot open the embedded Qdrant store at {self.where} (sink.path): "
                            f"{exc.strerror or exc}; check that the directory is writable") from None
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Undo a constructor that failed halfway: shards opened so far, the lock, a temporary directory."""
        for part in (self.points, self.state):
            try:
                part.close()
            except Exception:  # noqa: BLE001 - already failing; the first error is the one to report
                pass
        self._release()

    # -- opening ------------------------------------------------------------------------------

    def _locked_message(self, here: bool) -> str:
        if here:
            return (f"the embedded Qdrant store at {self.where} (sink.path) is already open in this process; "
                    "close the other sink first")
        holder = self._holder()
        who = f"another process (pid {holder})" if holder else "another process"
        return (f"the embedded Qdrant store at {self.where} (sink.path) is open in {who}; stop the other "
                "embedcluster run, or set sink.url to a Qdrant server")

    def _holder(self) -> int | None:
        """The pid the lock's holder wrote into the lock file (None: unreadable or empty)."""
        try:
            return int((self.directory / "lock").read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def _take_lock(self) -> None:
        """The store's flock; one held by another process is waited for up to :data:`LOCK_WAIT_S`.

        That process may be this pipeline's previous writer: after a crash (a SIGKILL of
        ``embedcluster run``) its worker processes exit a moment later, and a restart must
        not fail on them.  Two live runs on one store still get the one-line refusal.
        """
        path = str((self.directory / "lock").resolve())
        deadline = time.monotonic() + LOCK_WAIT_S
        waiting_logged = False
        while True:
            with _HELD_LOCK:
                if path in _HELD:
                    raise SinkError(self._locked_message(here=True))
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                else:
                    # the holder's pid, for whoever looks at the directory (the lock is what counts)
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    _HELD.add(path)
                    self._lock_fd, self._lock_path = fd, path
                    return
            if time.monotonic() >= deadline:
                raise SinkError(self._locked_message(here=False))
            if not waiting_logged:
                waiting_logged = True
                log.info("the embedded Qdrant store at %s is held by pid %s; waiting up to %.0f s for it to be "
                         "released (a previous run's writer exiting)", self.where, self._holder() or "?", LOCK_WAIT_S)
            time.sleep(LOCK_POLL_S)

    def _release(self) -> None:
        if self._lock_fd is not None:
            with _HELD_LOCK:
                _HELD.discard(self._lock_path)
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        if self.memory:
            shutil.rmtree(self.root, ignore_errors=True)

    def _load(self, path: Path, config: qe.EdgeConfig | None = None) -> qe.EdgeShard:
        try:
            return qe.EdgeShard.load(str(path), config)
        except Exception as exc:  # noqa: BLE001 - Edge raises a bare Exception; one line says which
            text = _line(exc)
            if "WouldBlock" in text:
                raise SinkError(self._locked_message(here=False)) from None
            raise SinkError(f"cannot open the embedded Qdrant Edge store {path}: {text}; move that directory "
                            "aside (the pipeline backfills a new store) or set sink.path to another directory") from None

    def ensure_ready(self, dimension: int) -> None:
        with self._lock:
            self._check_open()
            wanted = {"": qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine)}
            sparse = {BM25_VECTOR: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
            if self.points.shard is None:
                self.points.shard = qe.EdgeShard.create(str(self.points.path), qe.EdgeConfig(
                    vectors=wanted, sparse_vectors=sparse, optimizers=optimizers(dimension),
                    wal_enabled=not self.memory))
                log.info("created Qdrant Edge store %s (%d-d, cosine, BM25)", self.points.path, dimension)
            elif self.dimension != dimension:
                # Edge checks the vectors of a config given to load against the stored segments; the
                # optimizer settings given here replace the stored ones (a store made before the cap)
                self.points.close()
                try:
                    self.points.shard = qe.EdgeShard.load(str(self.points.path), qe.EdgeConfig(
                        vectors=wanted, sparse_vectors=sparse, optimizers=optimizers(dimension)))
                except Exception as exc:  # noqa: BLE001 - incompatible config, or unreadable
                    self.points.shard = self._load(self.points.path)
                    text = _line(exc)
                    got = re.search(r"but got (\d+)", text)
                    held = f"{got.group(1)}-dimensional vectors" if got else f"other vectors ({text})"
                    raise SinkError(
                        f"Qdrant collection {self.collection} at {self.directory} holds {held} but the model "
                        f"produces {dimension}; choose another sink.collection or delete that directory"
                    ) from None
            if self.state.shard is None:
                self.state.shard = qe.EdgeShard.create(str(self.state.path), qe.EdgeConfig(
                    vectors={"": qe.EdgeVectorParams(size=1, distance=qe.Distance.Dot)},
                    wal_enabled=not self.memory))
            self.dimension = dimension
            # the store's own filter deletes (delete_table, delete_table_except_generation) use them
            self._index({"table": qe.PayloadSchemaType.Keyword, "generation": qe.PayloadSchemaType.Integer})

    def ensure_payload_indexes(self, fields: dict[str, str]) -> None:
        """Payload indexes on ``payload."<field>"``; an index of another kind is replaced."""
        layout.check_index_kinds(fields)
        with self._lock:
            self._check_open()
            self._index({layout.field_path(f): _INDEX_SCHEMAS[kind] for f, kind in fields.items()})

    def _index(self, wanted: dict[str, Any]) -> None:
        shard = self._points()
        have = {key: info.data_type for key, info in shard.info().payload_schema.items()}
        for key, schema in wanted.items():
            if have.get(key) != schema:
                self._call(shard, qe.UpdateOperation.create_field_index(key, schema))
                self.points.dirty = True
        self._finish(self.points)

    # -- the one way to the store -------------------------------------------------------------

    def _request(self, kind: str, target: str, items: list[Any], **options: Any) -> Any:
        """One call into a shard (``target``: ``points`` or ``state``) carrying ``items``.

        ``kind``: ``upsert`` / ``update`` (Points; ``update`` only rewrites stored
        points), ``delete`` (ids) or ``retrieve`` (ids).  Every call that may carry
        many points or ids goes through here, each within ``sink.max_request_bytes``.
        """
        part = self.points if target == "points" else self.state
        shard = part.shard
        assert shard is not None
        if kind == "retrieve":
            return shard.retrieve(items, options.get("with_payload", True), options.get("with_vector", False))
        if kind == "upsert":
            op = qe.UpdateOperation.upsert_points(items)
        elif kind == "update":
            op = qe.UpdateOperation.upsert_points(items, update_mode=qe.UpdateMode.UpdateOnly)
        elif kind == "delete":
            op = qe.UpdateOperation.delete_points(items)
        else:
            raise AssertionError(f"unknown request kind {kind}")
        part.dirty = True  # synced when the sink call ends, even if this request fails midway
        self._call(shard, op)
        return None

    def _call(self, shard: qe.EdgeShard, op: Any) -> None:
        try:
            shard.update(op)
        except Exception as exc:  # noqa: BLE001 - the store failed (disk full, I/O error)
            raise SinkError(f"the embedded Qdrant Edge store at {self.where} refused a write: {_line(exc)}") from None

    def _points(self) -> qe.EdgeShard:
        self._check_open()
        if self.points.shard is None:
            raise SinkError(f"the embedded Qdrant store at {self.where} has no collection {self.collection} yet; "
                            "call ensure_ready first")
        return self.points.shard

    def _check_open(self) -> None:
        if self.closed:
            raise SinkError(f"the embedded Qdrant store at {self.where} was closed")

    def _budget(self) -> int:
        """The most bytes one point may take in a request."""
        return self.max_request_bytes - layout.REQUEST_OVERHEAD

    def _too_large(self, p: VectorPoint, size: int) -> PointTooLarge:
        return PointTooLarge(
            p.id, p.table, size, self._budget(), "sink.max_request_bytes",
            f"shorten the row's text (tables[].text) or raise sink.max_request_bytes (now {self.max_request_bytes:,})",
        )

    def _finish(self, part: _Shard) -> None:
        """End a successful write call: its one sync, then index maintenance (module docstring).

        A call that fails raises before this: nothing is acknowledged, the
        pipeline replays it, and what it did write is synced by the next call.
        Inside :meth:`grouped` the sync waits for the end of the block.
        """
        if self._grouped:
            return
        self._sync(part)
        if part is self.points and self._unindexed >= INDEX_AFTER_POINTS:
            self.optimize()

    def _sync(self, part: _Shard) -> None:
        try:
            part.sync()
        except Exception as exc:  # noqa: BLE001 - fsync or flush failed: the write is not durable
            raise SinkError(f"the embedded Qdrant Edge store at {self.where} could not sync its write-ahead log: "
                            f"{_line(exc)}; check the disk (space, errors)") from None

    @contextlib.contextmanager
    def grouped(self) -> Iterator[None]:
        """Write calls inside the block share one sync per shard, at its end (durable when the
        block exits normally; a block that raises leaves its writes to the next sync).

        For a caller that acknowledges only after the whole block, as the writer
        does per batch (delete + upsert + payload updates + the position's state
        document: two syncs instead of four).  Points are synced before state
        documents, so a recorded position never becomes durable ahead of its points.
        """
        with self._lock:
            self._grouped += 1
            try:
                yield
            except BaseException:
                self._grouped -= 1
                raise
            self._grouped -= 1
            if not self._grouped and not self.closed:
                self._sync(self.points)
                self._sync(self.state)
                if self._unindexed >= INDEX_AFTER_POINTS:
                    self.optimize()

    def optimize(self) -> float:
        """Build the indexes of the points written since the last build now (blocks); returns seconds."""
        with self._lock:
            shard = self._points()
            started = time.perf_counter()
            try:
                shard.optimize()
            except Exception as exc:  # noqa: BLE001 - the points are stored; only the index is late
                raise SinkError(f"the embedded Qdrant Edge store at {self.where} failed to build its index: "
                                f"{_line(exc)}") from None
            seconds = time.perf_counter() - started
            self._unindexed = 0
            self.optimizes += 1
            self.optimize_s += seconds
            log.info("indexed the Qdrant Edge store %s in %.1f s", self.points.path, seconds)
            return seconds

    # -- writes -------------------------------------------------------------------------------

    def _edge_points(self, points: Sequence[VectorPoint], vectors: Sequence[Any]) -> tuple[list[Any], list[int]]:
        """Edge points (dense ``vectors``, BM25 of the text, the stored payload) and their request sizes.

        Everything is converted and measured before anything is written: a point
        that cannot be stored raises (PointTooLarge, PointError) with nothing of
        the call applied.
        """
        budget = self._budget()
        built, sizes = [], []
        for p, vector in zip(points, vectors):
            payload = layout.stored_payload(p)
            sparse = self._bm25.embed_document(p.text or "")
            entries = len(sparse.indices)
            size = layout.point_bytes(p.id, payload, len(vector), entries)
            if size > budget:
                raise self._too_large(p, size)
            named: dict[str, Any] = {"": vector}
            if entries:
                named[BM25_VECTOR] = sparse
            try:
                built.append(qe.Point(p.id, named, payload))
            except (TypeError, ValueError, OverflowError) as exc:
                raise PointError(p.id, f"point {p.id} of {p.table} cannot be stored in Qdrant: "
                                       f"{_line(exc)[:300]}") from None
            sizes.append(size)
        return built, sizes

    def _dense(self, points: Sequence[VectorPoint]) -> list[list[float]]:
        """The points' vectors as float lists, checked as one matrix (shape, finite); a bad one is a PointError."""
        try:
            matrix = np.asarray([p.vector for p in points], dtype=np.float32)
        except (TypeError, ValueError):
            matrix = None  # ragged: found below
        if matrix is None or matrix.ndim != 2 or (self.dimension is not None and matrix.shape[1] != self.dimension) \
                or not np.isfinite(matrix).all():
            for p in points:
                vector = np.asarray(p.vector, dtype=np.float32)
                if vector.ndim != 1 or (self.dimension is not None and vector.shape[0] != self.dimension):
                    raise PointError(p.id, f"point {p.id} of {p.table} has a vector of shape {vector.shape}, the "
                                           f"store holds {self.dimension}-dimensional vectors")
                if not np.isfinite(vector).all():
                    raise PointError(p.id, f"point {p.id} of {p.table} has a vector with NaN or infinite components")
            raise PointError(points[0].id, f"the vectors of the call starting at point {points[0].id} differ in length")
        return matrix.tolist()

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Insert or overwrite points, in calls of at most ``sink.max_request_bytes``; durable on return
        (one WAL sync for the whole call).  PointTooLarge / PointError: nothing of the call written."""
        if not points:
            return
        points = list({p.id: p for p in points}.values())  # one write per id: the last one wins
        built, sizes = self._edge_points(points, self._dense(points))
        with self._lock:
            self._points()
            for chunk in layout.chunks(built, sizes, self._budget()):
                self._request("upsert", "points", chunk)
                self._unindexed += len(chunk)
            self._finish(self.points)

    def delete(self, point_ids: Sequence[str]) -> None:
        """Delete points by id (missing ids ignored), in calls of at most ``sink.max_request_bytes``."""
        if not point_ids:
            return
        ids = [str(i) for i in point_ids]
        with self._lock:
            self._points()
            for chunk in layout.chunks(ids, [layout.id_bytes(i) for i in ids], self._budget()):
                self._request("delete", "points", chunk)
            self._finish(self.points)

    def _delete_matching(self, flt: qe.Filter) -> int:
        """Delete the points ``flt`` selects by a filter delete Edge runs itself (no id listed here)."""
        with self._lock:
            self._check_open()
            shard = self.points.shard
            if shard is None:
                return 0
            n = int(shard.count(qe.CountRequest(exact=True, filter=flt)))
            if n:
                self.points.dirty = True
                self._call(shard, qe.UpdateOperation.delete_points_by_filter(flt))
                self._finish(self.points)
            return n

    def delete_table(self, table: str) -> int:
        """Delete every point of ``table`` with one filter delete; returns how many there were."""
        return self._delete_matching(qe.Filter(must=[_match("table", table)]))

    def delete_table_except_generation(self, table: str, generation: int) -> int:
        """Delete the points of ``table`` whose ``generation`` differs (points without one included)."""
        generation = check_generation(generation)
        return self._delete_matching(qe.Filter(must=[_match("table", table)],
                                               must_not=[_match("generation", generation)]))

    def update_payloads(self, points: Sequence[VectorPoint]) -> None:
        """Overwrite everything but the dense vector of existing points (BM25 follows the new text).

        Every point's size and existence is checked before anything is written
        (all or nothing); each request then rewrites whole points, keeping the
        stored dense vector, and only points that exist (``UpdateMode.UpdateOnly``).
        """
        if not points:
            return
        points = list({p.id: p for p in points}.values())
        budget = self._budget()
        dimension = self.dimension or 0
        for p in points:  # sizes first: a point too large is refused whatever else is wrong
            size = layout.point_bytes(p.id, layout.stored_payload(p), dimension,
                                      len(self._bm25.embed_document(p.text or "").indices))
            if size > budget:
                raise self._too_large(p, size)
        with self._lock:
            self._points()
            ids = [p.id for p in points]
            stored: dict[str, list[float]] = {}
            for chunk in layout.chunks(ids, [layout.id_bytes(i) for i in ids], budget, _READ_IDS):
                for record in self._request("retrieve", "points", chunk, with_payload=False, with_vector=[""]):
                    stored[str(record.id)] = _dense_of(record.vector)
            missing = [i for i in ids if i not in stored]
            if missing:
                raise MissingPointError(missing)
            built, sizes = self._edge_points(points, [stored[p.id] for p in points])
            for chunk in layout.chunks(built, sizes, budget):
                self._request("update", "points", chunk)
            self._finish(self.points)

    # -- reads --------------------------------------------------------------------------------

    def search(self, vector: np.ndarray | None, k: int, *, table: str | None = None,
               filters: Sequence[FieldFilter] = (), score_threshold: float | None = None,
               text: str = "", mode: str = "dense") -> list[SearchHit]:
        """Dense (cosine), ``keyword`` (BM25 of the stored text) or ``hybrid`` (both, fused by RRF
        inside the store); ``table``/``filters``/``score_threshold`` are applied by Edge itself."""
        layout.check_search(vector, k, text, mode, score_threshold)
        if mode == "keyword" and score_threshold is not None:
            raise UnsupportedSearch("score_threshold bounds dense cosine scores; mode 'keyword' has BM25 scores "
                                    "only: leave score_threshold out, or use mode 'hybrid'")
        conditions = layout.conditions(filters, table, _EdgeConditions())
        flt = qe.Filter(must=conditions) if conditions else None
        dense = None if vector is None else self._query_vector(vector)
        sparse = self._bm25.embed_query(text) if mode != "dense" else None
        params = qe.SearchParams(hnsw_ef=SEARCH_HNSW_EF) if SEARCH_HNSW_EF else None
        with self._lock:
            self._check_open()
            shard = self.points.shard
            if shard is None or k == 0:
                return []
            if mode == "dense":
                request = qe.QueryRequest(query=qe.Query.Nearest(dense), limit=k, filter=flt, params=params,
                                          score_threshold=score_threshold, with_payload=layout.HIT_FIELDS)
            elif not sparse.indices:  # only stop words: BM25 has nothing to score
                if mode == "keyword":
                    return []
                request = qe.QueryRequest(query=qe.Query.Nearest(dense), limit=k, filter=flt, params=params,
                                          score_threshold=score_threshold, with_payload=layout.HIT_FIELDS)
            else:
                keyword = qe.Query.Nearest(sparse, using=BM25_VECTOR)
                if mode == "keyword":
                    request = qe.QueryRequest(query=keyword, limit=k, filter=flt, with_payload=layout.HIT_FIELDS)
                else:
                    depth = max(k, HYBRID_DEPTH)
                    request = qe.QueryRequest(
                        prefetches=[
                            qe.Prefetch(limit=depth, query=qe.Query.Nearest(dense), filter=flt, params=params,
                                        score_threshold=score_threshold),
                            qe.Prefetch(limit=depth, query=keyword, filter=flt),
                        ],
                        query=qe.Fusion.Rrf(k=RRF_K), limit=k, with_payload=layout.HIT_FIELDS,
                    )
            try:
                found = shard.query(request)
            except Exception as exc:  # noqa: BLE001
                raise SinkError(f"the embedded Qdrant Edge store at {self.where} failed a search: {_line(exc)}") from None
        hits = []
        for point in found:
            hit_table, key, payload = layout.hit_fields(point.payload)
            hits.append(SearchHit(table=hit_table, key=key, score=float(point.score), payload=payload))
        return hits

    def _query_vector(self, vector: Any) -> list[float]:
        q = np.asarray(vector, dtype=np.float32)
        if q.ndim != 1 or (self.dimension is not None and q.shape[0] != self.dimension):
            raise ValueError(f"query vector of shape {q.shape}: the store holds {self.dimension}-dimensional vectors")
        return q.tolist()

    def count(self) -> int:
        with self._lock:
            self._check_open()
            shard = self.points.shard
            return 0 if shard is None else int(shard.count(qe.CountRequest(exact=True)))

    def points_page(self, table: str | None, cursor: str | None, limit: int | None = None,
                    with_vectors: bool = False) -> tuple[list[StoredPoint], str | None]:
        # the cursor is the id the next page starts at (Edge's next_offset), as text
        flt = None if table is None else qe.Filter(must=[_match("table", table)])
        with self._lock:
            self._check_open()
            shard = self.points.shard
            if shard is None:
                return [], None
            records, offset = shard.scroll(qe.ScrollRequest(
                offset=cursor, limit=limit or _SCROLL_PAGE, filter=flt, with_payload=True,
                with_vector=[""] if with_vectors else False))
        page = [layout.stored_point(str(r.id), r.payload,
                                    np.asarray(_dense_of(r.vector), np.float32) if with_vectors else None)
                for r in records]
        return page, None if offset is None else str(offset)

    def _retrieve(self, point_ids: Sequence[str], with_payload: Any) -> list[Any]:
        ids = list(dict.fromkeys(str(i) for i in point_ids))
        records: list[Any] = []
        with self._lock:
            self._check_open()
            if not ids or self.points.shard is None:
                return records
            for chunk in layout.chunks(ids, [layout.id_bytes(i) for i in ids], self._budget(), _READ_IDS):
                records += self._request("retrieve", "points", chunk, with_payload=with_payload, with_vector=False)
        return records

    def get_points(self, point_ids: Sequence[str]) -> dict[str, StoredPoint]:
        return {str(r.id): layout.stored_point(str(r.id), r.payload) for r in self._retrieve(point_ids, True)}

    def text_hashes(self, point_ids: Sequence[str]) -> dict[str, str]:
        return {str(r.id): (r.payload or {}).get("text_hash", "") for r in self._retrieve(point_ids, ["text_hash"])}

    # -- bookkeeping --------------------------------------------------------------------------

    def _state_id(self, name: str) -> str:
        return str(uuid.uuid5(_STATE_NAMESPACE, name))

    def get_state(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            self._check_open()
            if self.state.shard is None:
                return None
            records = self._request("retrieve", "state", [self._state_id(name)], with_payload=True)
        return layout.state_value(records[0].payload) if records else None

    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        with self._lock:
            self._check_open()
            if self.state.shard is None:
                if value is None:
                    return
                raise SinkError(f"the embedded Qdrant store at {self.where} has no collection {self.collection} "
                                "yet; call ensure_ready first")
            if value is None:
                self._request("delete", "state", [self._state_id(name)])
            else:
                try:
                    point = qe.Point(self._state_id(name), [1.0], layout.state_payload(name, value))
                except (TypeError, ValueError, OverflowError) as exc:
                    raise ValueError(f"state document {name!r} cannot be stored: {_line(exc)[:300]}") from None
                self._request("upsert", "state", [point])
            self._finish(self.state)

    def list_states(self, prefix: str) -> dict[str, dict[str, Any]]:
        # a few documents (the slot's, dead letters): scrolled whole, page by page, matched here
        found: dict[str, dict[str, Any]] = {}
        offset = None
        while True:
            with self._lock:
                self._check_open()
                if self.state.shard is None:
                    return found
                records, offset = self.state.shard.scroll(qe.ScrollRequest(
                    offset=offset, limit=_SCROLL_PAGE, with_payload=True, with_vector=False))
            for rec in records:
                name = (rec.payload or {}).get("name", "")
                if name.startswith(prefix):
                    found[name] = layout.state_value(rec.payload)
            if offset is None:
                return found

    def sync_stats(self) -> dict[str, Any]:
        """What the syncs, checkpoints and index builds cost so far (benchmarks)."""
        return {
            "syncs": self.points.syncs + self.state.syncs,
            "sync_s": round(self.points.sync_s + self.state.sync_s, 6),
            "checkpoints": self.points.checkpoints + self.state.checkpoints,
            "checkpoint_s": round(self.points.checkpoint_s + self.state.checkpoint_s, 6),
            "optimizes": self.optimizes,
            "optimize_s": round(self.optimize_s, 3),
        }

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            try:
                for part in (self.points, self.state):
                    part.close()
            finally:
                self._release()


class _EdgeConditions(layout.ConditionFactory):
    def match(self, key: str, value: str | int | bool) -> Any:
        return _match(key, value)

    def match_any(self, key: str, values: list[Any]) -> Any:
        return qe.FieldCondition(key=key, match=qe.MatchAny(values))

    def range(self, key: str, bounds: dict[str, float]) -> Any:
        return qe.FieldCondition(key=key, range=qe.RangeFloat(**{op: float(v) for op, v in bounds.items()}))

    def either(self, conditions: list[Any]) -> Any:
        return qe.Filter(should=conditions)


def _match(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        # qdrant-edge-py 0.9.0 reads a Python bool as the integer 0/1 (bool is an int subclass),
        # so MatchValue(True) matches nothing; numpy's bool_ reaches its boolean variant
        value = np.bool_(value)
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


def _dense_of(vector: Any) -> list[float]:
    """The dense (``""``) vector of a retrieved record (a list, or a map of named vectors)."""
    if isinstance(vector, dict):
        return list(vector[""])
    return list(vector)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

