"""CDC decode throughput: PgChangeSource over pgoutput, no embedding, no sink.

Run::

    python -m benchmarks.bench_cdc                  # 200,000-row backlog x 3 trials + 10 s stream
    python -m benchmarks.bench_cdc --quick          # 50,000 rows x 2 trials + 5 s stream
    python -m benchmarks.bench_cdc --rows 500000 --profile --out benchmarks/results/cdc.json
    python -m benchmarks.bench_cdc --toast          # (d) 200,000 rows with TOASTed text (--quick: 20,000)
    python -m benchmarks.bench_cdc --decoder python # headline, (b) and (d) with the Python decoder

A private PostgreSQL 15 (``cluster.pgserver.LocalPostgres`` in a temporary
directory, 127.0.0.1 only) with a ``books`` table (id serial pk, name,
description, author, year).  The reader is ``actors.cdc_reader.PgChangeSource``
exactly as the pipeline uses it; the "embedder" and the "sink" are null: a
batch counts as durably written the moment it is read, so each read_batch
call piggybacks the ack of the previous batch.

(a) backlog: ``start(True)`` on the empty table (creates the slot + an empty
    snapshot), drain until ``snapshot_complete`` so the stream is live, then per
    trial COPY ``--rows`` fresh rows (``--txn-rows`` per transaction, untimed)
    and time ``read_batch(max_changes=5000)`` until every change is decoded.
    Each round runs one trial per row-change decoder this install has (the
    compiled ``actors._pgtuple`` and the Python fallback), interleaved; the
    headline is ``--decoder``'s (default: compiled when built).
(b) steady stream: a separate process inserts at ``--rate`` rows/s for
    ``--seconds`` s (one transaction per 50 ms tick); the reader must keep up.
    Reports insert->decoded latency percentiles and the reader's CPU per change.
(c) decode only: the raw CopyData messages of one backlog trial are recorded
    and replayed offline through the reader's stream loop (``replay_decode``:
    ``PgChangeSource._stream_into``, batches of ``--max-changes``), which
    separates the Python decoder's cost from the server's and the socket's.
(d) ``--toast`` (its own run, ``cdc_toast.json``): ``docs(id, title, body, counter)``
    with ``--rows`` rows whose ~4 KB body is stored out of line (STORAGE EXTERNAL),
    template ``{body}``, payload ``[title]``; backfilled through the reader, then
    ``UPDATE docs SET counter = counter + 1`` over every row (one transaction) is
    timed from its commit until the reader has handed out a marker row inserted
    after it: rows/s, texts that would be embedded (target 0) and TOAST fetch
    queries.  Then ``UPDATE docs SET title = title || '.'`` (payload changes, text
    does not: one fetch per batch) and the counter UPDATE again after a reader
    restart (nothing remembered: every text fetched, once per batch).

CPU time is split between this process (the reader), the walsender backend
and everything else on the machine (other load), from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import multiprocessing as mp
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from benchmarks.common import (
    RESULTS_DIR,
    CpuMeter,
    TrialResult,
    result_header,
    machine_info,
    plot_bars,
    print_table,
    write_json,
)

#: issue 13: one slot at GPU-cluster rates (was 50,000)
TARGET_CHANGES_PER_S = 100_000
BOOKS_DDL = """
CREATE TABLE books (
    id serial PRIMARY KEY,
    name text,
    description text,
    author text,
    year int
)
"""
SLOT = "bench_cdc"
PUBLICATION = "bench_cdc"


# -- data --------------------------------------------------------------------


def _pool(n: int = 4096, seed: int = 7) -> list[tuple[str, str, str]]:
    """(name, description, author) pool; descriptions ~15-30 words like the demo's books."""
    from benchmarks.bench_embed import WORDS

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))).title()
        desc = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 30))).capitalize() + "."
        author = f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}"
        out.append((name, desc, author))
    return out


