"""Write throughput of a sink: the MySQL sink into a private MariaDB, or the embedded Qdrant Edge store.

    python -m benchmarks.bench_writer [--out FILE] [--trials 5] [--rows-per-trial 8192]
    python -m benchmarks.bench_writer --sink edge [--large 1000000] [--random-probe 20000]

MariaDB (the default): starts a throwaway ``mariadbd`` (``cluster.mariadb_server``), then for each
batch size upserts fresh 384-d random unit vectors through ``MySQLSink.upsert``
-- one committed (durable) transaction per batch, exactly what the pipeline's
writer does.  Per batch size: a warm-up that is not measured, then several
trials (interleaved across batch sizes); the median rows/s and the spread
(min, max, interquartile range) are reported.  A measured exact-search
latency of the portable dialect at the final table size is included, since
that is its real limit.  Results go to ``benchmarks/results/writer_mariadb.json``
(with machine information, server settings and the load average) and a table
is printed.  The server gets a 2 GiB buffer pool and 1 GiB redo log by default
(see ``DEFAULT_SERVER_ARGS`` for why); ``--server-arg`` replaces them.

Edge (``--sink edge``, results in ``benchmarks/results/writer_edge.json`` + ``.png``): the same
points through ``EdgeSink`` in a temporary directory, per batch size and per case, trials
interleaved: ``durable`` (the sink as shipped: one WAL fsync per call, a checkpoint flush every
``CHECKPOINT_S``), ``no_sync`` (the same store with the sync switched off: what Edge alone
guarantees, see ``actors/sinks/qdrant/edge.py``) and ``writer_like`` (durable, and per batch
the upsert plus the position's ``set_state`` the writer records: two syncs, one per shard).  The
sink's own sync counters give the cost of one sync.  ``--large N`` then holds N points in one
store (generated in chunks, so the process's RSS is the store's), lets the sink build its index
as it does in the pipeline, and measures in-process search latency and recall@10 against exact
numpy brute force on a sample of queries; ``--random-probe N`` measures recall on N i.i.d.
random unit vectors, the data HNSW handles worst.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import SecretStr

from actors.changes import point_id, text_hash
from actors.sinks.base import VectorPoint
from actors.sinks.mysql import MySQLSink
from actors.sinks.mysql.config import MySQLSinkConfig
from benchmarks.common import machine_info as host_info
from benchmarks.common import result_header
from cluster.mariadb_server import MariaDBServer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "writer_mariadb.json"
DEFAULT_EDGE_OUT = Path(__file__).resolve().parent / "results" / "writer_edge.json"
DEFAULT_BATCH_SIZES = (64, 128, 256, 512, 1024)
# A server sized for the ~0.5 GB this benchmark writes.  With MariaDB's stock
# 128 MiB buffer pool and 96 MiB redo log, throughput fell steadily over the
# run (about 15k -> 5-6k rows/s at every batch size) once the data outgrew the
# pool: point ids are UUIDs, so inserts land on random B-tree pages and the
# measurement becomes one of page flushing, not of the sink.
DEFAULT_SERVER_ARGS = ["--innodb-buffer-pool-size=2G", "--innodb-log-file-size=1G"]


def make_points(
    start: int, n: int, dim: int, rng: np.random.Generator, table: str = "public.docs"
) -> list[VectorPoint]:
    """``n`` points with unit-norm random vectors and realistic text/payload sizes."""
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    words = ["vector", "index", "replication", "postgres", "embedding", "cluster", "search", "latency"]
    points = []
    for i in range(n):
        key = start + i
        text = " ".join(words[(key + j) % len(words)] for j in range(28))  # ~200 characters
        points.append(
            VectorPoint(
                id=point_id(table, [key]),
                table=table,
                key=[key],
                vector=vecs[i],
                text=text,
                text_hash=text_hash(text),
                payload={"id": key, "title": f"document {key}", "price": key % 97},
            )
        )
    return points


def machine_info(server: MariaDBServer) -> dict[str, Any]:
    """The common machine description plus the private server's durability-relevant settings."""
    with server.root_connection() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT @@innodb_flush_log_at_trx_commit, @@innodb_buffer_pool_size, @@max_allowed_packet, "
            "@@innodb_log_file_size"
        )
        flush, pool, packet, redo = cur.fetchone()
    import pymysql

    return {
        **host_info(),
        "pymysql": pymysql.__version__,
        "mariadb_version": server.version,
        "mariadb_settings": {
            "innodb_flush_log_at_trx_commit": int(flush),
            "innodb_buffer_pool_size_mib": int(pool) // (1 << 20),
            "max_allowed_packet_mib": int(packet) // (1 << 20),
            "innodb_log_file_size_mib": int(redo) // (1 << 20),
            "extra_server_args": list(server.extra_args),
        },
        "datadir_filesystem_note": "private server in a temporary directory on the local disk",
    }


