"""Pipeline benchmark: PostgreSQL commit -> CDC -> embedding actors -> sink, end to end.

Runs the real pipeline (private PostgreSQL on 127.0.0.1, local Ray on
loopback, the configured sink; default: embedded Qdrant and the default model)
and measures, in one run on the same machine and model:

* **embed-only rows/s**: the same texts straight through the same embedding
  actor pool (no database, no sink): what the model can do here;
* **burst**: N rows inserted in one transaction; rows/s from commit until the
  slot confirms them (every row durably written);
* **pipeline efficiency** = burst rows/s / embed-only rows/s;
* **freshness** at a light steady load (default 10 rows/s, one row per
  transaction): commit -> written (p50/p95/p99): the coordinator has
  acknowledged the commit, so its vector is durable and searchable;
* **steady** at a heavier target rate (default 70 % of embed-only): sustained
  rows/s and the same latency percentiles.

    python -m benchmarks.bench_pipeline [--quick] [--rows 3000] [--out FILE]

``--model null`` runs the same pipeline without a model (:class:`actors.embedder.NullEmbedder`:
hash-seeded vectors, about 20 us a text): the rate of everything around the model, source, fan-out,
writer and the durable store.  Its heavier steady run is left out: this driver's one-row
transactions (one INSERT round trip each) cannot offer rows as fast as that pipeline takes them.

    python -m benchmarks.bench_pipeline --model null --rows 50000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_embed import make_texts  # noqa: E402
from benchmarks.common import (  # noqa: E402
    percentile,
    result_header,
    plot_bars,
    print_table,
    write_json,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DDL = "CREATE TABLE docs (id bigserial PRIMARY KEY, title text, body text)"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import psycopg

        from cluster.config import config_from_dict
        from cluster.pgserver import LocalPostgres

        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ec-bench-pipeline-"))
        self.pg = LocalPostgres(self.tmp / "pg")
        self.pg.start()
        self.dsn = self.pg.create_database("bench")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(DDL)
        sink: dict[str, Any] = {"kind": "qdrant", "path": str(self.tmp / "qdrant"), "collection": "bench"}
        if args.sink_memory:
            sink["path"] = ":memory:"
        if args.sink_url:
            sink = {"kind": "qdrant", "url": args.sink_url, "collection": "bench"}
        self.config = config_from_dict(
            {
                "source": {"dsn": self.dsn, "slot": "bench", "publication": "bench"},
                "tables": [{"name": "public.docs", "text": "{body}", "payload": ["title"]}],
                "embedding": {"model": args.model, "actors": args.actors},
                "sink": sink,
            },
            origin="bench",
            environ={},
        )
        self.seq = 0
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    # -- set-up ---------------------------------------------------------------

    def start(self) -> None:
        from actors.source_schema import inspect_source
        from cluster import runtime

        runtime.init_ray(self.config, "WARNING")
        specs = inspect_source(self.config.source, self.config.tables)
        self.running = runtime.launch_pipeline(self.config, specs, "WARNING")
        self.wait_streaming()

    def wait_streaming(self, timeout: float = 300) -> None:
        import ray

        deadline = time.monotonic() + timeout
        while ray.get(self.running.pipeline.stats.remote())["state"] != "streaming":
            if time.monotonic() > deadline:
                raise RuntimeError("pipeline did not start streaming")
            time.sleep(0.05)

    def close(self) -> None:
        import shutil

        from cluster import runtime

        try:
            self.running.stop()
        finally:
            runtime.shutdown()
            self.conn.close()
            self.pg.stop(mode="immediate")
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------

    def texts(self, n: int) -> list[str]:
        self.seq += 1
        return make_texts(self.args.workload, n, seed=1000 + self.seq)

    def insert_many(self, texts: list[str]) -> int:
        """One transaction (COPY); returns the commit's WAL position."""
        with self.conn.cursor() as cur:
            with cur.copy("COPY docs (title, body) FROM STDIN") as copy:
                for i, t in enumerate(texts):
                    copy.write_row((f"t{i}", t))
        return self.wal_position()

    def wal_position(self) -> int:
        from actors.changes import parse_lsn

        return parse_lsn(self.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])

    def confirmed(self) -> int:
        from actors.changes import parse_lsn

        row = self.conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'bench'").fetchone()
        return parse_lsn(row[0]) or 0

    def wait_confirmed(self, lsn: int, timeout: float = 600) -> float:
        """Returns when the slot has confirmed ``lsn`` (every change up to it durably written).

        The driver blocks on the coordinator until the write is done (no CPU
        taken from the pipeline it measures; polling the slot every 5 ms took
        ~3 % of a 2-core machine with the PostgreSQL backend it queries), then
        reads the slot, which the reader confirms right after the write.
        """
        import ray

        deadline = time.monotonic() + timeout
        if not ray.get(self.running.pipeline.wait_acked.remote(lsn, timeout), timeout=timeout + 30):
            raise RuntimeError("pipeline did not catch up")
        while self.confirmed() < lsn:
            if time.monotonic() > deadline:
                raise RuntimeError("the slot did not confirm what the pipeline wrote")
            time.sleep(0.002)
        return time.perf_counter()

    # -- measurements ---------------------------------------------------------------------

    def embed_only(self, texts: list[str]) -> None:
        import ray

        chunk = self.config.source.max_batch_changes
        chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
        embedders = self.running.embedders
        refs = [embedders[i % len(embedders)].embed.remote(c) for i, c in enumerate(chunks)]
        ray.get(refs)

    def burst(self, texts: list[str]) -> float:
        """Seconds from the commit of ``texts`` (one transaction) until the slot confirms it."""
        lsn = self.insert_many(texts)
        committed = time.perf_counter()
        return self.wait_confirmed(lsn) - committed

    def steady(self, rate: float, seconds: float) -> dict[str, Any]:
        """One row per transaction at ``rate`` rows/s; latency commit -> written.

        A row counts as written when the coordinator has acknowledged its
        commit: its vector is then durable and searchable (the writer answers
        searches from the store it has just written).  One waiter blocks on
        the coordinator for the oldest unwritten commit, so observing costs the
        pipeline no CPU (asking the writer for new ids every 2 ms, as before,
        made up to 500 Ray calls a second; without it the heavier run here
        sustained 410 instead of 381 rows/s).
        """
        import ray

        from actors.changes import parse_lsn

        pipeline = self.running.pipeline
        texts = self.texts(int(rate * seconds) + 1)
        commits: list[tuple[int, float]] = []  # (WAL position of the row, commit time), in commit order
        written_at: list[float] = []
        new_commit = threading.Condition()
        done = threading.Event()

        def observe() -> None:
            while True:
                with new_commit:
                    while len(written_at) == len(commits) and not done.is_set():
                        new_commit.wait()
                    if len(written_at) == len(commits):
                        return
                    lsn = commits[len(written_at)][0]
                acked = ray.get(pipeline.wait_acked.remote(lsn, 600))
                now = time.perf_counter()
                if not acked:
                    raise RuntimeError("pipeline did not catch up")
                with new_commit:
                    while len(written_at) < len(commits) and commits[len(written_at)][0] <= acked:
                        written_at.append(now)

        observer = threading.Thread(target=observe, daemon=True)
        observer.start()
        start = time.perf_counter()
        for i, text in enumerate(texts):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            # The WAL position right after the row's own insert record, before
            # its commit record: an acknowledgement at or past it covers this
            # commit.  A position read after the commit could also cover
            # unrelated WAL logged meanwhile (such as the running-transactions
            # record the background writer logs every 15 s), which only a
            # later idle read acknowledges.
            row = self.conn.execute(
                "INSERT INTO docs (title, body) VALUES (%s, %s) RETURNING pg_current_wal_insert_lsn()::text",
                (f"s{i}", text),
            ).fetchone()
            committed = time.perf_counter()
            lsn = parse_lsn(row[0]) or 0
            with new_commit:
                commits.append((lsn, committed))
                new_commit.notify()
        inserted = time.perf_counter()
        with new_commit:
            done.set()
            new_commit.notify()
        observer.join(timeout=600)
        if len(written_at) < len(commits):
            raise RuntimeError("pipeline did not catch up with the steady load")
        finished = written_at[-1]
        latencies = [(w - c) * 1000 for (_, c), w in zip(commits, written_at)]
        return {
            "target_rows_per_s": rate,
            "rows": len(texts),
            "offered_rows_per_s": round(len(texts) / (inserted - start), 2),
            "sustained_rows_per_s": round(len(texts) / (finished - start), 2),
            "latency_ms": {
                "p50": round(percentile(latencies, 0.50), 1),
                "p95": round(percentile(latencies, 0.95), 1),
                "p99": round(percentile(latencies, 0.99), 1),
                "max": round(max(latencies), 1),
                "mean": round(statistics.fmean(latencies), 1),
            },
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes on 2 cores)")
    ap.add_argument("--rows", type=int, default=0, help="rows per burst trial (default 3000, quick 800)")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--model", default="default")
    ap.add_argument("--workload", default="short", choices=["short", "mixed", "long"])
    ap.add_argument("--light-rate", type=float, default=10.0, help="rows/s of the freshness run")
    ap.add_argument("--light-seconds", type=float, default=0, help="default 30 (quick 15)")
    ap.add_argument("--steady-fraction", type=float, default=0.7, help="heavier steady rate as a fraction of embed-only")
    ap.add_argument("--steady-seconds", type=float, default=0, help="length of the heavier run (default 30, quick 15)")
    ap.add_argument("--sink-url", default="", help="Qdrant server URL (default: embedded local mode)")
    ap.add_argument("--sink-memory", action="store_true",
                    help="in-memory Qdrant (not durable): isolates the pipeline's own cost from the store's")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = args.rows or (800 if args.quick else 3000)
    light_seconds = args.light_seconds or (15 if args.quick else 30)
    null = args.model == "null"
    variant = ("_null" if null else "") + ("_quick" if args.quick else "") + ("_memsink" if args.sink_memory else "") + (
        f"_{args.actors}actors" if args.actors > 1 else "")
    out = Path(args.out) if args.out else RESULTS_DIR / f"pipeline_cpu{variant}.json"

    started = time.perf_counter()
    bench = Bench(args)
    try:
        bench.start()
        warm = bench.texts(200)
        # interleave embed-only and burst trials so drifts on a shared machine hit both
        embed_texts = bench.texts(rows)
        results: dict[str, list[float]] = {"embed_only": [], "burst": []}
        bench.embed_only(warm)
        bench.burst(bench.texts(200))
        for _ in range(args.trials):
            t0 = time.perf_counter()
            bench.embed_only(embed_texts)
            results["embed_only"].append(rows / (time.perf_counter() - t0))
            results["burst"].append(rows / bench.burst(bench.texts(rows)))
        embed_rate = statistics.median(results["embed_only"])
        burst_rate = statistics.median(results["burst"])
        light = bench.steady(args.light_rate, light_seconds)
        heavy_rate = round(embed_rate * args.steady_fraction, 1)
        heavy = None if null else bench.steady(heavy_rate, args.steady_seconds or (15 if args.quick else 30))
        import ray

        stats = ray.get(bench.running.pipeline.stats.remote())
        writer_stats = ray.get(bench.running.writer.stats.remote())
    finally:
        bench.close()

    efficiency = burst_rate / embed_rate
    report = {
        **result_header("pipeline", "benchmarks.bench_pipeline"),
        "model": args.model,
        "settings": {
            "workload": args.workload, "rows_per_trial": rows, "trials": args.trials, "actors": args.actors,
            "sink": ("Qdrant server" if args.sink_url else "embedded Qdrant Edge in a temporary directory (not durable)"
                     if args.sink_memory else "embedded Qdrant Edge (durable: WAL fsync per write call)"),
            "max_batch_changes": bench.config.source.max_batch_changes,
            "batch_size": bench.config.embedding.batch_size,
            "warm_up": "200 rows embed-only and 200 rows end to end, excluded",
        },
        "embed_only_rows_per_s": {"median": round(embed_rate, 1), "trials": [round(x, 1) for x in results["embed_only"]]},
        "burst_rows_per_s": {"median": round(burst_rate, 1), "trials": [round(x, 1) for x in results["burst"]]},
        "pipeline_efficiency": round(efficiency, 3),
        "freshness_light_load": light,
        "steady_heavy_load": heavy if heavy is not None else "not run with the null model (see the module docstring)",
        "pipeline_stats": stats,
        "writer_stats": writer_stats,
        "targets": {"efficiency": 0.9, "freshness_p50_ms": 100, "freshness_p99_ms": 300},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    write_json(out, report)
    print_table(
        f"pipeline, {args.workload} texts, {args.actors} actor(s) — {report['machine'].get('cpu_model')}, {report['machine'].get('cores')} cores",
        ["measure", "value", "target"],
        [
            ["embed-only rows/s (median)", f"{embed_rate:.1f}", ""],
            ["end-to-end burst rows/s (median)", f"{burst_rate:.1f}", ""],
            ["pipeline efficiency", f"{efficiency:.3f}", ">= 0.9"],
            [f"freshness p50 @ {args.light_rate:g} rows/s", f"{light['latency_ms']['p50']} ms", "<= 100 ms"],
            [f"freshness p95 @ {args.light_rate:g} rows/s", f"{light['latency_ms']['p95']} ms", ""],
            [f"freshness p99 @ {args.light_rate:g} rows/s", f"{light['latency_ms']['p99']} ms", "<= 300 ms"],
        ] + ([] if heavy is None else [
            [f"steady {heavy_rate:g} rows/s: sustained", f"{heavy['sustained_rows_per_s']}", ""],
            [f"steady {heavy_rate:g} rows/s: p50 / p99", f"{heavy['latency_ms']['p50']} / {heavy['latency_ms']['p99']} ms", ""],
        ]),
    )
    plot_bars(
        out.with_suffix(".png"), "pipeline throughput (rows/s)", ["embed-only", "end-to-end burst"],
        {"rows/s": [embed_rate, burst_rate]}, "rows/s",
        errors={"rows/s": [(min(results["embed_only"]), max(results["embed_only"])),
                           (min(results["burst"]), max(results["burst"]))]},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