def copy_rows(dsn: str, start: int, rows: int, txn_rows: int, pool: list[tuple[str, str, str]]) -> float:
    """COPY ``rows`` rows in transactions of ``txn_rows``; returns seconds taken."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        done = 0
        while done < rows:
            n = min(txn_rows, rows - done)
            lines = []
            for i in range(start + done, start + done + n):
                name, desc, author = pool[i % len(pool)]
                lines.append(f"{name} {i}\t{desc}\t{author}\t{1800 + i % 225}\n")
            with conn.cursor() as cur:
                with cur.copy("COPY books (name, description, author, year) FROM STDIN") as cp:
                    cp.write("".join(lines).encode())
            conn.commit()
            done += n
    return time.perf_counter() - t0


def steady_inserter(dsn: str, rate: int, seconds: float, tick: float, start_id: int, result: Any) -> None:
    """Child process: INSERT ``rate`` rows/s for ``seconds``, one transaction per tick.

    ``name`` carries the wall-clock time of the insert (``t<unix seconds>``)
    so the reader can measure insert->decoded latency.
    """
    import psycopg

    pool = _pool()
    per_tick = max(1, round(rate * tick))
    ticks = int(round(seconds / tick))
    sent = 0
    late = 0
    with psycopg.connect(dsn) as conn:
        started = time.monotonic()
        for k in range(ticks):
            due = started + k * tick
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -tick:
                late += 1
            now = time.time()
            rows = []
            for i in range(start_id + sent, start_id + sent + per_tick):
                _, desc, author = pool[i % len(pool)]
                rows.append((f"t{now:.6f}", desc, author, 1800 + i % 225))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO books (name, description, author, year) VALUES (%s, %s, %s, %s)", rows)
            conn.commit()
            sent += per_tick
        elapsed = time.monotonic() - started
    result.put({"sent": sent, "elapsed_s": elapsed, "ticks": ticks, "rows_per_tick": per_tick, "late_ticks": late})


# -- recording proxy (for the decode-only measurement) ------------------------


class _RecordingPgConn:
    """Wraps a psycopg ``PGconn``; keeps a copy of every CopyData message read."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.messages: list[bytes] = []

    def get_copy_data(self, async_: int) -> tuple[int, Any]:
        nbytes, data = self._inner.get_copy_data(async_)
        if nbytes > 0:
            self.messages.append(bytes(data))
        return nbytes, data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _ConnProxy:
    def __init__(self, conn: Any, pgconn: _RecordingPgConn) -> None:
        self._conn = conn
        self.pgconn = pgconn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class ReplayPgConn:
    """Stands in for the replication connection's ``PGconn``: hands out recorded CopyData
    messages (as memoryviews, like psycopg), then reports nothing more; status updates
    go nowhere.  ``socket`` is a pipe nobody writes to: never readable."""

    def __init__(self, messages: list[bytes], sock: int) -> None:
        self._it = iter(messages)
        self.socket = sock

    def get_copy_data(self, async_: int) -> tuple[int, Any]:
        m = next(self._it, None)
        return (0, memoryview(b"")) if m is None else (len(m), memoryview(m))

    def consume_input(self) -> None:
        pass

    def put_copy_data(self, data: bytes) -> int:
        return 1

    def flush(self) -> int:
        return 0


class ReplayConn:
    def __init__(self, pgconn: ReplayPgConn) -> None:
        self.pgconn = pgconn


def replay_decode(source: Any, messages: list[bytes], max_changes: int) -> int:
    """Feed ``messages`` through ``source``'s stream loop (``_stream_into``: what read_batch
    runs, minus the socket and the server) in batches of ``max_changes``, dropped as the
    null pipeline drops them; returns the changes decoded."""
    import os

    rfd, wfd = os.pipe()
    try:
        source._repl = ReplayConn(ReplayPgConn(messages, rfd))
        source._streaming = True
        source._last_status = time.monotonic()
        got = 0
        while True:
            batch: list[Any] = []
            with source._lock:
                source._stream_into(batch, max_changes, 0.0)
            if not batch:
                return got
            got += len(batch)
    finally:
        source._streaming = False
        source._repl = None
        os.close(rfd)
        os.close(wfd)


def available_decoders() -> list[str]:
    """The row-change decoders this install has: ``compiled`` (actors._pgtuple, when built) and ``python``."""
    from actors import pgoutput

    return ["compiled", "python"] if pgoutput.COMPILED else ["python"]


@contextlib.contextmanager
def row_decoder(name: str) -> Iterator[None]:
    """Decode row changes with the named decoder inside the block (``actors.pgoutput.use_decoder``)."""
    from actors import pgoutput

    before = pgoutput.decoder_in_use()
    pgoutput.use_decoder(name)
    try:
        yield
    finally:
        pgoutput.use_decoder(before)


