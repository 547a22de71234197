"""Backfill throughput: rows/s the change source hands out while it backfills a table.

Run::

    python -m benchmarks.bench_backfill                   # 300,000 rows, readers 1, 2, 4, 3 trials
    python -m benchmarks.bench_backfill --rows 50000 --trials 2 --out /tmp/backfill.json

A private PostgreSQL 15 (``cluster.pgserver.LocalPostgres``, 127.0.0.1 only) holds
``books(id bigint pk, name, description, author, year)`` with ``--rows`` rows (about 120
bytes of text each), analysed so the key ranges are cut from its statistics.  The reader is
``actors.cdc_reader.PgChangeSource`` as the pipeline runs it; the embedder and the sink are
null: a batch counts as written the moment it is read (its ack rides on the next read).

Per trial a fresh slot is created, the whole table backfilled (until the batch that
completes the backfill) and the slot dropped, all of it timed, for each contender in the same round (so a
busy minute of the machine hits them alike): the chunked backfill (``backfill_mode =
"chunks"``: key chunks read beside the stream between watermarks) with 1, 2 and 4 readers,
and the exported-snapshot backfill (``"snapshot"``) for comparison.  One untimed warm-up
round first.  The CPU time of this process (the reader and its chunk threads) is measured;
the PostgreSQL backends' is not (their connections end inside a trial, and their time with them).

End to end (``--e2e-rows``, default 20,000; 0 leaves it out): ``embedcluster run`` on a table
of that many rows with the configured model (``--model``, default the real one) and the
embedded store, one trial per reader count of ``--e2e-readers`` (default 1): the rows/s of
its backfill as ``/stats`` reports it once finished (from the backfill's start until every
row is durably written).  On a small machine the model is the limit, not the readers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.bench_cdc import bench_server
from benchmarks.common import (
    RESULTS_DIR,
    Case,
    CpuMeter,
    Trials,
    machine_info,
    plot_bars,
    print_table,
    result_header,
    write_json,
)

TARGET_ROWS_PER_S = 50_000  # one reader, null embedder and sink (issue 13)
SLOT = "bench_backfill"
DDL = ("CREATE TABLE books (id bigint PRIMARY KEY, name text, description text, author text, year int)",
       "ALTER TABLE books SET (autovacuum_enabled = false)")


def _fill(dsn: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO books SELECT g, 'Book ' || g, 'A story about ' || md5(g::text) || ' and the sea, number ' "
            "|| g, 'Author ' || (g %% 997), 1900 + g %% 120 FROM generate_series(1, %s) g", (rows,))
        conn.execute("VACUUM ANALYZE books")


def backfill_once(dsn: str, mode: str, readers: int, chunk: int, max_changes: int,
                  meter: CpuMeter | None = None) -> dict[str, Any]:
    """One whole backfill through a fresh slot; returns rows handed out, batches read and the
    CPU used from the start until the last batch (before the connections close: a backend's
    CPU time leaves the process table with it)."""
    from actors.cdc_reader import PgChangeSource
    from actors.source_config import SourceConfig, TableConfig
    from actors.source_schema import connect, drop_slot, inspect_source

    cfg = SourceConfig(dsn=dsn, slot=SLOT, publication=SLOT, backfill_mode=mode, backfill_readers=readers,
                       backfill_chunk=chunk, max_batch_changes=max_changes)
    specs = inspect_source(cfg, [TableConfig(name="books", text="{name}: {description}",
                                             payload=["name", "author", "year"])])
    src = PgChangeSource(cfg, specs)
    rows = batches = 0
    cpu: dict[str, float] = {}
    try:
        before = meter.snapshot() if meter else None
        src.start(True)
        ack = None
        while True:
            batch = src.read_batch(max_changes, 1.0, ack)
            ack = batch.ack_lsn
            batches += 1
            rows += len(batch.changes)
            if batch.snapshot_complete:
                break
        if meter and before:
            cpu = meter.delta(before, meter.snapshot())
    finally:
        src.close()
        with connect(cfg.dsn_value, cfg.dsn_masked, autocommit=True) as conn:
            drop_slot(conn, SLOT)
    return {"rows": rows, "batches": batches, "cpu": cpu}


def end_to_end(dsn: str, rows: int, readers: int, model: str, chunk: int) -> dict[str, Any]:
    """``embedcluster run`` backfilling ``rows`` rows: its backfill figures from ``/stats``."""
    import psycopg

    from cluster.loopback import free_port

    table = f"e2e_{readers}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (LIKE books INCLUDING ALL)")
        conn.execute(f"INSERT INTO {table} SELECT * FROM books WHERE id <= %s", (rows,))
        conn.execute(f"ANALYZE {table}")
    with tempfile.TemporaryDirectory(prefix="bench-backfill-e2e-") as tmp:
        port = free_port()
        config = Path(tmp) / "ec.toml"
        config.write_text("\n".join([
            "[source]", f'dsn = "{dsn}"', f'slot = "{SLOT}_e2e"', f'publication = "{SLOT}_e2e"',
            f"backfill_readers = {readers}", f"backfill_chunk = {chunk}", "",
            "[[tables]]", f'name = "public.{table}"', 'text = "{name}: {description}"',
            'payload = ["name", "author", "year"]', "",
            "[embedding]", f'model = "{model}"', "",
            "[sink]", 'kind = "qdrant"', 'collection = "bench"', f'path = "{tmp}/store"', "",
            "[serve]", 'host = "127.0.0.1"', f"port = {port}", ""]))
        log = open(Path(tmp) / "run.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "--log-level", "WARNING", "run", "--config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 1800
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("embedcluster run exited: " + (Path(tmp) / "run.log").read_text()[-2000:])
                if time.monotonic() > deadline:
                    raise RuntimeError("the backfill did not finish within 30 minutes")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as answer:
                        progress = json.load(answer).get("backfill") or {}
                except OSError:
                    progress = {}
                if progress.get("finished"):
                    return {"readers": readers, "model": model, "rows": progress["rows_done"],
                            "rows_per_second": progress["rows_per_second"]}
                time.sleep(0.5)
        finally:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            from actors.source_schema import connect, drop_slot

            with connect(dsn, dsn, autocommit=True) as conn:
                drop_slot(conn, f"{SLOT}_e2e")
                conn.execute(f"DROP PUBLICATION IF EXISTS {SLOT}_e2e")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_backfill", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=300_000, help="rows in the table (default 300000)")
    ap.add_argument("--trials", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--readers", default="1,2,4", help="backfill_readers values for the chunked backfill")
    ap.add_argument("--chunk", type=int, default=5000, help="backfill_chunk, rows per key chunk (default 5000)")
    ap.add_argument("--max-changes", type=int, default=5000, help="max_batch_changes (default 5000)")
    ap.add_argument("--no-snapshot", action="store_true", help="leave out the exported-snapshot backfill")
    ap.add_argument("--e2e-rows", type=int, default=20_000, help="rows of the end-to-end run (0: leave it out)")
    ap.add_argument("--e2e-readers", default="1", help="backfill_readers values of the end-to-end runs")
    ap.add_argument("--model", default="default", help="the end-to-end runs' embedding.model (default: the real one)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "backfill.json"), help="JSON result path (PNG beside it)")
    args = ap.parse_args(argv)
    readers = [int(r) for r in args.readers.split(",") if r.strip()]

    with bench_server("bench-backfill-", *DDL) as (_pg, dsn, version, _pid):
        _fill(dsn, args.rows)
        counted: dict[str, int] = {}
        # this process alone: the reader and its chunk threads (the backends' CPU is not
        # measured: their connections end inside a trial, and their time with them)
        meter = CpuMeter(flat={"own"})
        inner: dict[str, list[dict[str, float]]] = {}

        def case(name: str, mode: str, n: int) -> Case:
            def run() -> None:
                done = backfill_once(dsn, mode, n, args.chunk, args.max_changes, meter)
                counted[name] = done["rows"]
                inner.setdefault(name, []).append(done["cpu"])
            return Case(name, run, args.rows, extra={"mode": mode, "readers": n})

        cases = [case(f"chunks, {n} reader{'s' if n > 1 else ''}", "chunks", n) for n in readers]
        if not args.no_snapshot:
            cases.append(case("snapshot", "snapshot", 1))
        results = Trials(trials=args.trials, warmup=1, meter=meter).run_interleaved(cases)
        for name, result in results.items():
            # the CPU measured inside each trial (the warm-up's first), in place of the one around it
            result.extra["cpu"] = inner[name][-args.trials:]
        for name, n in counted.items():
            if n != args.rows:
                print(f"error: {name} handed out {n} rows of {args.rows}", file=sys.stderr)
                return 1
        e2e = [end_to_end(dsn, min(args.e2e_rows, args.rows), int(n), args.model, 1000)
               for n in args.e2e_readers.split(",") if n.strip()] if args.e2e_rows else []

    rows = [[r.name, round(r.headline_rate), round(r.median_rate), round(min(r.rates)), round(max(r.rates)),
             r.cpu_median("own_cpu_s"), r.cpu_median("other_cores")]
            for r in results.values()]
    print_table(f"backfill of {args.rows:,} rows, null embedder and sink ({args.trials} trials, medians)",
                ["contender", "rows/s", "median", "min", "max", "reader cpu s", "other cores"], rows)
    if e2e:
        print_table("end to end: embedcluster run, embedded store", ["readers", "model", "rows", "rows/s"],
                    [[e["readers"], e["model"], e["rows"], e["rows_per_second"]] for e in e2e])
    one = results.get("chunks, 1 reader")
    base = one.headline_rate if one else None
    data = {
        **result_header("backfill", "benchmarks.bench_backfill", machine_info()),
        "postgres": version,
        "rows": args.rows,
        "chunk": args.chunk,
        "max_changes": args.max_changes,
        "target_rows_per_s_one_reader": TARGET_ROWS_PER_S,
        "met": bool(one and one.headline_rate >= TARGET_ROWS_PER_S),
        "results": [r.summary() for r in results.values()],
        "ratio_to_one_reader": {r.name: round(r.headline_rate / base, 3) for r in results.values()} if base else None,
        "end_to_end": e2e,
    }
    out = write_json(args.out, data)
    plot_bars(out.with_suffix(".png"), f"Backfill rows/s, {args.rows:,} rows, null embedder and sink "
              f"({data['machine'].get('cpu_model', '')})", [r.name for r in results.values()],
              {"rows/s (median)": [r.headline_rate for r in results.values()]}, "rows/s",
              errors={"rows/s (median)": [(min(r.rates), max(r.rates)) for r in results.values()]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
