"""The fault suite (issue 11): a mixed workload while every part of the pipeline is killed.

At least 20,000 operations (inserts, updates of the text and of a payload column only,
deletes, primary-key changes, one TRUNCATE) are committed while the CDC reader, an embedding
actor and the writer are each SIGKILLed several times, and the ``embedcluster run`` process
group once gets SIGKILL and is started again.  After catch-up ``embedcluster verify`` reports
zero differences and the store holds exactly the table.  On embedded Qdrant and on MySQL; on
MySQL with two partitioned writers (``[sink] writers = 2``), both killed at each writer kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cluster.config import load_config
from tests.integration.checks import assert_index_matches_source
from tests.support.harness import REPO, free_port, ray_actor_pids, start_run, wait_caught_up, wait_for, write_config

pytestmark = pytest.mark.integration

OPERATIONS = 20_000
PER_TRANSACTION = 50
WORDS = ["harbour", "comet", "orchard", "lantern", "glacier", "violin", "desert", "engine", "meadow", "signal"]


class Workload(threading.Thread):
    """``OPERATIONS`` operations in transactions of ``PER_TRANSACTION``, spread over about a minute."""

    def __init__(self, dsn: str, seed: int, pause_s: float = 0.12) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rng, self.pause_s = dsn, random.Random(seed), pause_s
        self.done_ops = 0
        self.counts = {"insert": 0, "text": 0, "payload": 0, "delete": 0, "key": 0, "truncate": 0}
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _run(self) -> None:
        rng, live, next_id = self.rng, [], 1
        truncate_at = OPERATIONS // 2
        with psycopg.connect(self.dsn) as conn:
            while self.done_ops < OPERATIONS and not self.stop_event.is_set():
                with conn.transaction():
                    for _ in range(PER_TRANSACTION):
                        roll = rng.random()
                        if roll < 0.4 or len(live) < 20:
                            conn.execute("INSERT INTO items VALUES (%s, %s, 0)",
                                         (next_id, f"item {next_id} about a {rng.choice(WORDS)}"))
                            live.append(next_id)
                            next_id += 1
                            op = "insert"
                        elif roll < 0.6:
                            conn.execute("UPDATE items SET body = body || ' and a ' || %s WHERE id = %s",
                                         (rng.choice(WORDS), rng.choice(live)))
                            op = "text"
                        elif roll < 0.8:
                            conn.execute("UPDATE items SET n = n + 1 WHERE id = %s", (rng.choice(live),))
                            op = "payload"
                        elif roll < 0.92:
                            conn.execute("DELETE FROM items WHERE id = %s", (live.pop(rng.randrange(len(live))),))
                            op = "delete"
                        else:
                            i = rng.randrange(len(live))
                            conn.execute("UPDATE items SET id = %s WHERE id = %s", (next_id, live[i]))
                            live[i] = next_id
                            next_id += 1
                            op = "key"
                        self.counts[op] += 1
                        self.done_ops += 1
                    if self.done_ops >= truncate_at and not self.counts["truncate"]:
                        conn.execute("TRUNCATE items")
                        live.clear()
                        self.counts["truncate"] = 1
                        self.done_ops += 1
                self.stop_event.wait(self.pause_s)


def _kill_actor(name: str, timeout: float = 60.0) -> None:
    """SIGKILL the (restarted) process of actor class ``name`` once it runs."""
    for pid in wait_for(lambda: ray_actor_pids(name), timeout, f"a running {name}", interval=0.2):
        os.kill(pid, signal.SIGKILL)


def test_mixed_workload_while_every_part_is_killed(dsn: str, sink_settings: dict[str, Any], tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, body text NOT NULL, n int NOT NULL)")
    tables = [{"name": "public.items", "text": "{body}", "payload": ["n"]}]
    port = free_port()
    # the embedded store has one owner process; MySQL takes partitioned writers (keys shared by id hash)
    writers = 2 if sink_settings["kind"] == "mysql" else 1
    sink_settings = {**sink_settings, "writers": writers}
    config = write_config(tmp_path / "ec.toml", dsn, port, sink_settings, slot="faults", tables=tables)
    app = start_run(config, port, tmp_path / "run1.log")
    wait_for(lambda: len(ray_actor_pids("WriterActor")) == writers, 60, f"{writers} writer processes")
    assert app.stats()["writers"] == writers  # /stats says how many write
    workload = Workload(dsn, seed=2024)
    workload.start()
    kills: list[str] = []
    try:
        for round_ in range(2):
            for name in ("CdcReaderActor", "EmbeddingActor", "WriterActor"):
                wait_for(lambda: app.stats()["state"] == "streaming", 120, f"streaming before killing {name}")
                time.sleep(1.0)  # let it make some progress between kills
                _kill_actor(name)
                kills.append(name)
        # the whole run, once: SIGKILL to its process group, then started again
        wait_for(lambda: app.stats()["state"] == "streaming", 120, "streaming before the SIGKILL of run")
        replays = app.cli.output().count("replaying from confirmed LSN")
        app.cli.kill_group()
        kills.append("run")
        app = start_run(config, port, tmp_path / "run2.log")
        workload.join(600)
        assert not workload.is_alive() and workload.error is None, workload.error
        wait_caught_up(dsn, "faults", timeout=400)
        verified = subprocess.run([sys.executable, "-m", "cluster.cli", "verify", "--config", str(config)],
                                  capture_output=True, text=True, cwd=REPO, timeout=300)
        assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]
        stats = app.stats()
    finally:
        workload.stop_event.set()
        rc = app.cli.stop(signal.SIGTERM)
    assert rc == 0, app.cli.output()[-3000:]
    assert workload.done_ops >= OPERATIONS and all(workload.counts.values()), workload.counts
    assert kills.count("CdcReaderActor") == kills.count("EmbeddingActor") == kills.count("WriterActor") == 2
    assert replays >= 3, f"only {replays} recoveries after six kills"  # the kills did hit work in flight
    assert stats["dead_letters"] == 0
    print(f"fault suite on {sink_settings['kind']}: {workload.done_ops} operations {workload.counts}, kills {kills}, {replays} recoveries before the SIGKILL of run")
    assert_index_matches_source(load_config(config))
