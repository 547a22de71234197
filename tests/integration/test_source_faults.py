"""The source misbehaving under a running reader: stalls, restarts, slots taken or dropped, WAL growth.

Real PostgreSQL servers only.  The tests that restart a server or change its
limits use a private one of this module (``faults_pg``), never the session's.
"""

from __future__ import annotations

import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from actors.cdc_reader import PgChangeSource
from actors.changes import ChangeBatch
from actors.source_schema import SourceError, SourceFatal, inspect_source
from cluster.config import config_from_dict
from cluster.pgserver import LocalPostgres
from cluster.pipeline import is_fatal, is_permanent
from tests.integration.checks import assert_index_equals_table
from tests.support.harness import (
    CliProcess,
    confirmed_lsn,
    current_lsn,
    free_port,
    private_postgres,
    start_run,
    wait_caught_up,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

MIB = 1 << 20
BOOKS = "CREATE TABLE books (id serial PRIMARY KEY, name text, description text, author text, year int)"


@pytest.fixture(scope="module")
def faults_pg() -> Iterator[LocalPostgres]:
    with private_postgres() as server:
        yield server


def with_options(dsn: str, options: str) -> str:
    """``dsn`` with libpq ``options`` (e.g. ``-c wal_sender_timeout=2s``) for every connection it opens."""
    return f"{dsn}?options={urllib.parse.quote(options)}"


def make_source(dsn: str, slot: str = "faults", extra: dict[str, Any] | None = None) -> PgChangeSource:
    config = config_from_dict(
        {
            "source": {"dsn": dsn, "slot": slot, "publication": slot, **(extra or {})},
            "tables": [{"name": "public.books", "text": "{description}", "payload": ["name"]}],
        },
        origin="test",
        environ={},
    )
    return PgChangeSource(config.source, inspect_source(config.source, config.tables))


def drain_backfill(source: PgChangeSource) -> None:
    deadline = time.monotonic() + 30
    while not source.read_batch(1000, 0.5).snapshot_complete:
        assert time.monotonic() < deadline, "the backfill did not end"


def read_changes(source: PgChangeSource, wanted: int, timeout: float = 30) -> list[ChangeBatch]:
    batches: list[ChangeBatch] = []
    deadline = time.monotonic() + timeout
    while sum(len(b) for b in batches) < wanted:
        assert time.monotonic() < deadline, f"only {sum(len(b) for b in batches)} of {wanted} changes arrived"
        batch = source.read_batch(5000, 0.5)
        if batch.changes:
            batches.append(batch)
    return batches


def walsender(dsn: str, slot: str) -> tuple[int | None, bool]:
    """(pid of the walsender using ``slot``, whether pg_stat_replication lists it as streaming)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT s.active_pid, r.state FROM pg_replication_slots s "
            "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = %s",
            (slot,),
        ).fetchone()
    return (row[0], row[1] == "streaming") if row else (None, False)


# -- a sink stall longer than wal_sender_timeout -------------------------------------


def test_an_unread_stream_stays_connected_past_wal_sender_timeout(dsn: str) -> None:
    """While the window is full nobody calls read_batch: the reader must still answer the
    server (status updates with the acknowledged position only) so the walsender does
    not end the connection after wal_sender_timeout, and must not read the WAL meanwhile
    (backpressure: PostgreSQL keeps the backlog)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BOOKS)
    timeout_s = 2.0
    source = make_source(with_options(dsn, f"-c wal_sender_timeout={int(timeout_s * 1000)}ms"))
    source.start(backfill=True)
    try:
        drain_backfill(source)  # streaming now
        pid, streaming = walsender(dsn, "faults")
        assert pid is not None and streaming
        with psycopg.connect(dsn) as conn:
            # a backlog larger than the socket buffers: the walsender blocks writing it
            with conn.cursor() as cur, cur.copy("COPY books (name, description) FROM STDIN") as copy:
                for i in range(20_000):
                    copy.write_row((f"row {i}", "x" * 200))
            conn.commit()
        received = source.position()["received"]
        acked = source.position()["acked"]
        # The stall: three timeouts without a read.  Watched all along, not slept through.
        stall_ends = time.monotonic() + 3 * timeout_s
        while time.monotonic() < stall_ends:
            now_pid, now_streaming = walsender(dsn, "faults")
            assert (now_pid, now_streaming) == (pid, True), (
                f"{time.monotonic() - stall_ends + 3 * timeout_s:.1f} s into the stall the walsender is "
                f"{now_pid} (streaming: {now_streaming}), was {pid}"
            )
            time.sleep(0.2)
        assert source.position()["received"] == received, "the reader read the stream while nobody asked it to"
        assert source.position()["acked"] == acked
        batches = read_changes(source, 20_000)
        names = [c.payload["name"] for b in batches for c in b.changes]
        assert names == [f"row {i}" for i in range(20_000)]
        assert walsender(dsn, "faults")[0] == pid, "the stream was reconnected"
        source.ack(batches[-1].ack_lsn)
    finally:
        source.close()


