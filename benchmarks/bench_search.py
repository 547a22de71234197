"""Search latency and QPS of the running endpoint, against the same store and model in-process.

``python -m benchmarks.bench_search --rows 100000`` (or ``embedcluster bench search``):

1. A private PostgreSQL gets ``--rows`` short texts; ``embedcluster run`` (default model, embedded
   Qdrant Edge store) indexes them; the backfill is waited for.
2. ``POST /search`` (k = 10) from ``--concurrency`` client threads (keep-alive connections), levels
   interleaved within each trial, warm-up excluded: QPS and p50/p95/p99 of what the client sees,
   split with the answer's ``timings_ms`` into the query model, the store, and the rest (HTTP,
   parsing, Serve's routing between the two deployments).
3. The run is stopped and, in this process, the same queries go to the same store (``EdgeSink``)
   and the same model (``Embedder``, one query per call): what the HTTP path adds to each.

The clients run on the machine they measure (2 cores here): at 16 and 64 they take CPU from the
server too.  JSON and a plot under ``benchmarks/results/`` (``search.json``/``.png``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, percentile, plot_bars, print_table, result_header, write_json

DEFAULT_OUT = RESULTS_DIR / "search.json"
#: the issue's targets on this machine, concurrency 4
TARGET_P50_MS, TARGET_P99_MS = 25.0, 100.0


def _pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``."""
    return percentile(values, q / 100)


def _queries(n: int, seed: int = 5) -> list[str]:
    from benchmarks.bench_memory import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)]


