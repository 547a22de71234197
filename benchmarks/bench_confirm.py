"""How soon the slot confirms a commit: commit -> in the sink vs commit -> confirmed, side by side.

Runs the real pipeline (private PostgreSQL on 127.0.0.1, local Ray on loopback,
durable embedded Qdrant, the default model) and commits one row per
transaction, one at a time, ``--interval`` s apart.  For every commit:

* **in sink**: the coordinator has acknowledged the commit, i.e. the writer
  returned for it (its vector is durable and searchable).  A thread blocks on
  ``PipelineActor.wait_acked`` (no polling of the pipeline);
* **confirmed**: the slot's ``confirmed_flush_lsn`` (``pg_replication_slots``)
  has passed the row, polled every ``--poll-ms`` ms from this process.  Until
  then PostgreSQL keeps the WAL, and a restart would replay the row.

The row's position is the one right after its insert record, before its
commit record (``RETURNING pg_current_wal_insert_lsn()``): a confirmation at
or past it covers this commit and nothing later.  One warm-up trial
(excluded), then ``--trials`` trials of ``--rows`` commits; per trial p50/p99
of both, and the medians over trials.

    python -m benchmarks.bench_confirm [--quick] [--rows 60] [--trials 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import percentile
from benchmarks.common import RESULTS_DIR, print_table, result_header, write_json

DDL = "CREATE TABLE docs (id bigserial PRIMARY KEY, title text, body text)"
SLOT = "bench_confirm"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import psycopg

        from cluster.config import config_from_dict
        from cluster.pgserver import LocalPostgres

        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="ec-bench-confirm-"))
        self.pg = LocalPostgres(self.tmp / "pg")
        self.pg.start()
        self.dsn = self.pg.create_database("bench")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(DDL)
        self.config = config_from_dict(
            {
                "source": {"dsn": self.dsn, "slot": SLOT, "publication": SLOT},
                "tables": [{"name": "public.docs", "text": "{body}", "payload": ["title"]}],
                "embedding": {"model": args.model, "actors": 1},
                "sink": {"kind": "qdrant", "path": str(self.tmp / "qdrant"), "collection": "bench"},
            },
            origin="bench",
            environ={},
        )
        self.writes = psycopg.connect(self.dsn, autocommit=True)
        self.polls = psycopg.connect(self.dsn, autocommit=True)
        self.seq = 0

    def start(self) -> None:
        import ray

        from actors.source_schema import inspect_source
        from cluster import runtime

        runtime.init_ray(self.config, "WARNING")
        specs = inspect_source(self.config.source, self.config.tables)
        self.running = runtime.launch_pipeline(self.config, specs, "WARNING")
        deadline = time.monotonic() + 300
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
            self.writes.close()
            self.polls.close()
            self.pg.stop(mode="immediate")
            shutil.rmtree(self.tmp, ignore_errors=True)

    def confirmed(self) -> int:
        from actors.changes import parse_lsn

        row = self.polls.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
        ).fetchone()
        return parse_lsn(row[0]) or 0

    def one_commit(self) -> tuple[float, float]:
        """(commit -> in sink, commit -> confirmed) in ms for one single-row transaction."""
        import ray

        from actors.changes import parse_lsn

        self.seq += 1
        row = self.writes.execute(
            "INSERT INTO docs (title, body) VALUES (%s, %s) RETURNING pg_current_wal_insert_lsn()::text",
            (f"c{self.seq}", f"commit number {self.seq} of the confirmation benchmark"),
        ).fetchone()
        committed = time.perf_counter()
        lsn = parse_lsn(row[0]) or 0
        in_sink: list[float] = []

        def wait_written() -> None:
            if ray.get(self.running.pipeline.wait_acked.remote(lsn, 60), timeout=90):
                in_sink.append(time.perf_counter())

        waiter = threading.Thread(target=wait_written, daemon=True)
        waiter.start()
        deadline = committed + 60
        poll = self.args.poll_ms / 1000
        while self.confirmed() < lsn:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the slot did not confirm commit {self.seq}")
            time.sleep(poll)
        confirmed = time.perf_counter()
        waiter.join(90)
        if not in_sink:
            raise RuntimeError(f"the pipeline did not write commit {self.seq}")
        return (in_sink[0] - committed) * 1000, (confirmed - committed) * 1000

    def trial(self, rows: int) -> dict[str, Any]:
        sink_ms: list[float] = []
        confirm_ms: list[float] = []
        for _ in range(rows):
            started = time.perf_counter()
            s, c = self.one_commit()
            sink_ms.append(s)
            confirm_ms.append(c)
            rest = self.args.interval - (time.perf_counter() - started)
            if rest > 0:
                time.sleep(rest)
        return {
            "rows": rows,
            "in_sink_ms": summary(sink_ms),
            "confirmed_ms": summary(confirm_ms),
            "confirm_after_sink_ms": summary([c - s for s, c in zip(sink_ms, confirm_ms)]),
        }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.50), 1),
        "p99": round(percentile(values, 0.99), 1),
        "max": round(max(values), 1),
        "mean": round(statistics.fmean(values), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_confirm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer commits (about a minute)")
    ap.add_argument("--rows", type=int, default=0, help="single-row commits per trial (default 60, quick 20)")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--interval", type=float, default=0.25, help="seconds from one commit to the next")
    ap.add_argument("--poll-ms", type=float, default=1.0, help="how often the slot is polled")
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. which code was measured)")
    args = ap.parse_args(argv)
    rows = args.rows or (20 if args.quick else 60)
    out = Path(args.out) if args.out else RESULTS_DIR / f"confirm_cpu{'_quick' if args.quick else ''}.json"

    started = time.perf_counter()
    bench = Bench(args)
    try:
        bench.start()
        warm = bench.trial(max(5, rows // 4))
        trials = [bench.trial(rows) for _ in range(args.trials)]
    finally:
        bench.close()

    def median_of(measure: str, q: str) -> float:
        return round(statistics.median(t[measure][q] for t in trials), 1)

    measures = ("in_sink_ms", "confirmed_ms", "confirm_after_sink_ms")
    medians = {m: {q: median_of(m, q) for q in ("p50", "p99")} for m in measures}
    report = {
        **result_header("confirm", "benchmarks.bench_confirm"),
        "model": args.model,
        "settings": {
            "rows_per_trial": rows, "trials": args.trials, "interval_s": args.interval, "poll_ms": args.poll_ms,
            "sink": "qdrant embedded local mode (durable, SQLite)",
            "warm_up": f"one trial of {warm['rows']} commits, excluded",
            **({"note": args.note} if args.note else {}),
        },
        "medians_over_trials": medians,
        "trials": trials,
        "warm_up": warm,
        "target": {"confirmed_within_ms_of_in_sink": 50},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    write_json(out, report)
    machine = report["machine"]
    print_table(
        f"commit -> in sink / confirmed, single-row commits — {machine.get('cpu_model')}, {machine.get('cores')} cores "
        f"(median over {args.trials} trials of {rows})",
        ["measure", "p50 ms", "p99 ms"],
        [
            ["commit -> in sink (written)", medians["in_sink_ms"]["p50"], medians["in_sink_ms"]["p99"]],
            ["commit -> slot confirmed", medians["confirmed_ms"]["p50"], medians["confirmed_ms"]["p99"]],
            ["in sink -> confirmed", medians["confirm_after_sink_ms"]["p50"], medians["confirm_after_sink_ms"]["p99"]],
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
