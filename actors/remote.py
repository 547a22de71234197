"""Ray actors: thin wrappers that host the plain classes in the cluster.

All logic lives in ``PgChangeSource``, ``Embedder`` and ``Writer``; these
wrappers only add what Ray needs (resources, concurrency groups, multiple
return values) so the classes stay testable without Ray.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray

from actors.cdc_reader import PgChangeSource
from actors.changes import ChangeBatch
from actors.embedder import Embedder, EmbeddingConfig, model_workers
from actors.sinks.base import SearchHit, open_sink
from actors.source_schema import TableSpec
from actors.writer import ApplyResult, Writer
from actors.logs import setup_logging
from actors.source_config import SourceConfig


@ray.remote(num_cpus=0)
class CdcReaderActor:
    """Owns the replication connection; hands out change batches in order."""

    def __init__(self, source: SourceConfig, specs: dict[str, TableSpec], log_level: str = "INFO") -> None:
        setup_logging(log_level)
        self.source = PgChangeSource(source, specs)

    def slot_exists(self) -> bool:
        return self.source.slot_exists()

    def start(self, backfill: bool) -> dict[str, Any]:
        return self.source.start(backfill)

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
        }
        return meta, batch

    def ack(self, lsn: int) -> None:
        self.source.ack(lsn)

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
        self.embedder = Embedder(
            model=config.model,
            device=config.device,
            batch_size=config.batch_size,
            max_batch_tokens=config.max_batch_tokens,
            threads=threads,
            dtype=config.dtype,
            max_length=config.max_length,
            compile=config.compile,
            threads_per_worker=config.threads_per_worker,
        )

    def info(self) -> dict[str, Any]:
        e = self.embedder
        return {"dimension": e.dimension, "device": str(e.device), "dtype": e.dtype_name, "max_length": e.max_length,
                "workers": e.workers, "threads_per_worker": e.threads_per_worker}

    def embed_batch(self, batch: ChangeBatch) -> np.ndarray | None:
        texts = batch.texts_to_embed()
        return self.embedder.embed(texts) if texts else None

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def stats(self) -> dict[str, Any]:
        return self.embedder.stats.as_dict()


@ray.remote(num_cpus=0, concurrency_groups={"query": 4})
class WriterActor:
    """The only writer of the sink.  Searches run in their own concurrency group.

    ``apply`` stays in the default group (one thread).  The coordinator keeps at
    most one ``apply`` in flight, so batches are applied strictly in order.
    """

    def __init__(self, sink: Any, slot: str, log_level: str = "INFO") -> None:
        setup_logging(log_level)
        self.writer = Writer(open_sink(sink), slot)

    def open(self, dimension: int) -> bool:
        self.writer.open(dimension)
        return True

    def backfill_state(self) -> dict[str, Any] | None:
        return self.writer.backfill_state()

    def begin_backfill(self, tables: list[str], publication: str) -> None:
        self.writer.begin_backfill(tables, publication)

    def apply(self, batch: ChangeBatch, vectors: np.ndarray | None) -> ApplyResult:
        return self.writer.apply(batch, vectors)

    @ray.method(concurrency_group="query")
    def search(self, vector: np.ndarray, k: int) -> list[SearchHit]:
        return self.writer.sink.search(vector, k)

    @ray.method(concurrency_group="query")
    def stats(self) -> dict[str, Any]:
        return self.writer.stats()

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

    def close(self) -> None:
        self.writer.sink.close()
