"""Nothing lost, nothing stuck (issue 11): poison rows become dead letters, sink outages are waited out.

Real failures only: a row whose point is over the store's request limit (embedded Qdrant's
``sink.max_request_bytes``, MariaDB's ``max_allowed_packet``), a MariaDB that is stopped for a
while, a writer actor (the owner of the embedded store) killed again and again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.checks import assert_index_equals_table
from tests.support.churn import ChurnWriter
from tests.support.harness import (
    REPO,
    confirmed_lsn,
    current_lsn,
    free_port,
    start_run,
    wait_caught_up,
    ray_actor_pids,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

#: how long the sink outage lasts (the issue asks for 30 s and 5 minutes: EMBEDCLUSTER_OUTAGE_S=300)
OUTAGE_S = float(os.environ.get("EMBEDCLUSTER_OUTAGE_S", "30"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def _insert(dsn: str, *descriptions: str) -> list[int]:
    """Books with these descriptions, in one transaction (so in one batch of the pipeline)."""
    with psycopg.connect(dsn) as conn:
        return [conn.execute("INSERT INTO books (name, description, author, year) VALUES ('Poison', %s, 'X', 2000) "
                             "RETURNING id", (d,)).fetchone()[0] for d in descriptions]


def _letters(config: Path) -> list[dict[str, Any]]:
    done = _cli("deadletter", "list", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _verify(config: Path) -> tuple[int, dict[str, Any]]:
    done = _cli("verify", "--config", str(config), "--json")
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def test_poison_rows_are_dead_lettered_the_slot_moves_on_and_retry_writes_them(
    books: str, sink_settings: dict[str, Any], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    port = free_port()
    if sink_settings["kind"] == "qdrant":
        size = 40_000  # over the embedded store's smallest request limit
        low, high = {**sink_settings, "max_request_bytes": 16384}, {**sink_settings, "max_request_bytes": 1 << 20}
        raise_limit = None
    else:
        size = 1_500_000  # over a 1 MiB max_allowed_packet
        low = high = sink_settings
        server = request.getfixturevalue("mariadb")

        def packet(value: int | None = None) -> int:
            conn = server.root_connection()
            try:
                with conn.cursor() as cur:
                    if value is not None:
                        cur.execute(f"SET GLOBAL max_allowed_packet = {int(value)}")
                    cur.execute("SELECT @@GLOBAL.max_allowed_packet")
                    return int(cur.fetchone()[0])
            finally:
                conn.close()
        original = packet()
        packet(1 << 20)  # the pipeline's connections see 1 MiB
        request.addfinalizer(lambda: packet(original))
        raise_limit = lambda: packet(original)  # noqa: E731
    config = write_config(tmp_path / "ec.toml", books, port, low, model="null")
    app = start_run(config, port, tmp_path / "run.log")
    try:
        wait_caught_up(books, "embedcluster")
        first, *rest = _insert(books, "p" * size, "A perfectly ordinary description of a book.", "q" * size,
                               "Another ordinary one.")
        poison = [first, rest[1]]
        wait_caught_up(books, "embedcluster")  # the slot moved past the poison rows
        stats = wait_for(lambda: (s := app.stats())["dead_letters"] == 2 and s, 30, "two dead letters in /stats")
        assert stats["state"] == "streaming"
        shown = _cli("status", "--config", str(config))
        assert "dead letters:  2 (embedcluster deadletter list)" in shown.stdout, shown.stdout
        letters = _letters(config)
        assert sorted(d["key"] for d in letters) == [[k] for k in poison]
        limit = "sink.max_request_bytes" if sink_settings["kind"] == "qdrant" else "max_allowed_packet"
        assert all(d["table"] == "public.books" and d["op"] == "upsert" and limit in d["error"] and d["lsn"] > 0
                   for d in letters), letters
        code, report = _verify(config)  # the index lacks exactly the poison rows
        assert code == 1 and report["missing"] == 2 and (report["stale"], report["orphans"]) == (0, 0)
        # one is given up on purpose (through the running writer on the embedded store)
        refused = _cli("deadletter", "drop", "--config", str(config), "--key", str(poison[1]))
        assert refused.returncode == 2 and "pass --yes" in refused.stderr
        dropped = _cli("deadletter", "drop", "--config", str(config), "--key", str(poison[1]), "--yes")
        assert dropped.returncode == 0 and "dropped 1 dead letters" in dropped.stdout, dropped.stderr[-2000:]
        assert [d["key"] for d in _letters(config)] == [[poison[0]]]
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    log = app.cli.output()
    assert "dead-lettered after" in log and "writing it in halves" in log

    # the cause is fixed (a larger limit); retry writes the current row of what is left
    still = _cli("deadletter", "retry", "--config", str(config))
    assert still.returncode == 1 and "0 dead letters resolved, 1 still failing" in still.stdout, still.stdout
    if raise_limit is not None:
        raise_limit()
    config = write_config(tmp_path / "ec.toml", books, port, high, model="null")
    done = _cli("deadletter", "retry", "--config", str(config))
    assert done.returncode == 0 and "1 dead letters resolved, 0 still failing" in done.stdout, done.stdout + done.stderr
    assert _cli("deadletter", "list", "--config", str(config)).stdout.strip() == "no dead letters"
    code, report = _verify(config)
    assert code == 1 and report["missing"] == 1  # the dropped one: given up, still reported
    assert report["tables"]["public.books"]["examples"]["missing"][0]["key"] == [poison[1]]
    assert _cli("verify", "--config", str(config), "--repair").returncode == 1
    assert _verify(config)[0] == 0
    assert_index_equals_table(books, high)


def _slot_pid(dsn: str, slot: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return row[0] if row else None


def test_a_mysql_outage_is_waited_out_and_the_pipeline_resumes_by_itself(
    books: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.mariadb import private_mariadb

    with private_mariadb() as server:
        monkeypatch.setenv("EMBEDCLUSTER_SINK_PASSWORD", server.password)
        sink = {"kind": "mysql", "dsn": server.dsn(), "table": "books_outage", "dialect": "auto"}
        port = free_port()
        config = write_config(tmp_path / "ec.toml", books, port, sink, model="null")
        app = start_run(config, port, tmp_path / "run.log")
        churn = ChurnWriter(books, seed=3)
        try:
            wait_caught_up(books, "embedcluster")
            walsender = _slot_pid(books, "embedcluster")
            churn.start()
            wait_for(lambda: churn.transactions >= 5, 30, "the first churn transactions")
            server.halt()
            halted = time.monotonic()
            wait_for(lambda: (app.stats().get("sink_unavailable_s") or 0) > 0, 30, "the writer to notice the outage")
            before = confirmed_lsn(books, "embedcluster")
            # the outage: changes keep coming, nothing is confirmed, the replication connection stays
            while time.monotonic() - halted < OUTAGE_S:
                time.sleep(1.0)
                assert confirmed_lsn(books, "embedcluster") == before, "the slot advanced during the sink outage"
                assert _slot_pid(books, "embedcluster") == walsender, "the replication connection was dropped"
            assert current_lsn(books) > before and app.stats()["state"] == "streaming"
            churn.finish()
            server.relaunch()
            back = time.monotonic()
            wait_for(lambda: confirmed_lsn(books, "embedcluster") > before, 30, "the first confirmation after the outage",
                     interval=0.1)
            resumed_s = time.monotonic() - back
            wait_caught_up(books, "embedcluster", timeout=120)
            assert app.stats()["sink_unavailable_s"] is None
        finally:
            churn.stop_event.set()
            server.relaunch()
            rc = app.cli.stop(signal.SIGTERM)
        assert rc == 0, app.cli.output()[-3000:]
        print(f"mysql outage of {OUTAGE_S:.0f} s: resumed {resumed_s:.2f} s after the sink returned")
        assert resumed_s < 10, f"resumed {resumed_s:.1f} s after the sink returned"
        assert "the sink is not answering" in app.cli.output()
        assert "dead-lettered" not in app.cli.output()  # an outage sets nothing aside
        assert_index_equals_table(books, sink)


def test_the_embedded_stores_owner_killed_again_and_again(books: str, tmp_path: Path) -> None:
    sink = {"kind": "qdrant", "collection": "books", "path": str(tmp_path / "qdrant")}
    port = free_port()
    config = write_config(tmp_path / "ec.toml", books, port, sink, model="null")
    app = start_run(config, port, tmp_path / "run.log")
    churn = ChurnWriter(books, seed=9)
    try:
        wait_caught_up(books, "embedcluster")
        churn.start()
        wait_for(lambda: churn.transactions >= 5, 30, "the first churn transactions")
        started, kills = time.monotonic(), 0
        # the writer (and with it the store) is gone for 20 s: each restarted actor is killed again
        while time.monotonic() - started < 20:
            for pid in ray_actor_pids("WriterActor"):
                os.kill(pid, signal.SIGKILL)
                kills += 1
            time.sleep(0.2)
        before = confirmed_lsn(books, "embedcluster")
        churn.finish()
        back = time.monotonic()
        wait_for(lambda: confirmed_lsn(books, "embedcluster") > before, 60, "the first confirmation after the kills",
                 interval=0.1)
        resumed_s = time.monotonic() - back
        wait_caught_up(books, "embedcluster", timeout=120)
        assert wait_for(lambda: app.stats()["state"] == "streaming", 30, "streaming again")
    finally:
        churn.stop_event.set()
        rc = app.cli.stop(signal.SIGTERM)
    assert rc == 0, app.cli.output()[-3000:]
    assert kills >= 3, kills
    print(f"writer killed {kills} times in 20 s: resumed {resumed_s:.2f} s after it was let be")
    assert resumed_s < 10, f"resumed {resumed_s:.1f} s after the writer was let be"
    assert_index_equals_table(books, sink)
