"""Partitioned writers (``[sink] writers = W``): rows/s the writer actors apply at W = 1, 2, 4.

    python -m benchmarks.bench_writers [--writers 1,2,4] [--trials 5] [--batches 24] [--batch 256]

A private MariaDB (``cluster.mariadb_server``, the server settings of ``bench writer``) and a
private Ray on 127.0.0.1.  For each W, W real ``WriterActor`` processes (the pipeline's own,
MySQL sink, one connection each) apply the same kind of batches the pipeline hands them:
``--batch`` upserts of fresh keys with 384-d unit vectors, ~200-character texts and a small
payload, already in Ray's object store (as the reader's and the embedders' outputs are).  Each
batch goes through ``cluster.pipeline.apply_partitioned`` exactly as the coordinator calls it:
every writer writes its share of the keys, the primary waits for the others and records the
position (a chunked backfill's state document, as while streaming), and the next batch starts
when the last one is durable (one apply in flight).  So a figure is what the pipeline's writer
stage sustains, commit per batch included, without the reader and the model.

Per W: a warm-up batch run that is not timed, then ``--trials`` timed runs of ``--batches``
batches, interleaved across W (so a busy minute hits every W alike); medians, spread and the
ratio to W = 1 go to ``benchmarks/results/writers_mariadb.json`` with the machine and the
server's settings, and a PNG beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import SecretStr

from actors.changes import Change, ChangeBatch
from actors.sinks.mysql.config import MySQLSinkConfig
from benchmarks.bench_writer import DEFAULT_SERVER_ARGS
from benchmarks.bench_writer import machine_info as server_machine_info
from benchmarks.common import Case, Trials, init_ray, plot_bars, print_table, result_header, write_json
from cluster.mariadb_server import MariaDBServer

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "writers_mariadb.json"
TABLE = "public.docs"
WORDS = ["vector", "index", "replication", "postgres", "embedding", "cluster", "search", "latency"]


def make_batch(seq: int, start: int, n: int, dim: int, rng: np.random.Generator) -> tuple[ChangeBatch, np.ndarray]:
    """``n`` upserts of keys ``start..start+n-1`` and their vectors (what an embedder returns)."""
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    changes = []
    for key in range(start, start + n):
        text = " ".join(WORDS[(key + j) % len(WORDS)] for j in range(28))  # ~200 characters
        changes.append(Change("upsert", TABLE, (key,), text, {"id": key, "title": f"document {key}"}, lsn=seq))
    return ChangeBatch(seq=seq, changes=changes, ack_lsn=seq * 1000), vectors


class WriterSet:
    """W writer actors on one table, driven like the coordinator drives them."""

    def __init__(self, server: MariaDBServer, writers: int, dim: int, batch: int, batches: int, seed: int) -> None:
        import ray

        from actors.remote import WriterActor

        self.writers, self.dim, self.batch, self.batches = writers, dim, batch, batches
        self.rng = np.random.default_rng(seed)
        config = MySQLSinkConfig(kind="mysql", dsn=server.dsn(), table=f"bench_w{writers}", dialect="portable",
                                 password=SecretStr(server.password), writers=writers)
        retries = {"max_attempts": 3, "max_dead_letters": 1000, "max_retry_delay": 5.0}
        self.actors = [WriterActor.options(num_cpus=0).remote(config, "bench", "WARNING", retries, None, i)
                       for i in range(writers)]
        ray.get([a.open.remote(dim) for a in self.actors])
        # a state document, so every batch records its position as while streaming
        self.generation = ray.get(self.actors[0].begin_backfill.remote([TABLE], "bench", {}, True))
        ray.get([a.open.remote(dim) for a in self.actors[1:]])
        self.seq = 0
        self.next_key = 0

    def prepared(self, batches: int) -> list[tuple[Any, Any]]:
        """Batches and vectors in the object store, fresh keys each (untimed)."""
        import ray

        out = []
        for _ in range(batches):
            self.seq += 1
            batch, vectors = make_batch(self.seq, self.next_key, self.batch, self.dim, self.rng)
            self.next_key += self.batch
            out.append((ray.put(batch), ray.put(vectors)))
        return out

    def apply_all(self, refs: list[tuple[Any, Any]]) -> int:
        """Apply ``refs`` one batch in flight at a time (as the coordinator does); rows written."""
        import ray

        from cluster.pipeline import apply_partitioned

        rows = 0
        for batch, vectors in refs:
            result = ray.get(apply_partitioned(self.actors[0], self.actors[1:], batch, vectors, self.generation))
            rows += result.upserts + result.deletes
        return rows

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", default="1,2,4", help="comma-separated W values")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--batches", type=int, default=24, help="batches per trial")
    parser.add_argument("--batch", type=int, default=256, help="changes per batch (source.max_batch_changes)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--quick", action="store_true", help="W = 1, 2; 2 trials of 8 batches")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.writers.split(",")] if not args.quick else [1, 2]
    trials, batches = (2, 8) if args.quick else (args.trials, args.batches)

    import ray

    server = MariaDBServer(extra_args=DEFAULT_SERVER_ARGS).start()
    try:
        init_ray(num_cpus=max(4, max(counts) + 1))
        sets = {w: WriterSet(server, w, args.dim, args.batch, batches, seed=w) for w in counts}
        # every input is in the object store before the clock starts (untimed), in sequence order:
        # the warm-up's first, then one list per trial
        warmups = {w: sets[w].prepared(2) for w in counts}
        inputs = {w: [sets[w].prepared(batches) for _ in range(trials)] for w in counts}

        def case(w: int) -> Case:
            def run() -> None:
                rows = sets[w].apply_all(inputs[w].pop(0))
                assert rows == batches * args.batch, (w, rows)

            return Case(f"W={w}", run, work=batches * args.batch, warmup_fn=lambda: sets[w].apply_all(warmups[w]))

        results = Trials(trials=trials, warmup=1).run_interleaved([case(w) for w in counts])
        machine = server_machine_info(server)
        for s in sets.values():
            s.close()
    finally:
        ray.shutdown()
        server.stop()
    base = results[f"W={counts[0]}"].median_rate
    rows = []
    summary: dict[str, Any] = {}
    for w in counts:
        r = results[f"W={w}"]
        rates = r.rates
        summary[f"W={w}"] = {**r.summary(), "writers": w, "ratio_to_w1": round(r.median_rate / base, 3)}
        rows.append([w, round(r.median_rate), round(min(rates)), round(max(rates)), f"{r.median_rate / base:.2f}x"])
    data = {
        **result_header("writers", "benchmarks.bench_writers", machine),
        "settings": {"writers": counts, "trials": trials, "batches_per_trial": batches, "batch": args.batch,
                     "dim": args.dim, "dialect": "portable", "in_flight": 1,
                     "what": "WriterActor processes through cluster.pipeline.apply_partitioned, one batch in flight"},
        "results": summary,
    }
    write_json(args.out, data)
    plot_bars(args.out.with_suffix(".png"),
              f"Partitioned writers, MySQL sink on MariaDB {machine.get('mariadb_version', '')}: rows/s "
              f"({machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores)",
              [f"W={w}" for w in counts], {"rows/s (median)": [summary[f"W={w}"]["median_rate"] for w in counts]},
              "rows/s", errors={"rows/s (median)": [(summary[f"W={w}"]["min_rate"], summary[f"W={w}"]["max_rate"])
                                                    for w in counts]})
    print(print_table(f"partitioned writers, batch {args.batch}, {machine.get('cpu_model', '?')}",
                      ["writers", "rows/s", "min", "max", "vs W=1"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