def test_a_fast_shutdown_does_not_wait_for_a_stalled_pipeline(faults_pg: LocalPostgres) -> None:
    """A logical walsender that shuts down waits until its client confirmed everything sent,
    or until wal_sender_timeout of silence.  With the status updates of a stalled reader that
    would be for as long as the sink is away: PostgreSQL refusing connections meanwhile.  The
    reader notices the server ending its idle connections and ends the stream; the shutdown
    completes, and after the restart the reader resumes from the slot, nothing lost."""
    dsn = books_db(faults_pg, "shutdown")
    source = make_source(dsn, slot="shutdown")  # the server's wal_sender_timeout: 60 s
    source.start(backfill=True)
    try:
        drain_backfill(source)
        with psycopg.connect(dsn) as conn:
            with conn.cursor() as cur, cur.copy("COPY books (name, description) FROM STDIN") as copy:
                for i in range(20_000):
                    copy.write_row((f"row {i}", "x" * 200))
            conn.commit()
        started = time.monotonic()
        faults_pg.stop(mode="fast")  # pg_ctl -w: returns when stopped, or after 60 s
        took = time.monotonic() - started
        stopped = not (faults_pg.data_dir / "postmaster.pid").exists()
        faults_pg.start()
        assert stopped and took < 20, f"the fast shutdown took {took:.1f} s (stopped: {stopped})"
        with pytest.raises((SourceError, psycopg.OperationalError)):
            read_changes(source, 20_000)
        source.close()
        source.start(backfill=False)
        names = [c.payload["name"] for b in read_changes(source, 20_000) for c in b.changes]
        assert names == [f"row {i}" for i in range(20_000)]
    finally:
        source.close()


# -- errors retrying cannot fix, and the ones it can -----------------------------------


def books_db(server: LocalPostgres, name: str, rows: int = 0) -> str:
    dsn = server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BOOKS)
        if rows:
            conn.execute("INSERT INTO books (name, description) SELECT 'book ' || i, 'text ' || i "
                         "FROM generate_series(1, %s) i", (rows,))
    return dsn