def _sink_config(server: MariaDBServer, table: str) -> MySQLSinkConfig:
    return MySQLSinkConfig(
        kind="mysql", dsn=server.dsn(), table=table, dialect="portable", password=SecretStr(server.password)
    )


class _BatchRun:
    """One batch size: its own table and sink, fresh keys for every trial."""

    def __init__(self, server: MariaDBServer, batch: int, dim: int, seed: int) -> None:
        self.batch = batch
        self.dim = dim
        self.table = f"bench_b{batch}"
        self.sink = MySQLSink(_sink_config(server, self.table))
        self.sink.ensure_ready(dim)
        self.rng = np.random.default_rng(seed)
        self.next_key = 0
        self.rates: list[float] = []

    def batches(self, n_rows: int) -> list[list[VectorPoint]]:
        pts = make_points(self.next_key, n_rows, self.dim, self.rng)
        self.next_key += n_rows
        return [pts[i : i + self.batch] for i in range(0, n_rows, self.batch)]

    def warm_up(self) -> None:
        # Not measured: connection, buffer pool, table and index pages.
        for b in self.batches(max(2 * self.batch, 1024)):
            self.sink.upsert(b)

    def trial(self, rows: int) -> float:
        work = self.batches(rows)  # generated before the clock starts
        started = time.perf_counter()
        for b in work:
            self.sink.upsert(b)
        rate = rows / (time.perf_counter() - started)
        self.rates.append(rate)
        return rate

    def summary(self, rows_per_trial: int) -> dict[str, Any]:
        results = self.rates
        ordered = sorted(results)
        med = statistics.median(results)
        q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
        out = {
            "batch_size": self.batch,
            "trials": len(results),
            "rows_per_trial": rows_per_trial,
            "rows_per_s": [round(r, 1) for r in results],
            "median_rows_per_s": round(med, 1),
            "min_rows_per_s": round(ordered[0], 1),
            "max_rows_per_s": round(ordered[-1], 1),
            "iqr_rows_per_s": round(q[2] - q[0], 1),
            "spread_pct": round(100 * (ordered[-1] - ordered[0]) / med, 1),
            "commits_per_s_median": round(med / self.batch, 1),
            "table_rows_at_end": self.sink.count(),
        }
        self.sink.close()
        return out


def measure_search(server: MariaDBServer, table: str, dim: int, queries: int, seed: int) -> dict[str, Any]:
    """Exact (portable) search latency over a whole table."""
    sink = MySQLSink(_sink_config(server, table))
    sink.ensure_ready(dim)
    rows = sink.count()
    rng = np.random.default_rng(seed)
    sink.search(rng.normal(size=dim).astype(np.float32), 10)  # warm-up
    times = []
    for _ in range(queries):
        q = rng.normal(size=dim).astype(np.float32)
        started = time.perf_counter()
        hits = sink.search(q, 10)
        times.append(time.perf_counter() - started)
        assert len(hits) == 10
    sink.close()
    med = statistics.median(times)
    return {
        "table_rows": rows,
        "dimension": dim,
        "k": 10,
        "queries": queries,
        "latency_s": [round(t, 4) for t in times],
        "median_latency_s": round(med, 4),
        "rows_scanned_per_s": round(rows / med, 0),
    }


# -- Qdrant Edge ----------------------------------------------------------------------------------

