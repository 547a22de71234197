"""What watching the pipeline costs: burst throughput while a client scrapes ``/metrics`` or
``/stats`` 20 times a second, against nobody watching, in one run.

``python -m benchmarks.bench_scrape`` (or ``embedcluster bench scrape``): ``embedcluster run`` (default
model; the MySQL sink on a private MariaDB unless ``--sink qdrant``) on a private PostgreSQL; each trial inserts ``--rows`` rows in one
transaction and times commit -> the slot confirms them (read from PostgreSQL every 20 ms, which
costs the pipeline nothing it would notice).  Cases: nobody watching; the search app's
``/metrics`` and ``/stats`` (through Ray Serve); the same two from ``[serve] metrics_port`` (served by
the coordinator itself).  They are interleaved within each trial, warm-up excluded; the result is
each watched case's median rows/s over the unwatched one.

Throughput differences of 1-3 % are within this machine's run-to-run noise, so the run also measures
what the scraping itself costs in CPU: with nothing written, ``--idle-seconds`` of each case
(interleaved, ``--idle-trials`` times), the whole machine's busy CPU time from ``/proc/stat`` over
that of nobody watching.  That share of the cores is what a CPU-bound pipeline loses to the scraper
(the scraping client, on this machine, is counted too: it is part of watching).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, plot_bars, print_table, result_header, write_json

DEFAULT_OUT = RESULTS_DIR / "scrape.json"
#: how often the slot's confirmed position is read while a burst runs (the timing's resolution)
POLL_S = 0.02
#: none; the search app's /metrics and /stats (through Serve); the same from [serve] metrics_port
CASES = ("none", "metrics", "stats", "light_metrics", "light_stats")


class Scraper(threading.Thread):
    """GET ``url`` every ``1/hz`` seconds until stopped; counts answers and failures."""

    def __init__(self, url: str, hz: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, 1.0 / hz
        self.done = threading.Event()
        self.ok = self.failed = 0
        self.latencies: list[float] = []

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.done.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as answer:
                    answer.read()
                self.ok += 1
                self.latencies.append((time.perf_counter() - started) * 1000)
            except Exception:  # noqa: BLE001 - counted
                self.failed += 1
            next_at += self.interval
            self.done.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=30)


def _busy_cpu_s() -> float:
    """CPU seconds every core of this machine spent busy so far (``/proc/stat``: all but idle and iowait)."""
    import os

    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _idle_cost(urls: dict[str, str], hz: float, seconds: float, trials: int) -> dict[str, Any]:
    """Busy CPU while each case scrapes an idle pipeline, over nobody watching (see the module docstring)."""
    import os

    from benchmarks.common import percentile, usable_cores

    busy: dict[str, list[float]] = {c: [] for c in CASES}
    done: dict[str, int] = {c: 0 for c in CASES}
    for trial in range(trials):
        for case in CASES if trial % 2 == 0 else tuple(reversed(CASES)):
            scraper = Scraper(urls[case], hz) if case != "none" else None
            if scraper is not None:
                scraper.start()
            before, started = _busy_cpu_s(), time.monotonic()
            time.sleep(seconds)  # a fixed window is the measurement itself, not a wait for a condition
            busy[case].append((_busy_cpu_s() - before) / (time.monotonic() - started))
            if scraper is not None:
                scraper.stop()
                done[case] += scraper.ok
    cores = usable_cores() or os.cpu_count() or 1
    base = percentile(busy["none"], 0.5)
    out: dict[str, Any] = {"seconds_per_case": seconds, "trials": trials, "cores": cores,
                           "busy_cores_none": round(base, 4), "cases": {}}
    for case in CASES[1:]:
        extra = percentile(busy[case], 0.5) - base
        per_scrape = extra * seconds * trials / max(1, done[case])
        out["cases"][case] = {"busy_cores": round(percentile(busy[case], 0.5), 4),
                              "share_of_machine": round(extra / cores, 4),
                              "cpu_ms_per_scrape": round(1000 * per_scrape, 2)}
    return out


def _burst(setup: Any, rows: int) -> float:
    """Rows/s from the commit of ``rows`` rows until the slot confirms them."""
    started = time.monotonic()
    lsn = setup.insert(rows)
    while setup.confirmed() < lsn:
        if not setup.alive():
            raise RuntimeError(f"embedcluster run exited:\n{setup.log_tail()}")
        time.sleep(POLL_S)
    return rows / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8000, help="rows per burst")
    parser.add_argument("--sink", choices=("mysql", "qdrant"), default="mysql",
                        help="mysql (default): a private MariaDB, steady; qdrant: the embedded store, whose index "
                             "builds every 50,000 points stall whichever case they fall in")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--hz", type=float, default=20.0)
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="length of each idle CPU case")
    parser.add_argument("--idle-trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    from benchmarks.bench_memory import Setup

    from cluster.loopback import free_port

    setup = Setup(args, Path(tempfile.mkdtemp(prefix="ec-bench-scrape-")))
    light_port = free_port()
    # [serve] is the config's last section: the light endpoint joins it
    setup.config.write_text(setup.config.read_text() + f"\nmetrics_port = {light_port}\n")
    urls = {"metrics": f"http://127.0.0.1:{setup.port}/metrics", "stats": f"http://127.0.0.1:{setup.port}/stats",
            "light_metrics": f"http://127.0.0.1:{light_port}/metrics",
            "light_stats": f"http://127.0.0.1:{light_port}/stats"}
    rates: dict[str, list[float]] = {c: [] for c in CASES}
    scrapes: dict[str, dict[str, Any]] = {}
    try:
        setup.start()
        if not setup.wait(lambda: setup.stats().get("state") == "streaming", 300, "the pipeline to stream"):
            return 1
        _burst(setup, args.rows)  # warm-up: the model, the store, the code paths (excluded)
        for trial in range(args.trials):
            order = CASES if trial % 2 == 0 else tuple(reversed(CASES))  # neither case always goes first
            for case in order:
                scraper = None
                if case != "none":
                    scraper = Scraper(urls[case], args.hz)
                    scraper.start()
                try:
                    rates[case].append(_burst(setup, args.rows))
                finally:
                    if scraper is not None:
                        scraper.stop()
                        seen = scrapes.setdefault(case, {"ok": 0, "failed": 0, "latencies": []})
                        seen["ok"] += scraper.ok
                        seen["failed"] += scraper.failed
                        seen["latencies"] += scraper.latencies
            print(f"  trial {trial + 1}: " + "  ".join(f"{c} {rates[c][-1]:.0f} rows/s" for c in CASES), flush=True)
        idle = _idle_cost(urls, args.hz, args.idle_seconds, args.idle_trials)
    finally:
        setup.close()

    medians = {c: statistics.median(v) for c, v in rates.items()}
    cost = {c: round(1 - medians[c] / medians["none"], 4) for c in CASES if c != "none"}
    result = {
        **result_header(f"burst rows/s while GET /metrics or /stats is scraped at {args.hz:g} Hz (the search app's "
                        "routes through Serve, and [serve] metrics_port's), vs none",
                        "benchmarks.bench_scrape"),
        "rows_per_burst": args.rows, "trials": args.trials, "scrape_hz": args.hz, "sink": args.sink,
        "timing": f"commit -> slot confirmed, the slot read every {POLL_S * 1000:.0f} ms",
        "order": "cases interleaved, alternating direction each trial; one warm-up burst excluded",
        "rows_per_s": {c: {"median": round(medians[c], 1), "trials": [round(x, 1) for x in v]} for c, v in rates.items()},
        "cost_vs_none": cost,
        "scrapes": {c: {"ok": s["ok"], "failed": s["failed"],
                        "p50_ms": round(statistics.median(s["latencies"]), 2) if s["latencies"] else None}
                    for c, s in scrapes.items()},
        "idle_cpu": idle,
        "target": "cost under 0.02",
    }
    write_json(args.out, result)
    plot_bars(args.out.with_suffix(".png"),
              f"burst of {args.rows} rows: rows/s while scraped at {args.hz:g} Hz (median of {args.trials}; "
              "whiskers min/max)", list(CASES), {"rows/s": [medians[c] for c in CASES]}, "rows/s",
              errors={"rows/s": [(min(rates[c]), max(rates[c])) for c in CASES]})
    print_table(f"watching the pipeline at {args.hz:g} Hz", ["case", "rows/s (median)", "cost",
                                                           "CPU share (idle)", "CPU ms / scrape"],
                [[c, round(medians[c], 1), f"{100 * cost.get(c, 0):.1f} %",
                  f"{100 * idle['cases'][c]['share_of_machine']:.2f} %" if c != "none" else "",
                  idle["cases"][c]["cpu_ms_per_scrape"] if c != "none" else ""] for c in CASES])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