def test_a_slot_held_by_another_process_is_waited_for_then_fatal(faults_pg: LocalPostgres) -> None:
    """Another client streaming our slot may be our own previous process, whose walsender
    exits a moment after it died: waited for (bounded), then a fatal line naming the holder."""
    dsn = books_db(faults_pg, "held")
    source = make_source(dsn, slot="held")
    source.start(backfill=True)
    drain_backfill(source)
    source.close()

    def recvlogical() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [str(faults_pg.bin / "pg_recvlogical"), "-d", dsn, "--slot", "held", "--start", "--no-loop",
             "-f", "/dev/null", "-o", "proto_version=1", "-o", "publication_names=held"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for(lambda: walsender(dsn, "held")[0] is not None, 20, "pg_recvlogical to hold the slot")
        return proc

    # held for a moment only (a restart race): start waits, then streams
    other = recvlogical()
    try:
        source.busy_wait_s = 30
        releaser = threading.Timer(1.5, other.terminate)
        releaser.start()
        started = time.monotonic()
        source.start(backfill=False)
        waited = time.monotonic() - started
        assert 1.0 < waited < 15, f"start returned after {waited:.1f} s"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO books (name, description) VALUES ('after', 'the wait')")
        assert [c.payload["name"] for b in read_changes(source, 1) for c in b.changes] == ["after"]
    finally:
        source.close()
        other.terminate()
        other.wait(10)

    # held for good: fatal once the bounded wait is over, naming the holder and the fix
    other = recvlogical()
    try:
        holder = walsender(dsn, "held")[0]
        source.busy_wait_s = 2
        started = time.monotonic()
        with pytest.raises(SourceFatal) as info:
            source.start(backfill=False)
        assert 2 <= time.monotonic() - started < 10
        line = str(info.value)
        assert is_fatal(info.value) and is_permanent(info.value)
        assert "\n" not in line
        for needle in ("replication slot held is in use", f"process {holder}", "pg_recvlogical",
                       f"pg_terminate_backend({holder})", "source.slot"):
            assert needle in line, f"{needle!r} not in {line!r}"
    finally:
        source.close()
        other.terminate()
        other.wait(10)


def test_no_free_replication_slot_or_wal_sender_is_fatal(faults_pg: LocalPostgres) -> None:
    """max_replication_slots or max_wal_senders used up by others: one line with the fix."""
    dsn = books_db(faults_pg, "limits")
    with psycopg.connect(dsn, autocommit=True) as conn:
        limit = int(conn.execute("SHOW max_replication_slots").fetchone()[0])
        used = conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0]
        for i in range(limit - used):
            conn.execute("SELECT pg_create_physical_replication_slot(%s)", (f"filler_{i}",))
    source = make_source(dsn, slot="limits")
    try:
        with pytest.raises(SourceFatal) as info:
            source.start(backfill=True)
        line = str(info.value)
        assert is_fatal(info.value)
        assert "all max_replication_slots slots of the server are in use" in line and "pg_drop_replication_slot" in line
    finally:
        source.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name LIKE 'filler\\_%'")

    with psycopg.connect(dsn, autocommit=True) as conn:
        senders = int(conn.execute("SHOW max_wal_senders").fetchone()[0])
        busy = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]
    taken = [psycopg.connect(dsn, autocommit=True, replication="database") for _ in range(senders - busy)]
    try:
        source.busy_wait_s = 1
        with pytest.raises(SourceFatal) as info:
            source.start(backfill=True)
        line = str(info.value)
        assert is_fatal(info.value)
        assert f"max_wal_senders = {senders} are in use" in line and "raise max_wal_senders" in line
        # one freed meanwhile (our own previous walsender exiting): the wait ends there
        source.busy_wait_s = 30
        threading.Timer(1.0, taken.pop().close).start()
        source.start(backfill=True)
        drain_backfill(source)
    finally:
        source.close()
        for conn in taken:
            conn.close()


def test_a_slot_dropped_while_streaming_is_fatal_not_a_silent_new_snapshot(faults_pg: LocalPostgres) -> None:
    """Someone ends our walsender and drops the slot: the stream ends (transient, as for a
    restart), and the recovery's slot_status finds the slot gone: fatal, since a new slot
    would silently skip what the old one had not confirmed."""
    dsn = books_db(faults_pg, "dropped", rows=3)
    source = make_source(dsn, slot="dropped")
    source.start(backfill=True)
    try:
        drain_backfill(source)
        drop_slot_from_under(dsn, "dropped")
        with pytest.raises(SourceError) as info:
            read_changes(source, 1, timeout=10)
        assert not is_permanent(info.value), "a stream that ended is retried"
        source.close()
        with pytest.raises(SourceFatal) as info:
            source.slot_status()
        assert is_fatal(info.value)
        assert "replication slot dropped was dropped while the pipeline used it" in str(info.value)
        assert "embedcluster run again" in str(info.value)
    finally:
        source.close()