class _Client:
    """One keep-alive connection; :meth:`search` -> (client ms, the answer's timings_ms)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def search(self, q: str, k: int) -> tuple[float, dict[str, float]]:
        body = json.dumps({"q": q, "k": k})
        started = time.perf_counter()
        self.conn.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
        answer = self.conn.getresponse()
        data = answer.read()
        took = (time.perf_counter() - started) * 1000
        if answer.status != 200:
            raise RuntimeError(f"POST /search answered {answer.status}: {data[:300]!r}")
        return took, json.loads(data)["timings_ms"]

    def close(self) -> None:
        self.conn.close()


def _level(port: int, queries: list[str], concurrency: int, k: int) -> dict[str, Any]:
    """``queries`` spread over ``concurrency`` threads, each with its own connection."""
    results: list[tuple[float, dict[str, float]]] = []
    lock = threading.Lock()
    errors: list[str] = []
    shares = [queries[i::concurrency] for i in range(concurrency)]
    clients = [_Client(port) for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)

    def work(client: _Client, mine: list[str]) -> None:
        start.wait()
        got = []
        try:
            for q in mine:
                got.append(client.search(q, k))
        except Exception as exc:  # noqa: BLE001 - reported after the level
            errors.append(str(exc))
        with lock:
            results.extend(got)

    threads = [threading.Thread(target=work, args=(c, s)) for c, s in zip(clients, shares)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed at concurrency {concurrency}: {errors[0]}")
    lat = [r[0] for r in results]
    emb = [r[1]["embed"] for r in results]
    sto = [r[1]["store"] for r in results]
    model = [r[1]["model"] for r in results]
    batch = [r[1]["query_batch"] for r in results]
    rest = [r[0] - r[1]["embed"] - r[1]["store"] for r in results]
    return {
        "requests": len(results), "wall_s": round(wall, 3), "qps": round(len(results) / wall, 1),
        "p50_ms": round(_pct(lat, 50), 2), "p95_ms": round(_pct(lat, 95), 2), "p99_ms": round(_pct(lat, 99), 2),
        "embed_p50_ms": round(_pct(emb, 50), 2), "model_p50_ms": round(_pct(model, 50), 2),
        "mean_query_batch": round(statistics.fmean(batch), 2), "store_p50_ms": round(_pct(sto, 50), 2),
        "rest_p50_ms": round(_pct(rest, 50), 2),
    }


def _median_of(trials: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in trials[0] if k not in ("requests",)]
    out = {k: round(statistics.median(t[k] for t in trials), 2) for k in keys}
    out["requests_per_trial"] = trials[0]["requests"]
    out["trials"] = trials
    return out


def _in_process(store: Path, model: str, max_length: int, queries: list[str], k: int) -> dict[str, Any]:
    """The same queries to the same store and model, called directly (one at a time)."""
    from actors.embedder import Embedder
    from actors.sinks.qdrant import EdgeSink, QdrantSinkConfig

    embedder = Embedder(model=model, device="cpu", threads=1, max_length=max_length, batch_size=32)
    for q in queries[:20]:
        embedder.embed([q])  # warm-up
    emb_ms, vectors = [], []
    for q in queries:
        t = time.perf_counter()
        vectors.append(embedder.embed([q])[0])
        emb_ms.append((time.perf_counter() - t) * 1000)
    sink = EdgeSink(QdrantSinkConfig(path=str(store), collection="docs"))
    try:
        sink.ensure_ready(len(vectors[0]))
        points = sink.count()
        for v in vectors[:20]:
            sink.search(v, k)
        store_ms = []
        for v in vectors:
            t = time.perf_counter()
            sink.search(v, k)
            store_ms.append((time.perf_counter() - t) * 1000)
    finally:
        sink.close()
    return {
        "points": points,
        "embed_p50_ms": round(_pct(emb_ms, 50), 2), "embed_p99_ms": round(_pct(emb_ms, 99), 2),
        "store_p50_ms": round(_pct(store_ms, 50), 2), "store_p99_ms": round(_pct(store_ms, 99), 2),
        "both_p50_ms": round(_pct([a + b for a, b in zip(emb_ms, store_ms)], 50), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="texts indexed before searching")
    parser.add_argument("--concurrency", default="1,4,16,64", help="client threads, comma-separated")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per level and trial (at least 4 per thread)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=60, help="requests before timing (excluded)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--actors", type=int, default=1, help="embedding actors of the pipeline (the backfill)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    args.sink = "qdrant"

    from benchmarks.bench_memory import Setup

    tmp = Path(tempfile.mkdtemp(prefix="ec-bench-search-"))
    setup = Setup(args, tmp)
    stopped = False
    try:
        for done in range(0, args.rows, 20_000):
            setup.insert(min(20_000, args.rows - done))
        setup.start()
        t0 = time.monotonic()
        print(f"indexing {args.rows:,} rows with the model ({tmp / 'run.log'})", flush=True)
        if not setup.wait(lambda: setup.streaming_with(args.rows), 3600, f"the backfill of {args.rows:,} rows"):
            return 1
        backfill_s = time.monotonic() - t0
        print(f"indexed in {backfill_s:.0f} s; searching", flush=True)
        queries = _queries(max(args.requests, max(levels) * 4) * (len(levels) * args.trials + 1) + args.warmup)
        warm = _Client(setup.port)
        for q in queries[: args.warmup]:
            warm.search(q, args.k)
        warm.close()
        used = args.warmup
        per_level: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
        for trial in range(args.trials):  # levels interleaved: a drift of the machine hits each alike
            for c in levels:
                n = max(args.requests, 4 * c)
                per_level[c].append(_level(setup.port, queries[used: used + n], c, args.k))
                used += n
                r = per_level[c][-1]
                print(f"  trial {trial + 1} concurrency {c:>3}: {r['qps']:>7.1f} q/s  p50 {r['p50_ms']:7.2f}  "
                      f"p95 {r['p95_ms']:7.2f}  p99 {r['p99_ms']:7.2f} ms", flush=True)
        http_results = {str(c): _median_of(per_level[c]) for c in levels}
        rows_applied = setup.rows_applied()
        setup.proc.send_signal(2)  # SIGINT: a clean stop, the store released
        setup.proc.wait(timeout=180)
        stopped = True
        in_process = _in_process(tmp / "qdrant", args.model, args.max_length, queries[:300], args.k)
    finally:
        if not stopped and setup.proc is not None and setup.proc.poll() is None:
            setup.proc.send_signal(2)
            setup.proc.wait(timeout=180)
        setup.close()

    at4 = http_results.get("4")
    result = {
        **result_header("POST /search on a running pipeline (embedded Qdrant Edge, default model) vs the same "
                        "store and model in-process", "benchmarks.bench_search"),
        "rows": args.rows, "rows_applied": rows_applied, "backfill_s": round(backfill_s, 1), "k": args.k,
        "queries": "2-6 random words of the corpus vocabulary, each query sent once",
        "warmup_requests": args.warmup, "trials": args.trials, "order": "levels interleaved within each trial",
        "clients": "threads of this process on the same machine, one keep-alive HTTP connection each",
        "split": "embed and store from the answer's timings_ms; rest = client latency - embed - store",
        "http": http_results,
        "in_process": in_process,
        "targets_concurrency_4": {"p50_ms": TARGET_P50_MS, "p99_ms": TARGET_P99_MS,
                                  "met": bool(at4 and at4["p50_ms"] <= TARGET_P50_MS and at4["p99_ms"] <= TARGET_P99_MS)},
    }
    write_json(args.out, result)
    names = [str(c) for c in levels]
    plot_bars(args.out.with_suffix(".png"),
              f"POST /search, {in_process['points']:,} points, k={args.k}: latency by client concurrency "
              f"(median of {args.trials} trials); in-process: the same store and model called directly",
              names,
              {"p50 ms": [http_results[c]["p50_ms"] for c in names],
               "p99 ms": [http_results[c]["p99_ms"] for c in names],
               "p50 embed (in the app)": [http_results[c]["embed_p50_ms"] for c in names],
               "p50 store (in the app)": [http_results[c]["store_p50_ms"] for c in names],
               "p50 rest (HTTP, Serve)": [http_results[c]["rest_p50_ms"] for c in names],
               "in-process model+store p50": [in_process["both_p50_ms"]] * len(names)},
              "ms", log_scale=True)
    print_table(
        f"POST /search over {in_process['points']:,} points (k={args.k})",
        ["concurrency", "q/s", "p50 ms", "p95 ms", "p99 ms", "embed p50", "store p50", "rest p50"],
        [[c, r["qps"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["embed_p50_ms"], r["store_p50_ms"], r["rest_p50_ms"]]
         for c, r in http_results.items()],
    )
    print(f"in-process, one query at a time: model p50 {in_process['embed_p50_ms']} ms, store p50 "
          f"{in_process['store_p50_ms']} ms (p99 {in_process['store_p99_ms']} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
