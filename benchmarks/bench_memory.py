"""Memory benchmark: each Ray actor's RSS over time while the real pipeline runs.

Runs ``embedcluster run`` as a subprocess (a private PostgreSQL and a private
MariaDB on 127.0.0.1, the MySQL sink; or embedded Qdrant with ``--sink qdrant``)
and samples, every ``--interval`` seconds, the resident set size of every
process it started, by process title: ``ray::CdcReaderActor``,
``ray::EmbeddingActor``, ``ray::WriterActor``, ``ray::PipelineActor`` (and the
``embedcluster run`` driver itself).  Two cases:

* **backfill**: ``--rows`` rows (default 200,000 short texts) are in the table
  before the pipeline starts; it indexes them from its snapshot.  What should
  not grow with the table: nothing in the reader, the embedders, the writer or
  the coordinator holds every row or id.
* **outage**: the pipeline streams inserts (``--insert-rate`` rows/s) while the
  sink is away: the MariaDB server is stopped for ``--outage-s`` seconds
  (default 300), then started again on the same data directory and port; the
  inserts go on meanwhile and for ``--after-s`` more.  Reports whether the run
  survived, how long it took to catch up, and RSS over time.  (An embedded
  Qdrant cannot be taken away from the writer, so this case needs the MySQL sink.)

Growth per actor = its largest RSS minus its RSS at the baseline: in the
backfill once 5 % of the rows are written (model loaded, first batches
through), in the outage just before the server stops.

    python -m benchmarks.bench_memory [--case backfill|outage|both] [--rows 200000]
                                      [--outage-s 300] [--max-length 32] [--sink mysql|qdrant]

Writes ``benchmarks/results/memory.json`` (a case run alone replaces only its
own entry) and ``memory.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, command_line, print_table, result_header, write_json

REPO = Path(__file__).resolve().parent.parent
ACTORS = ("CdcReaderActor", "EmbeddingActor", "WriterActor", "PipelineActor")
SLOT = "bench_memory"
#: set by SIGINT/SIGTERM: every wait gives up, and the servers and the run are stopped
_STOP = threading.Event()
WORDS = ("desert planet noble family spice ocean ship storm harbour city river mountain forest winter "
         "summer letter island garden engine signal bridge market museum library").split()


# -- processes ---------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    raw = fh.read()
            except OSError:
                continue
            ppid = int(raw[raw.rfind(b")") + 2 :].split()[1])
            out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    children = _children()
    seen: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def process_name(pid: int, root: int) -> str | None:
    """``driver`` for ``root``, the actor class of a Ray actor process (``ray::Name[.method]``), else None."""
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            title = fh.read().split(b"\0")[0].decode("utf-8", "replace")
    except OSError:
        return None
    if not title.startswith("ray::"):
        return None
    name = title[len("ray::"):].split(".")[0].split(" ")[0]
    return name if name in ACTORS else None


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """Samples the RSS of the run's driver and actors every ``interval`` seconds, in a thread."""

    def __init__(self, root: int, interval: float, progress: Any) -> None:
        self.root = root
        self.interval = interval
        self.progress = progress  # () -> rows written so far (None when unknown)
        self.samples: list[dict[str, Any]] = []
        self.events: list[tuple[float, str]] = []
        self.pids: dict[str, set[int]] = {}  # every process seen per name
        self.restarts = 0
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def now(self) -> float:
        return round(time.monotonic() - self.started, 2)

    def mark(self, what: str) -> None:
        self.events.append((self.now(), what))
        print(f"[{self.now():7.1f}s] {what}", flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss: dict[str, float] = {}
            seen: dict[str, set[int]] = {}
            other = 0.0
            for pid in descendants(self.root):
                value = rss_mib(pid)
                if value is None:
                    continue
                name = process_name(pid, self.root)
                if name is None:
                    other += value
                    continue
                seen.setdefault(name, set()).add(pid)
                rss[name] = round(rss.get(name, 0.0) + value, 1)  # several embedding actors: their sum
            for name, pids in seen.items():
                new = pids - self.pids.get(name, set())
                if name in self.pids and new:
                    self.restarts += 1
                    self.mark(f"{name} has a new process {sorted(new)} (an actor restarted)")
                self.pids.setdefault(name, set()).update(pids)
            try:
                progress = self.progress()
            except Exception:  # noqa: BLE001 - the sink may be down (the outage case)
                progress = None
            self.samples.append({"t": self.now(), "rows": progress, "rss_mib": rss,
                                 "other_descendants_mib": round(other, 1)})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def growth(samples: list[dict[str, Any]], baseline_t: float) -> dict[str, dict[str, float]]:
    """Per process: RSS at the baseline (the first sample at or after ``baseline_t``), max, end, growth."""
    names = sorted({n for s in samples for n in s["rss_mib"]})
    out: dict[str, dict[str, float]] = {}
    for name in names:
        series = [(s["t"], s["rss_mib"][name]) for s in samples if name in s["rss_mib"]]
        base = next((v for t, v in series if t >= baseline_t), series[-1][1])
        peak = max(v for _, v in series)
        out[name] = {"rss_mib_first": series[0][1], "rss_mib_baseline": base, "rss_mib_max": peak,
                     "rss_mib_end": series[-1][1], "growth_mib": round(peak - base, 1)}
    return out


# -- the run ---------------------------------------------------------------------------------------------


class Setup:
    """Private servers, the source table, the config, and ``embedcluster run`` as a subprocess."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        import psycopg

        from cluster.loopback import free_port
        from cluster.pgserver import LocalPostgres

        self.args = args
        self.port = free_port()
        self.tmp = tmp
        self.pg = LocalPostgres(tmp / "pg")
        self.pg.start()
        self.dsn = self.pg.create_database("bench")
        self.conn = psycopg.connect(self.dsn, autocommit=True)
        self.conn.execute("CREATE TABLE docs (id bigserial PRIMARY KEY, body text NOT NULL)")
        self.mariadb: Any = None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if args.sink == "mysql":
            from cluster.mariadb_server import MariaDBServer

            self.mariadb = MariaDBServer(keep_datadir=True).start()
            self.env["EMBEDCLUSTER_SINK_PASSWORD"] = self.mariadb.password
            sink = {"kind": "mysql", "dsn": self.mariadb.dsn(), "table": "docs", "dialect": "portable"}
        else:
            sink = {"kind": "qdrant", "path": str(tmp / "qdrant"), "collection": "docs"}
        lines = [
            "[source]", f'dsn = "{self.dsn}"', f'slot = "{SLOT}"', f'publication = "{SLOT}"', "",
            "[[tables]]", 'name = "public.docs"', 'text = "{body}"', "payload = []", "",
            "[embedding]", f'model = "{args.model}"', f"actors = {args.actors}", f"max_length = {args.max_length}", "",
            "[sink]", *[f"{k} = {json.dumps(v)}" for k, v in sink.items()], "",
            "[serve]", 'host = "127.0.0.1"', f"port = {self.port}", "",
        ]
        self.config = tmp / "embedcluster.toml"
        self.config.write_text("\n".join(lines))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "run.log"
        self._seq = 0

    # source side
    def insert(self, n: int) -> int:
        """``n`` short rows in one transaction (COPY); returns the WAL position after the commit."""
        import random

        rng = random.Random(self._seq)
        with self.conn.cursor() as cur:
            with cur.copy("COPY docs (body) FROM STDIN") as copy:
                for _ in range(n):
                    self._seq += 1
                    copy.write_row((f"{self._seq} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))),))
        return self.wal_position()

    def wal_position(self) -> int:
        from actors.changes import parse_lsn

        return parse_lsn(self.conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0])

    def confirmed(self) -> int:
        from actors.changes import parse_lsn

        row = self.conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                                (SLOT,)).fetchone()
        return (parse_lsn(row[0]) or 0) if row and row[0] else 0

    def source_rows(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM docs").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """The running pipeline's counters (``GET /stats`` of its search app)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as answer:
            return json.loads(answer.read())

    def rows_applied(self) -> int | None:
        return int(self.stats().get("rows_applied") or 0)

    def streaming_with(self, rows: int) -> bool:
        """The backfill is complete (streaming) and at least ``rows`` rows were applied."""
        stats = self.stats()
        return stats.get("state") == "streaming" and int(stats.get("rows_applied") or 0) >= rows

    # sink side (a connection of its own per call: the server may have been restarted)
    def stored_rows(self) -> int | None:
        if self.mariadb is None:
            return None
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=self.mariadb.port, user=self.mariadb.user,
                               password=self.mariadb.password, database=self.mariadb.database, connect_timeout=2,
                               read_timeout=10)
        try:
            with conn.cursor() as cur:
                try:
                    cur.execute("SELECT count(*) FROM `docs`")
                except pymysql.err.ProgrammingError:
                    return 0  # not created yet
                return int(cur.fetchone()[0])
        finally:
            conn.close()

    def stop_sink(self) -> None:
        """Stop the MariaDB server, keeping its data directory and port (an outage, not a loss)."""
        if hasattr(self.mariadb, "halt"):
            self.mariadb.halt(timeout_s=60)
            return
        proc = self.mariadb._proc  # an older cluster/mariadb_server.py without halt()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        self.mariadb._proc = None

    def start_sink(self) -> None:
        """Start it again on the same data directory and port."""
        if hasattr(self.mariadb, "relaunch"):
            self.mariadb.relaunch()
            return
        from cluster.mariadb_server import find_binary

        self.mariadb._launch(find_binary("mariadbd", "mysqld"))

    # the pipeline
    def start(self) -> int:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "--log-level", "WARNING", "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO, start_new_session=True,
        )
        log.close()
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait(self, predicate: Any, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _STOP.is_set():
                raise KeyboardInterrupt
            if not self.alive():
                print(f"embedcluster run exited while waiting for {what}:\n{self.log_tail()}", flush=True)
                return False
            try:
                if predicate():
                    return True
            except Exception:  # noqa: BLE001 - a server that is down answers nothing yet
                pass
            time.sleep(1.0)
        print(f"timed out after {timeout:.0f}s waiting for {what}", flush=True)
        return False

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.conn.close()
        self.pg.stop(mode="immediate")
        if self.mariadb is not None:
            self.mariadb.keep_datadir = False
            self.mariadb.stop()  # also removes the data directory of a server the outage left stopped


def run_backfill(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ec-bench-memory-"))
    setup = Setup(args, tmp)
    try:
        print(f"inserting {args.rows:,} rows ...", flush=True)
        for start in range(0, args.rows, 50_000):
            setup.insert(min(50_000, args.rows - start))
        pid = setup.start()
        sampler = Sampler(pid, args.interval, setup.rows_applied)
        sampler.mark("embedcluster run started")
        t0 = time.monotonic()
        done = setup.wait(lambda: setup.streaming_with(args.rows), args.timeout, "the backfill to complete")
        seconds = time.monotonic() - t0
        sampler.mark("backfill complete" if done else "backfill not complete")
        time.sleep(min(10.0, 5 * args.interval))  # a few samples after the end
        sampler.stop()
        samples = sampler.samples
        stored = setup.stored_rows()
        # baseline: once 5 % of the rows are written (progress known), else a fifth of the run in
        base_t = next((s["t"] for s in samples if (s["rows"] or 0) >= 0.05 * args.rows), None)
        if base_t is None:
            base_t = samples[len(samples) // 5]["t"] if samples else 0.0
        return {
            "command": command_line("benchmarks.bench_memory"),
            "rows": args.rows, "completed": done, "seconds_to_complete": round(seconds, 1),
            "rows_per_s_including_startup": round(args.rows / seconds, 1) if done else None,
            "rows_stored": stored, "baseline_t": base_t, "restarts": sampler.restarts,
            "pids": {k: sorted(v) for k, v in sampler.pids.items()},
            "processes": growth(samples, base_t), "events": sampler.events, "samples": samples,
            "log_tail": setup.log_tail(1500) if not done else "",
        }
    finally:
        setup.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run_outage(args: argparse.Namespace) -> dict[str, Any]:
    if args.sink != "mysql":
        raise SystemExit("the outage case stops the MySQL sink's server: use --sink mysql")
    tmp = Path(tempfile.mkdtemp(prefix="ec-bench-memory-"))
    setup = Setup(args, tmp)
    inserting = threading.Event()
    stop_inserting = threading.Event()
    last_lsn = [0]
    inserted = [0]

    def inserter() -> None:
        step = 0.5
        per_step = max(1, round(args.insert_rate * step))
        while not stop_inserting.wait(step):
            if inserting.is_set():
                last_lsn[0] = setup.insert(per_step)
                inserted[0] += per_step

    try:
        setup.insert(args.initial_rows)
        pid = setup.start()
        sampler = Sampler(pid, args.interval, setup.rows_applied)
        sampler.mark("embedcluster run started")
        if not setup.wait(lambda: setup.streaming_with(args.initial_rows), args.timeout, "the initial backfill"):
            raise RuntimeError(f"the pipeline did not start:\n{setup.log_tail()}")
        sampler.mark(f"streaming ({args.initial_rows} rows backfilled)")
        thread = threading.Thread(target=inserter, daemon=True)
        thread.start()
        inserting.set()
        time.sleep(args.warmup_s)
        baseline_t = sampler.now()
        setup.stop_sink()
        sampler.mark(f"sink server stopped for {args.outage_s:.0f}s (inserts go on at {args.insert_rate:g} rows/s)")
        outage_end = time.monotonic() + args.outage_s
        survived_outage = True
        while time.monotonic() < outage_end:
            if _STOP.is_set():
                raise KeyboardInterrupt
            if not setup.alive():
                survived_outage = False
                sampler.mark("embedcluster run exited during the outage")
                break
            time.sleep(1.0)
        setup.start_sink()
        sampler.mark("sink server started again")
        time.sleep(args.after_s)
        inserting.clear()
        stop_inserting.set()
        thread.join(timeout=30)
        target = last_lsn[0]
        sampler.mark(f"inserts stopped ({inserted[0]:,} rows during the case)")
        t0 = time.monotonic()
        caught_up = survived_outage and setup.wait(lambda: setup.confirmed() >= target, args.catch_up_s,
                                                   "the pipeline to catch up")
        catch_up_s = time.monotonic() - t0
        sampler.mark("caught up" if caught_up else "did not catch up")
        time.sleep(min(10.0, 5 * args.interval))
        sampler.stop()
        source, stored = setup.source_rows(), None
        try:
            stored = setup.stored_rows()
        except Exception:  # noqa: BLE001
            pass
        final: dict[str, Any] = {}
        try:
            final = setup.stats()
        except Exception:  # noqa: BLE001 - the run is gone
            pass
        return {
            "command": command_line("benchmarks.bench_memory"),
            "outage_s": args.outage_s, "insert_rate": args.insert_rate, "rows_inserted": inserted[0],
            "survived": survived_outage and setup.alive(), "final_stats": final,
            "caught_up": caught_up, "catch_up_s": round(catch_up_s, 1) if caught_up else None,
            "rows_in_source": source, "rows_stored": stored, "baseline_t": baseline_t, "restarts": sampler.restarts,
            "pids": {k: sorted(v) for k, v in sampler.pids.items()},
            "processes": growth(sampler.samples, baseline_t), "events": sampler.events, "samples": sampler.samples,
            "log_tail": setup.log_tail(3000),
        }
    finally:
        stop_inserting.set()
        setup.close()
        shutil.rmtree(tmp, ignore_errors=True)


# -- output --------------------------------------------------------------------------------------------------


def plot(path: Path, cases: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not installed: skipping plot {path} (pip install matplotlib)")
        return
    shown = [(name, case) for name, case in cases.items() if case.get("samples")]
    if not shown:
        return
    fig, axes = plt.subplots(len(shown), 1, figsize=(10, 4.2 * len(shown)), squeeze=False)
    for ax, (name, case) in zip(axes[:, 0], shown):
        samples = case["samples"]
        for proc in sorted({n for s in samples for n in s["rss_mib"]}):
            pts = [(s["t"], s["rss_mib"][proc]) for s in samples if proc in s["rss_mib"]]
            ax.plot([t for t, _ in pts], [v for _, v in pts], label=proc)
        if name == "outage":
            starts = [t for t, e in case["events"] if e.startswith("sink server stopped")]
            ends = [t for t, e in case["events"] if e.startswith("sink server started")]
            if starts and ends:
                ax.axvspan(starts[0], ends[0], color="red", alpha=0.1, label="sink down")
        for i, (t, _) in enumerate(e for e in case["events"] if "restarted" in e[1]):
            ax.axvline(t, color="black", linestyle="--", linewidth=0.8, alpha=0.5,
                       label="an actor restarted" if i == 0 else None)
        # NaN where /stats did not answer: a gap in the line, not an interpolation across it
        rows = [(s["t"], float("nan") if s["rows"] is None else s["rows"]) for s in samples]
        if any(s["rows"] is not None for s in samples):
            ax2 = ax.twinx()
            ax2.plot([t for t, _ in rows], [r for _, r in rows], color="grey", linestyle=":", label="rows applied (/stats; gaps: no answer)")
            ax2.set_ylabel("rows applied (replays count again)")
        title = {"backfill": f"backfill of {case.get('rows', 0):,} rows",
                 "outage": f"sink outage of {case.get('outage_s', 0):.0f} s under {case.get('insert_rate', 0):g} "
                           "inserts/s"}.get(name, name)
        ax.set_title(f"RSS per process: {title}", fontsize=10)
        ax.set_xlabel("seconds since embedcluster run started")
        ax.set_ylabel("RSS (MiB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def report(name: str, case: dict[str, Any]) -> None:
    rows = [(proc, v["rss_mib_first"], v["rss_mib_baseline"], v["rss_mib_max"], v["rss_mib_end"], v["growth_mib"])
            for proc, v in case["processes"].items()]
    print_table(f"{name}: RSS (MiB) per process", ["process", "first", "baseline", "max", "end", "growth"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=["backfill", "outage", "both"], default="both")
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the backfill case")
    ap.add_argument("--sink", choices=["mysql", "qdrant"], default="mysql",
                    help="mysql: a private MariaDB (default; needed by the outage case); qdrant: embedded store, "
                         "which holds every point in the writer's memory by design")
    ap.add_argument("--model", default="default")
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=32, help="[embedding] max_length (short texts: ~12 tokens)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument("--timeout", type=float, default=3600.0, help="longest wait for the pipeline to confirm")
    ap.add_argument("--outage-s", type=float, default=300.0, help="how long the sink's server is stopped")
    ap.add_argument("--insert-rate", type=float, default=20.0, help="rows/s inserted during the outage case")
    ap.add_argument("--initial-rows", type=int, default=2000, help="rows backfilled before the outage case streams")
    ap.add_argument("--warmup-s", type=float, default=30.0, help="streaming before the sink stops")
    ap.add_argument("--after-s", type=float, default=60.0, help="inserts go on this long after the sink is back")
    ap.add_argument("--catch-up-s", type=float, default=600.0,
                    help="outage case: how long to wait for the pipeline to confirm every insert afterwards")
    ap.add_argument("--out", default=None, help="default benchmarks/results/memory.json")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS_DIR / "memory.json"

    def stop(signum: int, frame: Any) -> None:  # also when started in the background (SIGINT ignored)
        _STOP.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    previous: dict[str, Any] = {}
    if out.exists():
        try:
            previous = json.loads(out.read_text()).get("cases", {})
        except (OSError, ValueError):
            previous = {}
    cases = dict(previous)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    if args.case in ("backfill", "both"):
        cases["backfill"] = {"settings": settings, **run_backfill(args)}
        report("backfill", cases["backfill"])
    if args.case in ("outage", "both"):
        cases["outage"] = {"settings": settings, **run_outage(args)}
        report("outage", cases["outage"])
    write_json(out, {**result_header("memory", "benchmarks.bench_memory"), "cases": cases})
    plot(out.with_suffix(".png"), cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