def drop_slot_from_under(dsn: str, slot: str) -> None:
    """What an operator does to drop a slot in use: end its walsender, drop it (retried while the
    walsender exits or the reader reconnects)."""
    def dropped() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse:
                return False
            except psycopg.errors.UndefinedObject:
                return True
            return True

    wait_for(dropped, 30, f"slot {slot} to be dropped", interval=0.1)


# -- end to end: embedcluster run ---------------------------------------------------------


def run_config(tmp_path: Path, dsn: str, slot: str, source_extra: str = "") -> tuple[Path, int]:
    port = free_port()
    path = write_config(tmp_path / "ec.toml", dsn, port, {"kind": "qdrant", "path": str(tmp_path / "q")}, slot=slot)
    if source_extra:
        text = path.read_text().replace(f'publication = "{slot}"\n', f'publication = "{slot}"\n{source_extra}\n', 1)
        path.write_text(text)
    return path, port


def wait_exit(cli: CliProcess, timeout: float) -> int:
    wait_for(lambda: not cli.alive(), timeout, "embedcluster run to exit", interval=0.2)
    return cli.stop()


def error_line_of(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), f"the run did not end with an error line:\n{output[-3000:]}"
    return lines[-1]


def insert_books(dsn: str, names: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute("INSERT INTO books (name, description) VALUES (%s, %s)", (name, f"the story of {name}"))


def test_a_run_survives_restarts_follows_unpublished_wal_and_ends_when_its_slot_is_dropped(
    faults_pg: LocalPostgres, tmp_path: Path
) -> None:
    """One `embedcluster run` (starting one costs most of a minute here), three stories:

    1. fast and immediate shutdowns of PostgreSQL under it: it keeps running,
       reconnects (stream, side and stats connections), resumes from the slot;
    2. 50 MB of WAL written to a table outside the publication while the configured
       one is idle: the slot follows (lag back under 1 MB within 10 s), so the
       server can recycle that WAL;
    3. the slot dropped from under it: the run exits 1 with one line saying what
       happened and what to do, instead of retrying for ever (or silently taking a
       new snapshot that skips what the old slot had not confirmed).

    Nothing is lost on the way: the store equals the table at the end.
    """
    dsn = books_db(faults_pg, "restarts", rows=5)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE unpublished (id bigserial PRIMARY KEY, pad text)")
    config, port = run_config(tmp_path, dsn, "restarts")
    app = start_run(config, port, tmp_path / "run.log")
    try:
        insert_books(dsn, ["before"])
        wait_caught_up(dsn, "restarts", 30)
        # 1. restarts
        for mode in ("fast", "immediate"):
            insert_books(dsn, [f"just before {mode}"])  # maybe not confirmed when the server goes
            faults_pg.stop(mode=mode)
            faults_pg.start()
            insert_books(dsn, [f"after {mode} {i}" for i in range(3)])
            app.wait_healthy(timeout=60)
            wait_caught_up(dsn, "restarts", 60)
            stats = app.stats()
            assert stats["state"] == "streaming" and stats["errors"] >= 1
            wait_for(lambda: app.stats()["lag_bytes"] is not None, 10, "the stats connection to come back")
        # 2. WAL of tables outside the publication
        started = current_lsn(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            while current_lsn(dsn) - started < 50 * MIB:
                conn.execute("INSERT INTO unpublished (pad) SELECT md5(i::text) || repeat('x', 968) "
                             "FROM generate_series(1, 5000) i")
        written, done = current_lsn(dsn), time.monotonic()
        wait_for(lambda: current_lsn(dsn) - confirmed_lsn(dsn, "restarts") < MIB, 10,
                 "the slot to follow the WAL of the unpublished table")
        print(f"50 MB of unpublished WAL: slot lag under 1 MiB {time.monotonic() - done:.2f} s after the last write")
        assert confirmed_lsn(dsn, "restarts") > written - MIB
        # 3. the slot dropped from under the run
        insert_books(dsn, ["last"])
        wait_caught_up(dsn, "restarts", 30)
        drop_slot_from_under(dsn, "restarts")
        code = wait_exit(app.cli, 60)
        output = app.cli.output()
    finally:
        if app.cli.alive():
            app.cli.stop()
    assert code == 1, output[-3000:]
    line = error_line_of(output)
    assert "replication slot restarts was dropped while the pipeline used it" in line, line
    assert "embedcluster run again" in line
    assert_index_equals_table(dsn, {"kind": "qdrant", "collection": "embedcluster", "path": str(tmp_path / "q")})


def test_a_publication_the_user_may_not_create_ends_the_run(faults_pg: LocalPostgres, tmp_path: Path) -> None:
    """A user with REPLICATION (preflight passes) who may not create the publication: the
    reader's start fails for good, and `run` exits 1 with the statement to run, instead of
    retrying for ever while /healthz says "recovering"."""
    dsn = books_db(faults_pg, "nopub", rows=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS ec_limited")
        conn.execute("CREATE ROLE ec_limited LOGIN REPLICATION")
        conn.execute("GRANT SELECT ON books TO ec_limited")
    limited = dsn.replace("postgresql://postgres@", "postgresql://ec_limited@")
    config, port = run_config(tmp_path, limited, "nopub")
    cli = CliProcess(["run", "--config", str(config)], tmp_path / "run.log")
    try:
        code = wait_exit(cli, 180)
    finally:
        if cli.alive():
            cli.kill_group()
    output = cli.output()
    assert code == 1, output[-3000:]
    line = error_line_of(output)
    for needle in ("cannot create publication nopub", "permission denied", "user ec_limited",
                   'CREATE PUBLICATION "nopub" FOR TABLE "public"."books"'):
        assert needle in line, f"{needle!r} not in {line!r}"
    assert output.count("cannot create publication nopub") <= 3, "it kept retrying"


# -- a slot that holds WAL: warned about -----------------------------------------------


def test_a_slot_lagging_past_max_lag_bytes_is_warned_about(
    faults_pg: LocalPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`status` (pipeline running or not), /stats (``lag_warning``) and the log (a WARNING at most
    once a minute) say when the slot holds more WAL than ``source.max_lag_bytes``."""
    import logging
    import sys

    from cluster.pipeline import PipelineCoordinator
    from tests.support.harness import REPO

    dsn = books_db(faults_pg, "lagging")
    source = make_source(dsn, slot="lagging")
    source.start(backfill=True)
    drain_backfill(source)
    source.close()  # the slot stays, confirmed where the pipeline stopped
    config_path, _ = run_config(tmp_path, dsn, "lagging", source_extra="max_lag_bytes = 1048576")

    def status() -> str:
        result = subprocess.run([sys.executable, "-m", "cluster.cli", "status", "--config", str(config_path)],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "warning:" not in status()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE elsewhere (pad text)")
        conn.execute("INSERT INTO elsewhere SELECT md5(i::text) || repeat('x', 968) FROM generate_series(1, 3000) i")
    out = status()
    warning = next((line for line in out.splitlines() if line.startswith("warning:")), None)
    assert warning is not None, out
    assert "slot lagging is" in warning and "above source.max_lag_bytes = 1.0 MiB" in warning, warning

    from cluster.config import load_config

    coordinator = PipelineCoordinator(load_config(str(config_path)), reader=None, embedders=[], writer=None,
                                      dimension=384)
    with caplog.at_level(logging.WARNING, logger="cluster.pipeline"):
        coordinator._refresh_slot_stats(force=True)
        coordinator._refresh_slot_stats(force=True)
    stats = coordinator.stats()
    assert stats["lag_bytes"] > MIB
    assert stats["lag_warning"] is not None and "above source.max_lag_bytes" in stats["lag_warning"]
    warned = [r for r in caplog.records if "above source.max_lag_bytes" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