def implementation_fingerprint() -> dict[str, str]:
    """Which reader code was measured: module path and a content hash per file."""
    import hashlib

    import actors

    root = Path(actors.__file__).resolve().parent
    out = {"actors_package": str(root)}
    for name in ("cdc_reader.py", "pgoutput.py", "_pgtuple.pyx", "source_schema.py", "changes.py"):
        try:
            out[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()[:12]
        except OSError:
            out[name] = "?"
    return out


# -- the benchmark -----------------------------------------------------------


class Bench:
    def __init__(self, dsn: str, pg_pid: int | None, args: argparse.Namespace) -> None:
        from actors.cdc_reader import PgChangeSource
        from actors.source_schema import inspect_source
        from actors.source_config import SourceConfig, TableConfig

        self.dsn = dsn
        self.args = args
        self.pool = _pool()
        self.next_id = 0
        self.source_cfg = SourceConfig(dsn=dsn, slot=SLOT, publication=PUBLICATION)
        table = TableConfig(name="books", text="{name}: {description}", payload=["name", "author", "year"])
        self.specs = inspect_source(self.source_cfg, [table])
        self.src = PgChangeSource(self.source_cfg, self.specs)
        info = self.src.start(True)
        self.start_info = info
        while True:  # empty snapshot, then the marker batch switches to streaming
            b = self.src.read_batch(args.max_changes, 1.0)
            if b.snapshot_complete:
                break
        self.pending_ack: int | None = None
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            self.walsender_pid = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (SLOT,)
            ).fetchone()[0]
        groups = {"walsender": [self.walsender_pid]}
        if pg_pid:
            groups["postgres_other"] = [pg_pid]
        self.meter = CpuMeter(groups, flat={"walsender"})
        self.batch_sizes: list[int] = []

    # the null pipeline: read, count, ack what was read on the next call
    def drain(self, expected: int, timeout: float = 120.0, on_batch: Any = None) -> int:
        got = 0
        deadline = time.monotonic() + timeout
        while got < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got} of {expected} changes arrived within {timeout:.0f}s")
            batch = self.src.read_batch(self.args.max_changes, self.args.read_timeout, self.pending_ack)
            if batch.ack_lsn:
                self.pending_ack = batch.ack_lsn
            n = len(batch.changes)
            if n:
                self.batch_sizes.append(n)
                if on_batch:
                    on_batch(batch)
            got += n
        return got

    def insert(self, rows: int) -> float:
        took = copy_rows(self.dsn, self.next_id, rows, self.args.txn_rows, self.pool)
        self.next_id += rows
        return took

    # (a) backlog
    def backlog(self) -> tuple[dict[str, TrialResult], list[float]]:
        """(a): ``--trials`` rounds; each round drains a fresh ``--rows`` backlog once per
        decoder this install has (compiled, python), so both see the same machine and server."""
        args = self.args
        rows = args.rows
        decoders = available_decoders()
        # warm-up: a small backlog per decoder (relation message, caches), untimed
        for name in decoders:
            with row_decoder(name):
                self.insert(min(10_000, rows))
                self.drain(min(10_000, rows))
        copy_times: list[float] = []
        seconds: dict[str, list[float]] = {d: [] for d in decoders}
        cpu: dict[str, list[dict[str, float]]] = {d: [] for d in decoders}
        sizes: dict[str, list[int]] = {d: [] for d in decoders}
        for _ in range(args.trials):
            for name in decoders:
                copy_times.append(self.insert(rows))  # untimed
                self.batch_sizes = []
                with row_decoder(name):
                    before = self.meter.snapshot()
                    started = time.perf_counter()
                    self.drain(rows)
                    seconds[name].append(time.perf_counter() - started)
                    cpu[name].append(self.meter.delta(before, self.meter.snapshot()))
                sizes[name] += self.batch_sizes
        out = {}
        for name in decoders:
            res = TrialResult(f"backlog ({name})", seconds[name], rows, {"cpu": cpu[name]})
            res.extra["mean_batch"] = round(statistics.mean(sizes[name]), 1) if sizes[name] else 0
            out[name] = res
        return out, copy_times

    # (c) decode only, on a recorded backlog
    def record_and_decode(self, rows: int, repeats: int = 3) -> dict[str, Any]:
        """(c): record one backlog's CopyData, then decode it offline ``repeats`` times with each
        decoder (the compiled one, when built, and the Python fallback), interleaved so
        both see the same machine; the run's own decoder (``--decoder``) is the headline."""
        from actors.cdc_reader import PgChangeSource
        from actors.pgoutput import PgOutputDecoder

        assert self.src._repl is not None
        real_conn = self.src._repl
        recorder = _RecordingPgConn(real_conn.pgconn)
        self.insert(rows)
        self.src._repl = _ConnProxy(real_conn, recorder)  # type: ignore[assignment]
        try:
            self.drain(rows)
        finally:
            self.src._repl = real_conn
        messages = recorder.messages
        wire_bytes = sum(len(m) for m in messages)
        decoders = available_decoders()
        times: dict[str, list[float]] = {d: [] for d in decoders}
        cpu_times: dict[str, list[float]] = {d: [] for d in decoders}
        decoded = 0
        for _ in range(repeats):
            for name in decoders:
                with row_decoder(name):
                    fresh = PgChangeSource(self.source_cfg, self.specs)
                    fresh._decoder = PgOutputDecoder(self.src._decoder.types)
                    fresh._decoder.relations = dict(self.src._decoder.relations)
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    decoded = replay_decode(fresh, messages, self.args.max_changes)
                    times[name].append(time.perf_counter() - t0)
                    cpu_times[name].append(time.process_time() - c0)

        def summary(name: str) -> dict[str, Any]:
            med = statistics.median(times[name])
            cpu_med = statistics.median(cpu_times[name])
            return {
                "seconds": [round(t, 4) for t in times[name]],
                "median_s": round(med, 4),
                "changes_per_s": round(decoded / med, 1),
                "us_per_change": round(med / max(1, decoded) * 1e6, 3),
                "cpu_seconds": [round(t, 4) for t in cpu_times[name]],
                "changes_per_cpu_s": round(decoded / cpu_med, 1) if cpu_med else None,
                "cpu_us_per_change": round(cpu_med / max(1, decoded) * 1e6, 3),
            }

        by_decoder = {name: summary(name) for name in decoders}
        out = {
            "messages": len(messages),
            "wire_bytes": wire_bytes,
            "changes": decoded,
            "decoder": self.args.decoder,
            **by_decoder[self.args.decoder],
            "by_decoder": by_decoder,
            "_messages": messages,  # removed before writing JSON
        }
        if len(decoders) == 2:
            out["compiled_speedup_cpu"] = round(by_decoder["python"]["cpu_us_per_change"]
                                                / by_decoder["compiled"]["cpu_us_per_change"], 3)
        return out

    # profile one backlog drain
    def profile(self, rows: int, top: int = 25) -> dict[str, Any]:
        self.insert(rows)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        self.drain(rows)
        prof.disable()
        wall = time.perf_counter() - t0
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(top)
        rows_out = []
        for (file, line, func), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]:
            rows_out.append({
                "function": f"{Path(file).name}:{line}({func})" if line else func,
                "calls": nc,
                "tottime_s": round(tt, 4),
                "cumtime_s": round(ct, 4),
                "tottime_share": round(tt / wall, 4) if wall else None,
            })
        return {"rows": rows, "wall_s_profiled": round(wall, 3), "top_by_tottime": rows_out,
                "text": buf.getvalue()}

    # (b) steady stream
    def steady(self, rate: int, seconds: float) -> dict[str, Any]:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        tick = 0.05
        per_tick = max(1, round(rate * tick))
        expected = per_tick * int(round(seconds / tick))
        proc = ctx.Process(target=steady_inserter, args=(self.dsn, rate, seconds, tick, self.next_id, q))
        latencies: list[float] = []
        self.batch_sizes = []

        def on_batch(batch: Any) -> None:
            now = time.time()
            for c in batch.changes:
                name = (c.payload or {}).get("name") or ""
                if name.startswith("t"):
                    latencies.append(now - float(name[1:]))

        before = self.meter.snapshot()
        t0 = time.perf_counter()
        proc.start()
        got = self.drain(expected, timeout=seconds + 120, on_batch=on_batch)
        t_done = time.perf_counter()
        cpu = self.meter.delta(before, self.meter.snapshot())
        proc.join(30)
        try:
            info = q.get(timeout=10)
        except Exception:  # noqa: BLE001 - inserter died; report what we have
            info = {}
        self.next_id += expected
        latencies.sort()

        def pct(p: float) -> float:
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

        wall = t_done - t0
        own = cpu.get("own_cpu_s", 0.0)
        return {
            "target_rate": rate,
            "seconds": seconds,
            "inserter": info,
            "achieved_insert_rate": round(info.get("sent", 0) / info["elapsed_s"], 1) if info else None,
            "changes_decoded": got,
            "decoded_rate_over_run": round(got / wall, 1),
            "drain_after_last_insert_s": round(wall - info.get("elapsed_s", 0.0), 3) if info else None,
            "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)},
            "batches": len(self.batch_sizes),
            "mean_batch": round(statistics.mean(self.batch_sizes), 1) if self.batch_sizes else 0,
            "max_batch": max(self.batch_sizes) if self.batch_sizes else 0,
            "cpu": cpu,
            "reader_cpu_us_per_change": round(own / max(1, got) * 1e6, 2),
            "reader_cpu_share_of_one_core": round(own / wall, 3),
            "walsender_cpu_us_per_change": round(cpu.get("walsender_cpu_s", 0.0) / max(1, got) * 1e6, 2),
            "kept_up": bool(got == expected and latencies and pct(0.99) < 1000),
        }

    def close(self) -> None:
        self.src.close()


