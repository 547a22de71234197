"""The chunked backfill through ``embedcluster run`` (embedded store): a SIGKILL at 60 % (the real
model) resumes from the last chunk stored, while other sessions write (null model from here on); ``embedcluster backfill``
indexes a table again under a changed template without dropping the slot or stopping the
stream; a table added to the config is backfilled beside the resumed stream."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg

from tests.support.harness import REPO, CliProcess, RunningApp, free_port, start_run, wait_caught_up, wait_for

SLOT = "chunked"


def _config(path: Path, dsn: str, port: int, store: Path, tables: list[dict[str, Any]], chunk: int = 500,
            readers: int = 2, model: str = "null") -> Path:
    lines = ["[source]", f'dsn = "{dsn}"', f'slot = "{SLOT}"', f'publication = "{SLOT}"',
             f"backfill_chunk = {chunk}", f"backfill_readers = {readers}", "max_batch_changes = 500", ""]
    for t in tables:
        lines += ["[[tables]]", f'name = {json.dumps(t["name"])}', f'text = {json.dumps(t["text"])}',
                  "payload = " + json.dumps(t["payload"]), ""]
    lines += ["[embedding]", f'model = "{model}"', "actors = 1", "",
              "[sink]", 'kind = "qdrant"', 'collection = "items"', f"path = {json.dumps(str(store))}", "",
              "[serve]", 'host = "127.0.0.1"', f"port = {port}", ""]
    path.write_text("\n".join(lines))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


class Churn(threading.Thread):
    """Updates, deletes, key changes and inserts all over ``items`` while it runs: about
    100 changes/s, under what the real model embeds even on a loaded 2-core CI machine, so the
    stream's backlog stays small and the test waits on the backfill, not on the churn."""

    def __init__(self, dsn: str, rows: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rows, self.done = dsn, rows, 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(11)
        next_id = self.rows + 1
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop_event.is_set():
                    with conn.transaction():
                        for _ in range(10):
                            key = rng.randrange(1, self.rows + 1)
                            roll = rng.random()
                            if roll < 0.5:
                                conn.execute("UPDATE items SET body = body || ' again', n = n + 1 WHERE id = %s", (key,))
                            elif roll < 0.7:
                                conn.execute("DELETE FROM items WHERE id = %s", (key,))
                            elif roll < 0.8:
                                conn.execute("UPDATE items SET id = %s WHERE id = %s", (next_id, key))
                                next_id += 1
                            else:
                                conn.execute("INSERT INTO items VALUES (%s, 0, %s)", (next_id, f"new row {next_id}"))
                                next_id += 1
                    self.done += 1
                    self.stop_event.wait(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_a_backfill_killed_at_60_percent_resumes_at_its_last_chunk_while_others_write(dsn: str, tmp_path: Path) -> None:
    rows, more = 15_000, 4_000  # items is 79 % of the rows
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table, n in (("items", rows), ("more_items", more)):
            conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, n int NOT NULL, body text NOT NULL)")
            conn.execute(f"INSERT INTO {table} SELECT g, 0, 'row number ' || g FROM generate_series(1, %s) g", (n,))
    port = free_port()
    tables = [{"name": "public.items", "text": "{body}", "payload": ["n"]},
              {"name": "public.more_items", "text": "{body}", "payload": ["n"]}]
    # one reader: items first, then more_items.  The real model (1,700 rows/s here, fewer on
    # slower CPUs) leaves time to lock more_items while items is read: the backfill cannot
    # get past the end of items, 79 % of the rows, before the kill.
    config = _config(tmp_path / "ec.toml", dsn, port, tmp_path / "store", tables, chunk=100, readers=1,
                     model="default")
    churn = Churn(dsn, rows)
    churn.start()
    # (not start_run: it waits for /healthz, which says "starting" until the backfill is done)
    app = RunningApp(CliProcess(["run", "--config", str(config)], tmp_path / "run1.log"), port)
    lock = psycopg.connect(dsn)
    try:
        wait_for(lambda: app.stats().get("state") == "backfilling", 240, "the backfill to start")
        lock.execute("LOCK TABLE more_items IN ACCESS EXCLUSIVE MODE")  # held until after the kill

        def stalled() -> Any:
            progress = app.stats().get("backfill") or {}
            return progress if progress.get("percent", 0) >= 60 or progress.get("finished") else None

        at_kill = wait_for(stalled, 120, "the backfill to pass 60 %", interval=0.05)
        assert not at_kill.get("finished"), "the backfill finished before it could be killed (more_items was not locked in time)"
        app.cli.kill_group()  # SIGKILL: run, its Ray, everything
        lock.rollback()
        assert "backfill written" not in app.cli.output()
        app = start_run(config, port, tmp_path / "run2.log")
        progress = wait_for(lambda: (app.stats().get("backfill") or {}).get("finished") and app.stats()["backfill"],
                            300, "the resumed backfill to finish")
        log = app.cli.output()
        assert "resuming stream and backfill" in log and "created at" not in log, log[-3000:]
        resumed = int(log.split("backfill resumes after ")[1].split(" rows")[0])
        # resumed at the last chunk the store holds (the plan is stored with it), not at 0 %
        assert resumed >= at_kill["rows_done"] - 2 * 100 and resumed >= 0.55 * at_kill["rows_total"], (resumed, at_kill)
        churn.stop_event.set()
        churn.join(30)
        assert churn.error is None and churn.done >= 20, (churn.error, churn.done)
        wait_caught_up(dsn, SLOT, timeout=300)
        verified = _cli("verify", "--config", str(config))
        assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]
    finally:
        churn.stop_event.set()
        lock.close()
        rc = app.cli.stop(signal.SIGTERM)
    assert rc == 0, app.cli.output()[-3000:]
    print(f"killed at {at_kill['percent']} % ({at_kill['rows_done']} rows), resumed after {resumed} rows; "
          f"the second run read {progress['rows_done'] - resumed} rows; {churn.done} churn transactions")


