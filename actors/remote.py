"""Ray actors: thin wrappers that host the plain classes in the cluster.

All logic lives in ``PgChangeSource``, ``Embedder`` and ``Writer``; these
wrappers only add what Ray needs (resources, concurrency groups, multiple
return values) so the classes stay testable without Ray.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from actors.cdc_reader import PgChangeSource
from actors.changes import ChangeBatch, EmbeddedVectors
from actors.embedder import Embedder, EmbeddingConfig, model_workers
from actors.sinks.base import SearchHit, StoredPoint, VectorPoint, open_sink
from actors.source_schema import TableSpec
from actors.writer import ApplyResult, Writer, is_barrier
from actors.logs import error_line, setup_logging
from actors.source_config import SourceConfig
from actors.verify import OWNER_FILE


@ray.remote(num_cpus=0, concurrency_groups={"control": 1})
class CdcReaderActor:
    """Owns the replication connection; hands out change batches in order.

    ``read_batch``, ``start``, ``close`` and ``slot_status`` run one at a time
    (the default group: batches in order).  ``ack`` and ``position`` run in
    their own group, beside a read in progress: an acknowledgement reaches the
    server right after the write it confirms, instead of waiting behind the
    read's timeout (``PgChangeSource`` serialises the connection with a lock).
    """

    def __init__(self, source: SourceConfig, specs: dict[str, TableSpec], log_level: str = "INFO") -> None:
        setup_logging(log_level)
        self.source = PgChangeSource(source, specs)

    def slot_status(self) -> dict[str, Any]:
        return self.source.slot_status()

    def start(self, backfill: bool, plan: dict[str, Any] | None = None,
              tables: list[str] | None = None) -> dict[str, Any]:
        return self.source.start(backfill, plan, tables)

    def request_backfill(self, tables: list[str]) -> str:
        return self.source.request_backfill(tables)

    @ray.method(num_returns=2)
    def read_batch(self, max_changes: int, timeout: float, ack_lsn: int | None = None) -> tuple[dict[str, Any], ChangeBatch]:
        """Returns (small metadata for the coordinator, the batch itself).

        The coordinator only fetches the metadata; the batch object goes
        straight from this actor to an embedder and the writer by reference.
        """
        batch = self.source.read_batch(max_changes, timeout, ack_lsn)
        meta = {
            "seq": batch.seq,
            "changes": len(batch.changes),
            "upserts": sum(1 for c in batch.changes if c.op == "upsert"),
            "to_embed": sum(1 for c in batch.changes if c.op == "upsert" and not c.text_unchanged),
            "ack_lsn": batch.ack_lsn,
            "phase": batch.phase,
            "snapshot_complete": batch.snapshot_complete,
            # the batch moves the chunked backfill's plan: it is written even without changes
            "checkpoint": batch.backfill is not None,
            "backfill_rows": batch.backfill_rows,
            "backfill_begin": batch.backfill_begin,
            "commit_time": batch.commit_time,
            # acts on whole tables: partitioned writers apply it through the primary alone
            "barrier": is_barrier(batch),
        }
        return meta, batch

    @ray.method(concurrency_group="control")
    def ack(self, lsn: int) -> None:
        self.source.ack(lsn)

    @ray.method(concurrency_group="control")
    def position(self) -> dict[str, int]:
        return self.source.position()

    def close(self) -> None:
        self.source.close()


def embedding_runtime_env() -> dict[str, Any]:
    """Process environment of every EmbeddingActor (pipeline and benchmarks alike).

    ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that reach a barrier sleep
    instead of spinning.  It matters when model workers have several torch
    threads (``threads_per_worker > 1``; the default single-thread workers
    have no barriers).  In a pipeline the model shares the cores with the
    reader, the writer and PostgreSQL, and spinning threads burned their CPU:
    measured on 2 cores with one 2-thread team, end-to-end bursts 469-491
    rows/s sleeping vs 439-481 spinning, embedding alone ~10 % slower.  It has
    to be in the environment before torch loads, hence a runtime_env.  A
    value the user exported is kept.
    """
    policy = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    return {"env_vars": {"OMP_WAIT_POLICY": policy}}


def embedding_actor_concurrency(threads: int, threads_per_worker: int, gpu: bool = False) -> int:
    """Calls an EmbeddingActor runs at once: one per model worker, plus one.

    The passes of one call already spread over the workers; the extra calls
    keep workers busy when batches are small (one pass each) and let the next
    batch be tokenized and padded while the model runs, so the model never
    waits for the tokenizer.  On a GPU an Embedder has one worker.
    """
    return (1 if gpu else model_workers(threads, threads_per_worker)[0]) + 1


@ray.remote(max_concurrency=2)
class EmbeddingActor:
    """Loads the model once; embeds the upsert texts of change batches.

    Created with ``max_concurrency=embedding_actor_concurrency(...)``.
    """

    def __init__(self, config: EmbeddingConfig, threads: int, log_level: str = "INFO") -> None:
        setup_logging(log_level)
        self.embedder = Embedder.from_config(config, threads)

    def info(self) -> dict[str, Any]:
        e = self.embedder
        return {"dimension": e.dimension, "device": str(e.device), "dtype": e.dtype_name, "max_length": e.max_length,
                "workers": e.workers, "threads_per_worker": e.threads_per_worker}

    def embed_batch(self, batch: ChangeBatch) -> np.ndarray | EmbeddedVectors | None:
        """Vectors of the batch's texts to embed, in order.  When the model fails on the
        batch, each text is embedded alone and those that still fail come back as errors
        (:class:`~actors.changes.EmbeddedVectors`): the writer dead-letters them and
        writes the rest, instead of the whole pipeline retrying one bad text forever."""
        texts = batch.texts_to_embed()
        if not texts:
            return None
        try:
            return self.embedder.embed(texts)
        except Exception as exc:  # noqa: BLE001 - isolate the failing texts below
            logging.getLogger(__name__).warning("embedding %d texts failed (%s); embedding them one by one",
                                                len(texts), error_line(exc))
        rows: list[np.ndarray | None] = []
        errors: dict[int, str] = {}
        for i, text in enumerate(texts):
            try:
                rows.append(self.embedder.embed([text])[0])
            except Exception as exc:  # noqa: BLE001 - this text alone fails: a dead letter
                rows.append(None)
                errors[i] = error_line(exc, with_type=True)
        dimension = next((len(r) for r in rows if r is not None), self.embedder.dimension)
        vectors = np.stack([r if r is not None else np.zeros(dimension, dtype=np.float32) for r in rows])
        return EmbeddedVectors(vectors, errors) if errors else vectors

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def stats(self) -> dict[str, Any]:
        return self.embedder.stats.as_dict()


@ray.remote(num_cpus=0, concurrency_groups={"query": 4})
class WriterActor:
    """The only writer of the sink.  Searches run in their own concurrency group.

    ``apply`` stays in the default group (one thread).  The coordinator keeps at
    most one ``apply`` in flight per writer, so batches are applied strictly in order.
    With ``[sink] writers = W`` there are W of these (``partition`` 0..W-1): see
    ``actors.writer`` (partitioned writers); partition 0, named ``writer``, keeps the
    bookkeeping and serves searches, verify and the dead-letter commands.
    """

    def __init__(self, sink: Any, slot: str, log_level: str = "INFO", retries: dict[str, Any] | None = None,
                 payload_indexes: dict[str, str] | None = None, partition: int = 0) -> None:
        setup_logging(log_level)
        # retries: Writer's max_attempts, max_dead_letters, max_retry_delay (from [pipeline]); a restarted
        # actor gets the same arguments, so it indexes the same payload fields again in open()
        self.writer = Writer(_open_sink_patiently(sink, (retries or {}).get("max_retry_delay", 5.0)), slot,
                             payload_indexes=payload_indexes, **(retries or {}))
        # partitioned writers ([sink] writers): 0 is the primary, which keeps the bookkeeping
        if partition and hasattr(self.writer.sink, "maintains_index"):
            self.writer.sink.maintains_index = False  # the primary's sink decides on the vector index
        self._owner = announce_owner(sink) if not self.writer.sink.shared else None

    def open(self, dimension: int) -> bool:
        self.writer.open(dimension)
        return True

    def backfill_state(self) -> dict[str, Any] | None:
        return self.writer.backfill_state()

    def begin_backfill(self, tables: list[str], publication: str, identity: dict[str, Any] | None = None,
                       chunked: bool = False) -> int:
        return self.writer.begin_backfill(tables, publication, identity, chunked)

    def resume_backfill(self) -> int:
        return self.writer.resume_backfill()

    def apply(self, batch: ChangeBatch, vectors: np.ndarray | None, part: tuple[int, int] | None = None,
              generation: int | None = None, others: list[Any] | None = None) -> ApplyResult:
        """``Writer.apply``.  Partitioned (``part``): the primary gets the other writers' apply
        refs of the same batch in ``others`` (inside a list, so Ray hands them over unresolved):
        it writes its own partition first, then waits for theirs before recording the position."""
        wait = (lambda: ray.get(others)) if others else None
        return self.writer.apply(batch, vectors, part, generation, wait)

    @ray.method(concurrency_group="query")
    def search(self, vector: np.ndarray | None, k: int, options: dict[str, Any] | None = None) -> list[SearchHit]:
        """``sink.search(vector, k, **options)`` (``table``, ``filters``, ``score_threshold``, ``text``, ``mode``)."""
        return self.writer.sink.search(vector, k, **(options or {}))

    @ray.method(concurrency_group="query")
    def stats(self) -> dict[str, Any]:
        return self.writer.stats()

    @ray.method(concurrency_group="query")
    def interrupt(self) -> None:
        """End a write that waits for the sink (the pipeline stops): see ``Writer.interrupt``."""
        self.writer.interrupt()

    @ray.method(concurrency_group="query")
    def text_hashes(self, point_ids: list[str]) -> dict[str, str]:
        """Stored content hash of each id present (what a freshness probe polls)."""
        return self.writer.sink.text_hashes(point_ids)

    @ray.method(concurrency_group="query")
    def ping(self) -> bool:
        """True when the sink answers (the search app's health check; never waits behind ``apply``)."""
        self.writer.sink.ping()
        return True

    @ray.method(concurrency_group="query")
    def count(self) -> int:
        return self.writer.sink.count()

    # -- embedcluster verify: the store of a running pipeline, read and repaired through its owner

    @ray.method(concurrency_group="query")
    def owner(self) -> dict[str, Any] | None:
        """What this actor recorded beside its embedded store (:func:`announce_owner`), else None."""
        return self._owner

    @ray.method(concurrency_group="query")
    def get_points(self, point_ids: list[str]) -> dict[str, StoredPoint]:
        return self.writer.sink.get_points(point_ids)

    @ray.method(concurrency_group="query")
    def points_page(self, table: str | None, cursor: str | None, limit: int | None = None) -> tuple[list[StoredPoint], str | None]:
        return self.writer.sink.points_page(table, cursor, limit)

    @ray.method(concurrency_group="query")
    def get_state(self, name: str) -> dict[str, Any] | None:
        return self.writer.sink.get_state(name)

    @ray.method(concurrency_group="query")
    def list_states(self, prefix: str) -> dict[str, dict[str, Any]]:
        return self.writer.sink.list_states(prefix)

    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        """A bookkeeping write outside the change stream (``embedcluster deadletter``), between two batches."""
        self.writer.sink.set_state(name, value)

    def upsert_points(self, points: list[VectorPoint]) -> None:
        """A write outside the change stream (``verify --repair``).  In the default
        group, like ``apply``: it runs between two batches, never inside one."""
        self.writer.sink.upsert(points)

    def delete_points(self, point_ids: list[str]) -> None:
        """See :meth:`upsert_points`."""
        self.writer.sink.delete(point_ids)

    def close(self) -> None:
        if self._owner is not None:
            withdraw_owner(self._owner)
        self.writer.sink.close()


def _open_sink_patiently(config: Any, max_delay: float) -> Any:
    """``open_sink``, retried while the store is unreachable.  A writer actor restarted by Ray
    during a sink outage must not die in its constructor (Ray does not restart an actor whose
    constructor failed): it waits here, and the coordinator's calls wait behind it."""
    from actors.retry import Backoff
    from actors.sinks.base import SinkError

    backoff = Backoff(0.5, max_delay)
    while True:
        try:
            return open_sink(config)
        except SinkError as exc:
            if "cannot reach" not in str(exc):  # the server is down, as opposed to refusing us
                raise  # a configuration error: retrying cannot help
            delay = backoff.next()
            logging.getLogger(__name__).warning("writer: the sink is not reachable (%s); retrying in %.1f s",
                                                error_line(exc), delay)
            time.sleep(delay)


def announce_owner(sink: Any) -> dict[str, Any] | None:
    """Record, beside the embedded store at ``sink.path``, how to reach this actor
    (:data:`actors.verify.OWNER_FILE`): its Ray cluster (GCS address and the auth mode to
    join it with), namespace, name, pid."""
    path = getattr(sink, "path", "")
    if not path or path == ":memory:":
        return None
    ctx = ray.get_runtime_context()
    record = {
        "gcs_address": ctx.gcs_address,
        "auth_mode": os.environ.get("RAY_AUTH_MODE", ""),
        "namespace": ctx.namespace,
        "actor": ctx.get_actor_name(),
        "pid": os.getpid(),
        "path": str(Path(path).resolve()),
    }
    target = Path(path) / OWNER_FILE
    tmp = target.with_name(f".{OWNER_FILE}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, target)
    except OSError as exc:  # the pipeline runs without it; only verify cannot reach the store then
        logging.getLogger(__name__).warning("cannot record the store's owner in %s: %s", target, exc)
        return None
    return record


def withdraw_owner(record: dict[str, Any]) -> None:
    """Remove the owner file if it is still this process's (a restarted writer rewrote it otherwise)."""
    target = Path(record["path"]) / OWNER_FILE
    try:
        if json.loads(target.read_text()).get("pid") == record["pid"]:
            target.unlink()
    except (OSError, ValueError):
        pass