@contextlib.contextmanager
def bench_server(prefix: str, *ddl: str) -> Iterator[tuple[Any, str, str, int | None]]:
    """A private PostgreSQL 15 (127.0.0.1 only, temporary directory) whose database ``bench``
    ran ``ddl``: (server, dsn, server version, postmaster pid or None)."""
    import psycopg
    from cluster.pgserver import LocalPostgres

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        pg = LocalPostgres(Path(tmp) / "data")
        pg.start()
        try:
            dsn = pg.create_database("bench")
            with psycopg.connect(dsn, autocommit=True) as conn:
                for statement in ddl:
                    conn.execute(statement)
                version = conn.execute("SHOW server_version").fetchone()[0]
            pg_pid = None
            try:
                pg_pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
            yield pg, dsn, version, pg_pid
        finally:
            pg.stop()


# -- TOAST case (--toast): wide rows, an UPDATE of a column outside template and payload ------------

TOAST_TARGET_ROWS_PER_S = 20_000
TOAST_SLOT = "bench_cdc_toast"
DOCS_DDL = """
CREATE TABLE docs (
    id bigint PRIMARY KEY,
    title text,
    body text,
    counter int NOT NULL DEFAULT 0
)
"""


def copy_docs(dsn: str, rows: int, body_bytes: int, txn_rows: int = 20_000) -> float:
    """COPY ``rows`` docs whose body is ~``body_bytes`` of word salad (stored out of line:
    the column is STORAGE EXTERNAL, so not compressed inline either); returns seconds."""
    import psycopg
    from benchmarks.bench_embed import WORDS

    rng = random.Random(11)
    pool = []
    for _ in range(512):
        words: list[str] = []
        size = 0
        while size < body_bytes:
            w = rng.choice(WORDS)
            words.append(w)
            size += len(w) + 1
        pool.append(" ".join(words)[: body_bytes - 8])
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as conn:
        for start in range(0, rows, txn_rows):
            lines = [f"{i}\tdoc {i}\t{i:07d} {pool[i % len(pool)]}\n" for i in range(start, min(rows, start + txn_rows))]
            with conn.cursor() as cur:
                with cur.copy("COPY docs (id, title, body) FROM STDIN") as cp:
                    cp.write("".join(lines).encode())
            conn.commit()
    return time.perf_counter() - t0


