"""Autoscaling seen from outside: ``embedcluster run`` with ``[embedding] min_actors = 1, max_actors = 2``.

Rows with a short text to embed and 4 KB of incompressible padding outside the template (so every
row writes its WAL while the model's work stays small) are inserted faster than one actor embeds
them: the slot's lag grows while the actor is busy, and ``/stats`` shows a second embedding actor.
The inserts stop, the backlog drains, the pool idles and goes back to one actor.  Then ``verify``
finds no difference.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.harness import REPO, free_port, ray_actor_pids, start_run, wait_caught_up, wait_for, write_config

pytestmark = pytest.mark.integration

WORDS = ["harbour", "comet", "orchard", "lantern", "glacier", "violin", "desert", "engine", "meadow", "signal"]


class Inserter(threading.Thread):
    """Inserts ``RATE`` rows a second, in transactions of 50, until stopped."""

    RATE = 700

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.rows = dsn, 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            with psycopg.connect(self.dsn) as conn:
                while not self.stop_event.is_set():
                    with conn.cursor() as cur:
                        cur.executemany(
                            "INSERT INTO notes (body, pad) SELECT %s, string_agg(md5(random()::text), '') "
                            "FROM generate_series(1, 128)",
                            [(" ".join(WORDS[(self.rows + i + j) % len(WORDS)] for j in range(40)),)
                             for i in range(50)])
                    conn.commit()
                    self.rows += 50
                    self.stop_event.wait(max(0.0, started + self.rows / self.RATE - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_the_pool_grows_while_the_lag_grows_and_shrinks_when_idle(dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL, pad text)")
        conn.execute("ALTER TABLE notes ALTER pad SET STORAGE EXTERNAL")  # out of line, uncompressed
    port = free_port()
    tables = [{"name": "public.notes", "text": "{body}", "payload": []}]
    config = write_config(tmp_path / "ec.toml", dsn, port, {"kind": "qdrant", "path": str(tmp_path / "store")},
                          slot="autoscale", tables=tables)
    text = config.read_text().replace(
        "batch_size = 64", "batch_size = 64\nmin_actors = 1\nmax_actors = 2\n"
                           "scale_up_after_s = 4\nscale_down_after_s = 4")
    config.write_text(text)
    app = start_run(config, port, tmp_path / "run.log")
    inserter = Inserter(dsn)
    try:
        assert app.stats()["embedding_actors"] == 1
        inserter.start()
        wait_for(lambda: app.stats()["embedding_actors"] == 2, 120, "a second embedding actor")
        wait_for(lambda: len(ray_actor_pids("EmbeddingActor")) == 2, 60, "the added actor's process")
        inserter.stop_event.set()
        inserter.join(30)
        assert inserter.error is None, inserter.error
        wait_caught_up(dsn, "autoscale", timeout=300)
        wait_for(lambda: app.stats()["embedding_actors"] == 1, 120, "the pool back to one actor once idle")
        # the removed actor's process is gone, not only out of the round robin
        wait_for(lambda: len(ray_actor_pids("EmbeddingActor")) == 1, 60, "the removed actor's process to exit")
        verified = subprocess.run([sys.executable, "-m", "cluster.cli", "verify", "--config", str(config)],
                                  capture_output=True, text=True, cwd=REPO, timeout=300)
        assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]
        log = app.cli.output()
        assert "embedding pool: 1 -> 2 actors (lag grew" in log and "embedding pool: 2 -> 1 actors" in log, log[-3000:]
        rows = app.stats()["rows_applied"]
    finally:
        inserter.stop_event.set()
        rc = app.cli.stop(signal.SIGTERM)
    assert rc == 0, app.cli.output()[-3000:]
    assert rows >= inserter.rows
    print(f"autoscaling: {inserter.rows} rows inserted; the pool went 1 -> 2 -> 1")