#: durable: the sink as shipped; no_sync: its WAL sync off (kill -9 safe, not power-loss safe);
#: flush_each_call: a full flush() in every call (the alternative to the WAL fsync);
#: writer_like: durable, upsert + the position's set_state per batch, as the writer does
EDGE_CASES = ("durable", "no_sync", "flush_each_call", "writer_like")
DEFAULT_EDGE_BATCH_SIZES = (64, 128, 256, 512, 1024)


def _rss() -> dict[str, float]:
    """This process's resident and peak resident memory, MiB (/proc/self/status)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                    out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    # RssFile: pages of memory-mapped store files (vectors, WAL) resident now; the kernel may drop them
    return {"rss_mib": out.get("VmRSS", 0.0), "peak_rss_mib": out.get("VmHWM", 0.0),
            "anon_mib": out.get("RssAnon", 0.0), "file_mib": out.get("RssFile", 0.0)}


def _du_mib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20), 1)


class _EdgeRun:
    """One case at one batch size: its own store, fresh keys for every trial."""

    def __init__(self, root: Path, case: str, batch: int, dim: int, seed: int) -> None:
        from actors.sinks.qdrant import EdgeSink, QdrantSinkConfig

        self.case, self.batch, self.dim = case, batch, dim
        self.sink = EdgeSink(QdrantSinkConfig(path=str(root / f"{case}_b{batch}"), collection="bench"))
        self.sink.ensure_ready(dim)
        if case == "no_sync":
            self.sink.points.durable = self.sink.state.durable = False
        self.rng = np.random.default_rng(seed)
        self.next_key = 0
        self.rates: list[float] = []
        self.trials: list[dict[str, Any]] = []

    def batches(self, n_rows: int) -> list[list[VectorPoint]]:
        pts = make_points(self.next_key, n_rows, self.dim, self.rng)
        self.next_key += n_rows
        return [pts[i : i + self.batch] for i in range(0, n_rows, self.batch)]

    def _write(self, work: list[list[VectorPoint]]) -> None:
        from actors.sinks.qdrant import edge

        checkpoint = edge.CHECKPOINT_S
        if self.case == "flush_each_call":
            edge.CHECKPOINT_S = 0.0  # every sync is a checkpoint: flush() then the WAL fsync
        try:
            for position, b in enumerate(work):
                self.sink.upsert(b)
                if self.case == "writer_like":
                    self.sink.set_state("slot/bench", {"position": self.next_key + position})
        finally:
            edge.CHECKPOINT_S = checkpoint

    def warm_up(self) -> None:
        self._write(self.batches(max(2 * self.batch, 1024)))

    def trial(self, rows: int, meter: Any) -> float:
        work = self.batches(rows)  # generated before the clock starts
        before, snap = self.sink.sync_stats(), meter.snapshot()
        started = time.perf_counter()
        self._write(work)
        seconds = time.perf_counter() - started
        after, cpu = self.sink.sync_stats(), meter.delta(snap, meter.snapshot())
        syncs = after["syncs"] - before["syncs"]
        sync_s = after["sync_s"] - before["sync_s"]
        self.rates.append(rows / seconds)
        self.trials.append({
            "rows_per_s": round(rows / seconds, 1), "seconds": round(seconds, 4), "syncs": syncs,
            "sync_ms_mean": round(1000 * sync_s / syncs, 3) if syncs else None,
            "sync_share": round(sync_s / seconds, 3),
            "checkpoints": after["checkpoints"] - before["checkpoints"],
            "other_cores": cpu.get("other_cores"), "own_cpu_s": cpu.get("own_cpu_s"),
        })
        return rows / seconds

    def summary(self, rows_per_trial: int) -> dict[str, Any]:
        clean = [r for r, t in zip(self.rates, self.trials) if (t["other_cores"] or 0.0) <= 0.2]
        ordered = sorted(self.rates)
        med = statistics.median(self.rates)
        q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
        sync_ms = [t["sync_ms_mean"] for t in self.trials if t["sync_ms_mean"] is not None]
        out = {
            "case": self.case,
            "batch_size": self.batch,
            "trials": len(self.rates),
            "rows_per_trial": rows_per_trial,
            "rows_per_s": [round(r, 1) for r in self.rates],
            "median_rows_per_s": round(med, 1),
            "median_clean_rows_per_s": round(statistics.median(clean), 1) if clean else None,
            "clean_trials": len(clean),
            "min_rows_per_s": round(ordered[0], 1),
            "max_rows_per_s": round(ordered[-1], 1),
            "iqr_rows_per_s": round(q[2] - q[0], 1),
            "spread_pct": round(100 * (ordered[-1] - ordered[0]) / med, 1),
            "median_sync_ms": round(statistics.median(sync_ms), 3) if sync_ms else None,
            "median_sync_share": statistics.median(t["sync_share"] for t in self.trials),
            "trial_detail": self.trials,
            "points_at_end": self.sink.count(),
            "index_builds": self.sink.optimizes,
        }
        self.sink.close()
        return out


def _edge_cost_breakdown(root: Path, dim: int, rows: int = 8192, batch: int = 256, reps: int = 3) -> dict[str, Any]:
    """Microseconds per point of each step of ``EdgeSink.upsert`` (median of ``reps``), on the same points.

    ``layout``: the stored payload and its size bound (this sink's Python); ``bm25``: the sparse vector
    of the text; ``point``: building ``qdrant_edge.Point`` (the binding converts the vector and the
    payload); ``update``: ``EdgeShard.update`` with the sink's shard (dense + BM25, table and
    generation indexes); ``update_minimal``: the same vectors with a one-field payload, no sparse
    vector and no payload index (the bare store).
    """
    import uuid

    import qdrant_edge as qe

    from actors.sinks.qdrant import EdgeSink, QdrantSinkConfig, layout

    rng = np.random.default_rng(99)
    steps: dict[str, list[float]] = {k: [] for k in ("layout", "bm25", "point", "update", "point_minimal",
                                                      "update_minimal")}
    for rep in range(reps):
        sink = EdgeSink(QdrantSinkConfig(path=str(root / f"breakdown{rep}"), collection="bench"))
        sink.ensure_ready(dim)
        bare = qe.EdgeShard.create(str(root / f"bare{rep}"), qe.EdgeConfig(
            vectors={"": qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)}))
        pts = make_points(rep * rows, rows, dim, rng)
        vectors = np.stack([p.vector for p in pts]).tolist()
        t = time.perf_counter()
        payloads = [layout.stored_payload(p) for p in pts]
        for p, payload in zip(pts, payloads):
            layout.point_bytes(p.id, payload, dim, 10)
        steps["layout"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sparse = [sink._bm25.embed_document(p.text) for p in pts]
        steps["bm25"].append(time.perf_counter() - t)
        t = time.perf_counter()
        built = [qe.Point(p.id, {"": v, "bm25": sv}, payload) for p, v, sv, payload in zip(pts, vectors, sparse, payloads)]
        steps["point"].append(time.perf_counter() - t)
        t = time.perf_counter()
        minimal = [qe.Point(str(uuid.UUID(p.id)), v, {"id": i}) for i, (p, v) in enumerate(zip(pts, vectors))]
        steps["point_minimal"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, rows, batch):
            sink.points.shard.update(qe.UpdateOperation.upsert_points(built[i : i + batch]))
        steps["update"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, rows, batch):
            bare.update(qe.UpdateOperation.upsert_points(minimal[i : i + batch]))
        steps["update_minimal"].append(time.perf_counter() - t)
        sink.close()
        bare.close()
    us = {k: round(1e6 * statistics.median(v) / rows, 1) for k, v in steps.items()}
    return {
        "rows": rows, "batch_size": batch, "repetitions": reps, "us_per_point": us,
        "sink_path_us_per_point": round(us["layout"] + us["bm25"] + us["point"] + us["update"], 1),
        "bare_store_rows_per_s": round(1e6 / (us["point_minimal"] + us["update_minimal"]), 1),
        "note": "no sync in any step; the sink path adds its per-call sync (see sync_cost)",
    }


def _mixture_centers(n: int, dim: int, seed: int) -> np.ndarray:
    centers = np.random.default_rng(seed).normal(size=(max(1, n // 100), dim)).astype(np.float32)
    return centers / np.linalg.norm(centers, axis=1, keepdims=True)


def _mixture_chunk(centers: np.ndarray | None, start: int, n: int, dim: int, seed: int) -> np.ndarray:
    """Points ``start .. start + n`` of a data set, the same every time they are drawn (a seed per chunk).

    With ``centers``: a mixture around them (unit center + N(0, I/dim) noise, normalised: cosine about
    0.7 to its center, about 0.5 between two points of one center); without: i.i.d. random unit vectors.
    """
    rng = np.random.default_rng([seed, start])
    noise = rng.normal(size=(n, dim)).astype(np.float32)
    if centers is None:
        x = noise
    else:
        x = centers[rng.integers(0, len(centers), n)] + noise / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


#: points per generated chunk of the large run (its vectors are drawn per chunk: exact search redraws them)
_HOLD_CHUNK = 8192


def _exact_top10(centers: np.ndarray | None, n: int, dim: int, seed: int, queries: np.ndarray,
                 chunk: int = _HOLD_CHUNK) -> np.ndarray:
    """The keys of the 10 nearest stored points of every query, by numpy brute force over all ``n``."""
    best_s = np.full((len(queries), 10), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 10), np.int64)
    for start in range(0, n, chunk):
        block = _mixture_chunk(centers, start, min(chunk, n - start), dim, seed)
        sims = queries @ block.T
        s = np.concatenate([best_s, sims], axis=1)
        i = np.concatenate([best_i, np.arange(start, start + block.shape[0])[None, :].repeat(len(queries), 0)], axis=1)
        top = np.argpartition(-s, 9, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def _held_points(start: int, vectors: np.ndarray, table: str = "public.large") -> list[VectorPoint]:
    out = []
    for j, v in enumerate(vectors):
        key = start + j
        text = f"document {key} about topic {key % 997}"
        out.append(VectorPoint(point_id(table, [key]), table, [key], v, text, text_hash(text),
                               {"id": key, "group": key % 97}))
    return out


def _search_latency_and_recall(sink: Any, centers: np.ndarray | None, n: int, dim: int, seed: int,
                               timed: int, checked: int, efs: tuple[int | None, ...]) -> dict[str, Any]:
    from actors.sinks.qdrant import edge

    queries = _mixture_chunk(centers, 10**12, max(timed, checked), dim, seed + 1)  # never stored points
    exact = _exact_top10(centers, n, dim, seed, queries[:checked])
    out: dict[str, Any] = {"timed_queries": timed, "recall_queries": checked, "k": 10, "by_hnsw_ef": []}
    default = edge.SEARCH_HNSW_EF
    try:
        for ef in efs:
            edge.SEARCH_HNSW_EF = ef
            for q in queries[:20]:
                sink.search(q, 10)  # warm-up, not measured
            latency = []
            for q in queries[:timed]:
                started = time.perf_counter()
                sink.search(q, 10)
                latency.append(time.perf_counter() - started)
            recall = []
            for q, want in zip(queries[:checked], exact):
                got = {h.key[0] for h in sink.search(q, 10)}
                recall.append(len(got & set(want.tolist())) / 10)
            lat = sorted(latency)
            out["by_hnsw_ef"].append({
                "hnsw_ef": ef if ef is not None else "edge default",
                "p50_ms": round(1000 * statistics.median(lat), 3),
                "p95_ms": round(1000 * lat[int(0.95 * (len(lat) - 1))], 3),
                "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 3),
                "recall_at_10": round(float(np.mean(recall)), 4),
                "min_recall_at_10": round(float(np.min(recall)), 2),
            })
    finally:
        edge.SEARCH_HNSW_EF = default
    return out


def _hold(root: Path, name: str, n: int, dim: int, clustered: bool, seed: int, timed: int, checked: int,
          efs: tuple[int | None, ...]) -> dict[str, Any]:
    """N points in one embedded store, written in writer-like batches; index built as the sink does."""
    import gc

    from actors.sinks.qdrant import EdgeSink, QdrantSinkConfig, edge
    from benchmarks.common import CpuMeter

    meter = CpuMeter()
    snap = meter.snapshot()
    centers = _mixture_centers(n, dim, seed) if clustered else None
    gc.collect()
    rss_before = _rss()
    sink = EdgeSink(QdrantSinkConfig(path=str(root / name), collection="bench"))
    sink.ensure_ready(dim)
    write_s = 0.0
    started = time.perf_counter()
    batch, chunk = 256, _HOLD_CHUNK
    for start in range(0, n, chunk):
        vectors = _mixture_chunk(centers, start, min(chunk, n - start), dim, seed)
        pts = _held_points(start, vectors)
        for i in range(0, len(pts), batch):
            t = time.perf_counter()
            sink.upsert(pts[i : i + batch])
            write_s += time.perf_counter() - t
        if start // chunk % 12 == 0:
            print(f"  {name}: {start + len(pts):,} points, {time.perf_counter() - started:.0f} s "
                  f"({sink.optimizes} index builds, {sink.optimize_s:.0f} s)", flush=True)
    built_in_writes = sink.optimize_s
    final_build = sink.optimize()  # the points since the last build, so that every point is indexed
    elapsed = time.perf_counter() - started
    gc.collect()
    rss_built = _rss()
    result = {
        "points": n,
        "data": "mixture of n/100 random unit centers + N(0, I/384) noise, normalised" if clustered
        else "i.i.d. random unit vectors (normal, normalised)",
        "batch_size": batch,
        "write_calls_s": round(write_s, 1),
        "index_builds_in_writes": sink.optimizes - 1,
        "index_build_s_in_writes": round(built_in_writes, 1),
        "final_index_build_s": round(final_build, 1),
        "total_s": round(elapsed, 1),
        "rows_per_s_including_index_builds": round(n / elapsed, 1),
        "rows_per_s_write_calls_without_builds": round(n / max(1e-9, write_s - built_in_writes), 1),
        "index_after_points": edge.INDEX_AFTER_POINTS,
        "segments": sink.points.shard.info().segments_count,
        "indexed_vectors": sink.points.shard.info().indexed_vectors_count,
        "rss_before_store_mib": rss_before["rss_mib"],
        "rss_after_build_mib": rss_built["rss_mib"],
        "rss_after_build_anon_mib": rss_built["anon_mib"],
        "rss_after_build_file_mapped_mib": rss_built["file_mib"],
        "rss_before_store_anon_mib": rss_before["anon_mib"],
        "peak_rss_mib": rss_built["peak_rss_mib"],
        "store_on_disk_mib": _du_mib(root / name),
        "cpu_while_writing_and_indexing": meter.delta(snap, meter.snapshot()),
    }
    result["search"] = _search_latency_and_recall(sink, centers, n, dim, seed, timed, checked, efs)
    result["rss_after_search_mib"] = _rss()["rss_mib"]
    sink.close()
    return result


def run_edge(args: argparse.Namespace) -> int:
    """``--sink edge``: throughput cases, then the large run and the random probe (see the module docstring)."""
    import shutil
    import tempfile

    from actors.sinks.qdrant import edge
    from benchmarks.common import CpuMeter, plot_bars, write_json

    out = args.out or DEFAULT_EDGE_OUT
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()] if args.batch_sizes else list(DEFAULT_EDGE_BATCH_SIZES)
    info = {**host_info(), "qdrant_edge_py": _edge_version(),
            "store_filesystem_note": "temporary directory on the local disk (the same disk as sink.path by default)"}
    print(f"Qdrant Edge {info['qdrant_edge_py']} on {info['cpu_model']} ({info['cores']} usable cores); "
          f"{args.trials} trials x {args.rows_per_trial} rows, dim {args.dim}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="bench-edge-", dir=os.environ.get("BENCH_EDGE_DIR")))
    meter = CpuMeter()
    result: dict[str, Any] = {}
    try:
        runs = [_EdgeRun(root, case, batch, args.dim, seed=2000 + i)
                for i, (case, batch) in enumerate((c, b) for b in sizes for c in EDGE_CASES)]
        for r in runs:
            r.warm_up()
        for t in range(args.trials):  # interleaved: drifts of a shared machine hit every case alike
            line = [f"{r.case[:7]}/b{r.batch}={r.trial(args.rows_per_trial, meter):.0f}" for r in runs]
            print(f"  trial {t + 1}/{args.trials} rows/s: {' '.join(line)}", flush=True)
        upserts = [r.summary(args.rows_per_trial) for r in runs]
        by = {(u["case"], u["batch_size"]): u for u in upserts}
        sync_cost = []
        for b in sizes:
            durable, free = by[("durable", b)]["median_rows_per_s"], by[("no_sync", b)]["median_rows_per_s"]
            sync_cost.append({
                "batch_size": b, "durable_rows_per_s": durable, "no_sync_rows_per_s": free,
                "durable_over_no_sync": round(durable / free, 3),
                "extra_ms_per_call": round(1000 * (b / durable - b / free), 3),
                "median_sync_ms": by[("durable", b)]["median_sync_ms"],
                "flush_each_call_rows_per_s": by[("flush_each_call", b)]["median_rows_per_s"],
                "writer_like_rows_per_s": by[("writer_like", b)]["median_rows_per_s"],
            })
        result = {
            **result_header("EdgeSink.upsert into an embedded Qdrant Edge store (one WAL fsync per call)",
                            "benchmarks.bench_writer", info),
            "dimension": args.dim,
            "vectors": "random normal, L2-normalised float32; text ~200 characters, 3 payload fields (make_points)",
            "warmup": "max(2 x batch, 1024) rows per case and batch size, excluded",
            "trial_order": "interleaved across cases and batch sizes",
            "settings": {"checkpoint_s": edge.CHECKPOINT_S, "index_after_points": edge.INDEX_AFTER_POINTS,
                         "bm25": "computed from the text at every upsert (sparse vector 'bm25', IDF)"},
            "upsert": upserts,
            "sync_cost": sync_cost,
        }
        result["cost_breakdown"] = _edge_cost_breakdown(root, args.dim)
        print(f"cost per point (us): {result['cost_breakdown']['us_per_point']}", flush=True)
        efs: tuple[int | None, ...] = (None, 64, 128, 256)
        if args.random_probe:
            print(f"random probe: {args.random_probe:,} i.i.d. random unit vectors")
            result["random_probe"] = _hold(root, "random", args.random_probe, args.dim, False, 11,
                                           min(args.large_queries, 200), args.recall_queries, (None, 128, 256, 512))
            shutil.rmtree(root / "random", ignore_errors=True)
        if args.large:
            print(f"large run: {args.large:,} points held in one embedded store")
            result["large"] = _hold(root, "large", args.large, args.dim, True, 7, args.large_queries,
                                    args.recall_queries, efs)
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_json(out, result)
    plot_bars(out.with_suffix(".png"),
              f"EdgeSink.upsert, {args.dim}-d, rows/s by batch size (median of {args.trials} interleaved trials; "
              "whiskers: min/max)",
              [str(b) for b in sizes],
              {c: [by[(c, b)]["median_rows_per_s"] for b in sizes] for c in EDGE_CASES},
              "rows/s",
              errors={c: [(by[(c, b)]["min_rows_per_s"], by[(c, b)]["max_rows_per_s"]) for b in sizes]
                      for c in EDGE_CASES})
    print(f"\n{'batch':>6} " + " ".join(f"{c:>16}" for c in EDGE_CASES) + f" {'sync ms':>8}")
    for b in sizes:
        print(f"{b:>6} " + " ".join(f"{by[(c, b)]['median_rows_per_s']:>16.0f}" for c in EDGE_CASES)
              + f" {by[('durable', b)]['median_sync_ms'] or 0:>8.2f}")
    for name in ("random_probe", "large"):
        if name in result:
            r = result[name]
            print(f"\n{name}: {r['points']:,} points in {r['total_s']:.0f} s (index builds {r['index_build_s_in_writes']:.0f} s "
                  f"+ {r['final_index_build_s']:.0f} s), RSS {r['rss_after_build_mib']:.0f} MiB (before the store "
                  f"{r['rss_before_store_mib']:.0f}), {r['store_on_disk_mib']:.0f} MiB on disk")
            for s in r["search"]["by_hnsw_ef"]:
                print(f"  hnsw_ef {s['hnsw_ef']}: p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms, "
                      f"recall@10 {s['recall_at_10']:.3f}")
    return 0


def _edge_version() -> str:
    from importlib.metadata import version

    return version("qdrant-edge-py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sink", choices=("mariadb", "edge"), default="mariadb",
                        help="mariadb: the MySQL sink; edge: the embedded Qdrant Edge store")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {DEFAULT_OUT}, or {DEFAULT_EDGE_OUT} with --sink edge)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rows-per-trial", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-sizes", type=str, default="",
                        help=f"default {','.join(map(str, DEFAULT_BATCH_SIZES))}")
    parser.add_argument("--search-queries", type=int, default=5)
    parser.add_argument(
        "--server-arg", action="append", default=None,
        help=f"mariadbd option, repeatable; replaces the defaults {' '.join(DEFAULT_SERVER_ARGS)}",
    )
    parser.add_argument("--large", type=int, default=0, help="edge: points of the large run (0: none)")
    parser.add_argument("--large-queries", type=int, default=500, help="edge: timed searches of the large run")
    parser.add_argument("--recall-queries", type=int, default=200, help="edge: queries checked against exact search")
    parser.add_argument("--random-probe", type=int, default=0, help="edge: points of the i.i.d. random recall probe")
    args = parser.parse_args(argv)
    if args.sink == "edge":
        return run_edge(args)
    args.out = args.out or DEFAULT_OUT
    args.batch_sizes = args.batch_sizes or ",".join(map(str, DEFAULT_BATCH_SIZES))
    server_args = DEFAULT_SERVER_ARGS if args.server_arg is None else args.server_arg
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]

    with MariaDBServer(extra_args=server_args) as server:
        info = machine_info(server)
        print(f"MariaDB {server.version} on {info['cpu_model']} ({info['cores']} usable cores), "
              f"Python {info['python']}; {args.trials} trials x {args.rows_per_trial} rows, dim {args.dim}")
        load_before = os.getloadavg()
        batch_runs = [_BatchRun(server, batch, args.dim, seed=1000 + i) for i, batch in enumerate(sizes)]
        for br in batch_runs:
            br.warm_up()
        # Trials are interleaved across batch sizes so that background load
        # drifts affect every size alike instead of one size's whole series.
        for t in range(args.trials):
            line = []
            for br in batch_runs:
                line.append(f"b{br.batch}={br.trial(args.rows_per_trial):.0f}")
            print(f"  trial {t + 1}/{args.trials} rows/s: {' '.join(line)}", flush=True)
        runs = [br.summary(args.rows_per_trial) for br in batch_runs]
        search = measure_search(server, f"bench_b{sizes[-1]}", args.dim, args.search_queries, seed=7)
        info["load_average_1_5_15_before"] = [round(x, 2) for x in load_before]
        info["load_average_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]

    result = {
        **result_header("MySQLSink.upsert into MariaDB, portable dialect (durable commit per batch)",
                        "benchmarks.bench_writer", info),
        "dimension": args.dim,
        "vectors": "random normal, L2-normalised float32",
        "warmup": "max(2 x batch, 1024) rows per batch size, excluded",
        "trial_order": "interleaved across batch sizes",
        "upsert": runs,
        "portable_exact_search": search,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(f"{'batch':>6} {'median rows/s':>14} {'min':>9} {'max':>9} {'IQR':>8} {'spread':>7} {'commits/s':>10}")
    for r in runs:
        print(f"{r['batch_size']:>6} {r['median_rows_per_s']:>14.0f} {r['min_rows_per_s']:>9.0f} "
              f"{r['max_rows_per_s']:>9.0f} {r['iqr_rows_per_s']:>8.0f} {r['spread_pct']:>6.1f}% "
              f"{r['commits_per_s_median']:>10.1f}")
    print(f"\nportable exact search, {search['table_rows']} rows x {search['dimension']}-d, k=10: "
          f"median {search['median_latency_s'] * 1000:.0f} ms ({search['rows_scanned_per_s']:.0f} rows/s scanned)")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
