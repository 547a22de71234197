"""Write throughput of the MySQL sink into a private MariaDB (portable dialect).

    python -m benchmarks.bench_writer [--out FILE] [--trials 5] [--rows-per-trial 8192]

Starts a throwaway ``mariadbd`` (``cluster.mariadb_server``), then for each
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--rows-per-trial", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch-sizes", type=str, default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument("--search-queries", type=int, default=5)
    parser.add_argument(
        "--server-arg", action="append", default=None,
        help=f"mariadbd option, repeatable; replaces the defaults {' '.join(DEFAULT_SERVER_ARGS)}",
    )
    args = parser.parse_args(argv)
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