class _CountingSide:
    """The reader's side connection, counting the queries that read ``docs`` (the TOAST fetches)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.fetches = 0

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(sql, str) and sql.startswith("SELECT") and '"docs"' in sql:
            self.fetches += 1
        return self._conn.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class ToastBench:
    def __init__(self, dsn: str, pg_pid: int | None, args: argparse.Namespace) -> None:
        from actors.cdc_reader import PgChangeSource
        from actors.source_config import SourceConfig, TableConfig
        from actors.source_schema import inspect_source

        self.dsn, self.args, self.pg_pid = dsn, args, pg_pid
        self.source_cfg = SourceConfig(dsn=dsn, slot=TOAST_SLOT, publication=TOAST_SLOT)
        table = TableConfig(name="public.docs", text="{body}", payload=["title"])
        self.src = PgChangeSource(self.source_cfg, inspect_source(self.source_cfg, [table]))
        self.pending_ack: int | None = None
        self.marker = 0

    def _meter(self) -> Any:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            walsender = conn.execute(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (TOAST_SLOT,)
            ).fetchone()[0]
        groups = {"walsender": [walsender]}
        if self.pg_pid:
            groups["postgres_other"] = [self.pg_pid]
        return CpuMeter(groups, flat={"walsender"})

    def _count_fetches(self) -> _CountingSide:
        side = _CountingSide(self.src._side)
        self.src._side = side
        return side

    def backfill(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.src.start(True)
        rows = 0
        while True:
            batch = self.src.read_batch(self.args.max_changes, 1.0)
            rows += len(batch.changes)
            if batch.snapshot_complete:
                break
        wall = time.perf_counter() - t0
        self.meter = self._meter()
        self.side = self._count_fetches()
        return {"rows": rows, "seconds": round(wall, 3), "rows_per_s": round(rows / wall, 1)}

    def restart(self) -> None:
        """What the coordinator does after a failure: the reader's memory of emitted texts is gone."""
        if self.pending_ack:
            self.src.ack(self.pending_ack)  # everything read so far counts as written
        self.src.close()
        self.src.start(False)
        self.pending_ack = None
        self.meter = self._meter()
        self.side = self._count_fetches()

    def update(self, name: str, sql: str, rows: int) -> dict[str, Any]:
        """Run ``sql`` (one transaction over every row), then a marker insert; time the reader
        from the UPDATE's commit until it has handed out the marker."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            t_update = time.perf_counter()
            updated = conn.execute(sql).rowcount
            update_s = time.perf_counter() - t_update
            self.marker -= 1
            conn.execute("INSERT INTO docs (id, title, body) VALUES (%s, 'marker', 'marker')", (self.marker,))
        assert updated == rows, f"{name}: updated {updated} rows, expected {rows}"
        fetches_before = self.side.fetches
        before = self.meter.snapshot()
        t0 = time.perf_counter()
        emitted = to_embed = batches = 0
        deadline = time.monotonic() + 600
        done = False
        while not done:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the marker did not arrive within 600 s")
            batch = self.src.read_batch(self.args.max_changes, self.args.read_timeout, self.pending_ack)
            if batch.ack_lsn:
                self.pending_ack = batch.ack_lsn
            changes = [c for c in batch.changes if c.key != (self.marker,)]
            done = len(changes) < len(batch.changes)
            if batch.changes:
                batches += 1
            emitted += len(changes)
            to_embed += sum(1 for c in changes if c.op == "upsert" and not c.text_unchanged)
        wall = time.perf_counter() - t0
        cpu = self.meter.delta(before, self.meter.snapshot())
        return {
            "phase": name, "sql": sql, "rows_updated": updated, "update_seconds": round(update_s, 3),
            "reader_seconds": round(wall, 3), "rows_per_s": round(updated / wall, 1),
            "changes_emitted": emitted, "texts_to_embed": to_embed,
            "toast_fetch_queries": self.side.fetches - fetches_before, "batches_with_changes": batches,
            "cpu": cpu,
            "reader_cpu_us_per_row": round(cpu.get("own_cpu_s", 0.0) / max(1, updated) * 1e6, 2),
            "walsender_cpu_us_per_row": round(cpu.get("walsender_cpu_s", 0.0) / max(1, updated) * 1e6, 2),
        }

    def close(self) -> None:
        self.src.close()


def toast_main(args: argparse.Namespace) -> int:
    """The TOAST case: see the module docstring, (d)."""
    rows = args.rows or (20_000 if args.quick else 200_000)
    trials = args.trials or (1 if args.quick else 3)
    out = Path(args.out) if args.out else RESULTS_DIR / ("cdc_toast_quick.json" if args.quick else "cdc_toast.json")
    logging.basicConfig(level=logging.WARNING)
    machine = machine_info()
    t_start = time.perf_counter()
    ddl = [DOCS_DDL, "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL",
           "ALTER TABLE docs SET (autovacuum_enabled = false)"]
    with bench_server("bench-cdc-toast-", *ddl) as server:
        _, dsn, server_version, pg_pid = server
        bench = None
        try:
            import psycopg

            print(f"loading {rows:,} docs with ~{args.body_bytes:,}-byte bodies (STORAGE EXTERNAL)")
            copy_s = copy_docs(dsn, rows, args.body_bytes)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE docs")
                toast = conn.execute(
                    "SELECT pg_size_pretty(pg_relation_size(reltoastrelid)), "
                    "(SELECT count(*) FROM docs WHERE pg_column_size(body) < length(body) / 2) "
                    "FROM pg_class WHERE relname = 'docs'"
                ).fetchone()
            bench = ToastBench(dsn, pg_pid, args)
            print("(a) backfill through the reader")
            backfill = bench.backfill()
            print(f"    {backfill['rows_per_s']:,.0f} rows/s")
            warm = []
            for k in range(trials):
                print(f"(b) UPDATE docs SET counter = counter + 1, trial {k + 1}/{trials}")
                warm.append(bench.update("counter, warm", "UPDATE docs SET counter = counter + 1 WHERE id >= 0", rows))
                print(f"    {warm[-1]['rows_per_s']:,.0f} rows/s, {warm[-1]['texts_to_embed']} texts to embed, "
                      f"{warm[-1]['changes_emitted']} changes, {warm[-1]['toast_fetch_queries']} fetch queries")
            print("(c) UPDATE docs SET title = title || '.' (payload changes, text does not)")
            title = bench.update("title, warm", "UPDATE docs SET title = title || '.' WHERE id >= 0", rows)
            print(f"    {title['rows_per_s']:,.0f} rows/s, {title['texts_to_embed']} texts to embed, "
                  f"{title['toast_fetch_queries']} fetch queries")
            print("(d) after a reader restart: UPDATE docs SET counter = counter + 1")
            bench.restart()
            cold = bench.update("counter, after restart", "UPDATE docs SET counter = counter + 1 WHERE id >= 0", rows)
            print(f"    {cold['rows_per_s']:,.0f} rows/s, {cold['texts_to_embed']} texts to embed, "
                  f"{cold['toast_fetch_queries']} fetch queries")
        finally:
            if bench is not None:
                bench.close()

    rates = [w["rows_per_s"] for w in warm]
    median = statistics.median(rates)
    met = median >= TOAST_TARGET_ROWS_PER_S and all(w["texts_to_embed"] == 0 for w in warm)
    table = print_table(
        f"TOAST: {rows:,} rows, ~{args.body_bytes:,}-byte bodies out of line; target >= "
        f"{TOAST_TARGET_ROWS_PER_S:,} rows/s and 0 re-embedded for the counter UPDATE",
        ["phase", "rows/s", "texts to embed", "changes emitted", "fetch queries", "reader CPU us/row",
         "walsender CPU us/row", "others' load (cores)"],
        [[r["phase"], r["rows_per_s"], r["texts_to_embed"], r["changes_emitted"], r["toast_fetch_queries"],
          r["reader_cpu_us_per_row"], r["walsender_cpu_us_per_row"], r["cpu"].get("other_cores")]
         for r in [*warm, title, cold]],
    )
    elapsed = round(time.perf_counter() - t_start, 1)
    data = {
        **result_header("cdc_toast", "benchmarks.bench_cdc", machine),
        "quick": args.quick,
        "elapsed_s": elapsed,
        "postgres": {"version": server_version},
        "implementation": {**implementation_fingerprint(), "decoder": args.decoder},
        "settings": {
            "rows": rows, "body_bytes": args.body_bytes, "trials": trials, "max_changes": args.max_changes,
            "read_timeout_s": args.read_timeout,
            "table": "docs(id bigint pk, title text, body text STORAGE EXTERNAL, counter int)",
            "text_template": "{body}", "payload": ["title"],
            "timing": "from the UPDATE's commit until the reader handed out a marker row inserted after it "
                      "(markers have negative ids: 'WHERE id >= 0' is every loaded row)",
        },
        "load": {"copy_seconds": round(copy_s, 3), "toast_relation_size": toast[0],
                 "rows_compressed_inline": toast[1]},
        "target_rows_per_s": TOAST_TARGET_ROWS_PER_S,
        "backfill": backfill,
        "counter_update_warm": {"trials": warm, "median_rows_per_s": median, "min_rows_per_s": min(rates),
                                "max_rows_per_s": max(rates),
                                "texts_to_embed": [w["texts_to_embed"] for w in warm], "target_met": met},
        "title_update_warm": title,
        "counter_update_after_restart": cold,
        "table": table,
    }
    write_json(out, data)
    plot_bars(
        out.with_suffix(".png"),
        f"PgChangeSource, {rows:,} rows with TOASTed bodies ({machine['cores']} cores); "
        f"target {TOAST_TARGET_ROWS_PER_S:,} rows/s",
        ["counter UPDATE (warm)", "title UPDATE (warm)", "counter UPDATE after restart"],
        {"rows/s": [median, title["rows_per_s"], cold["rows_per_s"]],
         "target": [TOAST_TARGET_ROWS_PER_S, None, None]},
        "rows/s",
        {"rows/s": [(min(rates), max(rates)), None, None]},
    )
    print(f"done in {elapsed:.0f}s; target {'met' if met else 'NOT met'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_cdc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=0, help="backlog rows per trial (default 200000, quick 50000)")
    ap.add_argument("--txn-rows", type=int, default=20_000, help="rows per COPY transaction (default 20000)")
    ap.add_argument("--trials", type=int, default=0, help="backlog trials (default 3, quick 2)")
    ap.add_argument("--max-changes", type=int, default=5000, help="read_batch max_changes (default 5000)")
    ap.add_argument("--read-timeout", type=float, default=2.0, help="read_batch timeout (s)")
    ap.add_argument("--rate", type=int, default=2000, help="steady-stream insert rate, rows/s (default 2000)")
    ap.add_argument("--seconds", type=float, default=0, help="steady-stream duration (default 10, quick 5)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile one extra backlog drain (done anyway when the backlog misses the target)")
    ap.add_argument("--no-profile", action="store_true", help="never profile")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="JSON result path (PNG written next to it)")
    ap.add_argument("--toast", action="store_true",
                    help="the TOAST case instead: --rows docs (default 200000, quick 20000) with out-of-line bodies, "
                         "UPDATE of a column outside template and payload; writes cdc_toast.json")
    ap.add_argument("--body-bytes", type=int, default=4096, help="TOAST case: body size (default 4096)")
    ap.add_argument("--decoder", choices=["compiled", "python"], default=None,
                    help="row-change decoder for the whole run (default: compiled when built, else python); "
                         "(c) measures both either way")
    args = ap.parse_args(argv)
    args.decoder = args.decoder or available_decoders()[0]
    if args.decoder not in available_decoders():
        ap.error("--decoder compiled: actors._pgtuple is not built (run `make install`; it needs gcc)")
    with row_decoder(args.decoder):
        return toast_main(args) if args.toast else backlog_main(args)


def backlog_main(args: argparse.Namespace) -> int:
    """(a), (b), (c): the books backlog, the steady stream, decode only."""
    args.rows = args.rows or (50_000 if args.quick else 200_000)
    args.trials = args.trials or (2 if args.quick else 3)
    args.seconds = args.seconds or (5.0 if args.quick else 10.0)
    out = Path(args.out) if args.out else RESULTS_DIR / ("cdc_quick.json" if args.quick else "cdc.json")
    logging.basicConfig(level=logging.WARNING)
    machine = machine_info()
    t_start = time.perf_counter()

    # keep autovacuum/analyze of the fresh rows out of the timed reads
    with bench_server("bench-cdc-", BOOKS_DDL, "ALTER TABLE books SET (autovacuum_enabled = false)") as server:
        pg, dsn, server_version, pg_pid = server
        bench = None
        try:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                settings = {
                    k: conn.execute(f"SHOW {k}").fetchone()[0]
                    for k in ("wal_level", "logical_decoding_work_mem", "shared_buffers", "fsync",
                              "synchronous_commit")
                }
            bench = Bench(dsn, pg_pid, args)
            print(f"PostgreSQL {server_version} on 127.0.0.1:{pg.port}; slot {SLOT} live; walsender pid "
                  f"{bench.walsender_pid}")
            print(f"CPU: {machine['cpu_model']} x {machine['cores']}, flags {machine.get('cpu_flags')}, "
                  f"load average {machine['load_average_at_start']}")

            print(f"(a) backlog: {args.trials} rounds x {args.rows:,} rows per decoder "
                  f"({args.txn_rows:,} rows per COPY transaction), read_batch(max_changes={args.max_changes})")
            backlogs, copy_times = bench.backlog()
            backlog = backlogs[args.decoder]
            for name, res in backlogs.items():
                print(f"    {name} decoder: median {res.median_rate:,.0f} changes/s")

            print(f"(c) decode only: recording {args.rows:,} changes and re-decoding them offline "
                  f"({' and '.join(available_decoders())} decoder, interleaved)")
            decode_only = bench.record_and_decode(args.rows)
            decode_only.pop("_messages")
            for name, d in decode_only["by_decoder"].items():
                print(f"    {name}: {d['changes_per_s']:,.0f} changes/s wall, {d['changes_per_cpu_s']:,.0f} per "
                      f"CPU-second ({d['cpu_us_per_change']} CPU-us/change)")

            prof = None
            below = backlog.median_rate < TARGET_CHANGES_PER_S
            if (args.profile or below) and not args.no_profile:
                print(f"profile: cProfile of one {args.rows:,}-row drain")
                prof = bench.profile(args.rows)

            print(f"(b) steady stream: {args.rate:,} rows/s for {args.seconds:.0f} s")
            steady = bench.steady(args.rate, args.seconds)
            print(f"    decoded {steady['changes_decoded']:,} changes, p99 latency {steady['latency_ms']['p99']} ms")
        finally:
            if bench is not None:
                bench.close()

    # -- report ----------------------------------------------------------------
    def backlog_summary(res: TrialResult) -> dict[str, Any]:
        cpu = res.extra["cpu"]
        own = statistics.median(c.get("own_cpu_s", 0) for c in cpu)
        wal = statistics.median(c.get("walsender_cpu_s", 0) for c in cpu)
        own_us = own / args.rows * 1e6
        ceiling = 1e6 / own_us if own_us else None
        summary = res.summary()
        return {**summary, "reader_cpu_us_per_change": round(own_us, 3),
                "reader_cpu_bound_changes_per_s": round(ceiling, 1) if ceiling else None,
                "median_other_cores": statistics.median(c.get("other_cores", 0) for c in cpu),
                "walsender_cpu_us_per_change": round(wal / args.rows * 1e6, 3),
                "mean_batch": res.extra.get("mean_batch"),
                "target_met": summary["median_rate"] >= TARGET_CHANGES_PER_S}

    by_decoder = {name: backlog_summary(res) for name, res in backlogs.items()}
    s = by_decoder[args.decoder]
    rows_tbl = [
        *[[f"(a) backlog, end to end ({name} decoder)", b["median_rate"], b["min_rate"], b["max_rate"],
           b["reader_cpu_us_per_change"], b["reader_cpu_bound_changes_per_s"], b["walsender_cpu_us_per_change"],
           b["median_other_cores"], "yes" if b["target_met"] else "NO"]
          for name, b in by_decoder.items()],
        *[[f"(c) decode only, offline ({name} decoder)", d["changes_per_s"], None, None,
           d["cpu_us_per_change"], d["changes_per_cpu_s"], None, None,
           "yes" if d["changes_per_s"] >= TARGET_CHANGES_PER_S else "NO"]
          for name, d in decode_only["by_decoder"].items()],
        [f"(b) steady {args.rate}/s, {args.seconds:.0f}s", steady["decoded_rate_over_run"], None, None,
         steady["reader_cpu_us_per_change"], None, steady["walsender_cpu_us_per_change"],
         steady["cpu"].get("other_cores"), "kept up" if steady["kept_up"] else "FELL BEHIND"],
    ]
    table = print_table(
        f"CDC decode (PgChangeSource, pgoutput v1, null embedder/sink), target >= {TARGET_CHANGES_PER_S:,} changes/s",
        ["measurement", "changes/s (median)", "min", "max", "reader CPU us/change",
         "reader-CPU-bound changes/s", "walsender CPU us/change", "others' load (cores)", "target met"],
        rows_tbl,
    )
    print("reader-CPU-bound changes/s = 1e6 / reader CPU us per change: the rate with a core of its own "
          "(the walsender runs on the other one)")
    lat = steady["latency_ms"]
    print(f"steady stream: insert->decoded latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms, "
          f"max {lat['max']} ms; reader used {steady['reader_cpu_share_of_one_core']:.1%} of one core; "
          f"mean batch {steady['mean_batch']}")
    if prof:
        print_table(
            f"cProfile of one {args.rows:,}-row backlog drain ({prof['wall_s_profiled']} s under the profiler)",
            ["function", "calls", "tottime s", "cumtime s", "share of wall"],
            [[r["function"], r["calls"], r["tottime_s"], r["cumtime_s"], r["tottime_share"]]
             for r in prof["top_by_tottime"][:15]],
        )
    elapsed = round(time.perf_counter() - t_start, 1)
    data = {
        **result_header("cdc", "benchmarks.bench_cdc", machine),
        "quick": args.quick,
        "elapsed_s": elapsed,
        "postgres": {"version": server_version, **settings},
        "implementation": {**implementation_fingerprint(), "decoder": args.decoder},
        "settings": {
            "rows_per_trial": args.rows, "txn_rows": args.txn_rows, "trials": args.trials,
            "max_changes": args.max_changes, "read_timeout_s": args.read_timeout,
            "table": "books(id serial pk, name text, description text, author text, year int)",
            "text_template": "{name}: {description}", "payload": ["name", "author", "year"],
            "warmup": "one untimed 10,000-row backlog per decoder before the trials",
            "rounds": "each round drains one fresh backlog per decoder (interleaved)",
            "steady_rate": args.rate, "steady_seconds": args.seconds,
        },
        "target_changes_per_s": TARGET_CHANGES_PER_S,
        "backlog": {**s, "decoder": args.decoder, "copy_seconds": [round(x, 3) for x in copy_times]},
        "backlog_by_decoder": by_decoder,
        "compiled_speedup_end_to_end": (round(by_decoder["compiled"]["median_rate"] / by_decoder["python"]["median_rate"], 3)
                                        if len(by_decoder) == 2 else None),
        "decode_only": decode_only,
        "steady": steady,
        "profile": prof,
        "table": table,
    }
    write_json(out, data)
    plot_bars(
        out.with_suffix(".png"),
        f"PgChangeSource decode rate ({args.rows:,}-row backlog, {machine['cores']} cores of "
        f"{machine['cpu_model']}, {'+'.join(machine.get('cpu_flags') or []) or 'no listed flags'}); "
        f"target {TARGET_CHANGES_PER_S:,}/s",
        ["backlog end to end", "decode only (offline)"],
        {**{f"{name} decoder": [b["median_rate"], decode_only["by_decoder"][name]["changes_per_s"]]
            for name, b in by_decoder.items()},
         "target": [TARGET_CHANGES_PER_S, TARGET_CHANGES_PER_S]},
        "changes/s",
        {f"{name} decoder": [(b["min_rate"], b["max_rate"]), None] for name, b in by_decoder.items()},
    )
    print(f"done in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