def test_backfill_command_and_an_added_table_index_again_without_dropping_the_slot(books: str, tmp_path: Path) -> None:
    port = free_port()
    books_table = {"name": "public.books", "text": "{description}", "payload": ["name", "author", "year"]}
    config = _config(tmp_path / "ec.toml", books, port, tmp_path / "store", [books_table], chunk=3, readers=1)
    app = start_run(config, port, tmp_path / "run1.log")
    try:
        app.wait_healthy()
        wait_for(lambda: app.stats()["state"] == "streaming", 120, "the first backfill")
    finally:
        assert app.cli.stop(signal.SIGTERM) == 0, app.cli.output()[-3000:]

    # a changed template: the resumed stream leaves the old texts in place, verify sees them
    _config(config, books, port, tmp_path / "store", [{**books_table, "text": "{name}: {description}"}], chunk=3,
            readers=1)
    app = start_run(config, port, tmp_path / "run2.log")
    try:
        app.wait_healthy()
        assert app.stats()["state"] == "streaming"
        stale = _cli("verify", "--config", str(config))
        assert stale.returncode == 1 and "stale" in stale.stdout, stale.stdout + stale.stderr
        requested = _cli("backfill", "--config", str(config), "--table", "books")
        assert requested.returncode == 0 and "backfill of public.books requested at" in requested.stdout, \
            requested.stdout + requested.stderr
        with psycopg.connect(books, autocommit=True) as conn:  # writes while it runs
            conn.execute("UPDATE books SET description = description || ' (revised)' WHERE id % 2 = 0")
            conn.execute("DELETE FROM books WHERE id = (SELECT max(id) FROM books)")
        assert app.stats()["state"] == "streaming"  # the index serves meanwhile: /healthz stays ok
        wait_for(lambda: (app.stats().get("backfill") or {}).get("finished"), 120, "the requested backfill")
        wait_caught_up(books, SLOT, timeout=120)
        clean = _cli("verify", "--config", str(config))
        assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
        log = app.cli.output()
        # the same slot (never dropped and created again), and a stream that never stopped
        assert "created at" not in log and "dropped slot" not in log, log[-3000:]
        assert log.count("resuming stream") == 1 and "replaying" not in log, log[-3000:]
    finally:
        assert app.cli.stop(signal.SIGTERM) == 0, app.cli.output()[-3000:]

    # a table added to the config: backfilled beside the resumed stream, the others left alone
    with psycopg.connect(books, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 50) g")
    _config(config, books, port, tmp_path / "store", [{**books_table, "text": "{name}: {description}"},
                                                    {"name": "public.notes", "text": "{body}", "payload": []}],
            chunk=7, readers=1)
    app = start_run(config, port, tmp_path / "run3.log")
    try:
        app.wait_healthy()
        wait_for(lambda: (app.stats().get("backfill") or {}).get("finished"), 120, "the new table's backfill")
        assert app.stats()["backfill"]["rows_done"] == 50
        wait_caught_up(books, SLOT, timeout=120)
        clean = _cli("verify", "--config", str(config))
        assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
        log = app.cli.output()
        assert "added to the config" in log and "created at" not in log and "dropped slot" not in log, log[-3000:]
    finally:
        assert app.cli.stop(signal.SIGTERM) == 0, app.cli.output()[-3000:]
