"""`embedcluster demo`: zero configuration, the README story, loopback only, clean Ctrl-C."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import psycopg
import pytest

from cluster.demo import BATCH_2, insert_sql
from tests.support.harness import CliProcess, RunningApp, free_port, non_loopback_listeners, postmaster_pid, wait_for

pytestmark = pytest.mark.integration


def test_demo_story_on_loopback(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    app = RunningApp(CliProcess(["demo", "--port", str(port), "--state-dir", str(state)], tmp_path / "demo.log"), port)
    pg_data = None
    try:
        app.wait_healthy()
        out = wait_for(lambda: "stop:        Ctrl-C" in (o := app.cli.output()) and o, 30, "the demo banner")
        assert f"search page: http://127.0.0.1:{port}/" in out
        psql = re.search(r"add rows:\s+psql '(postgresql://[^']+)'", out)
        assert psql, out[-2000:]
        dsn = psql.group(1)
        with psycopg.connect(dsn) as conn:
            pg_data = Path(conn.execute("SHOW data_directory").fetchone()[0])
            assert conn.execute("SELECT count(*) FROM books").fetchone()[0] == 8

        top = app.search("battle in space", k=3)["results"][0]
        assert top["payload"]["name"] == "The War of the Worlds"
        assert set(top["payload"]) == {"name", "description", "author", "year"}

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(insert_sql(BATCH_2))
        committed = time.monotonic()
        wait_for(lambda: app.search("battle in space", k=1)["results"][0]["payload"]["name"] == "Old Man's War",
                 10, "Old Man's War to rank first")
        assert time.monotonic() - committed < 3.0

        page = __import__("urllib.request").request.urlopen(app.base + "/", timeout=10).read().decode()
        # the page, with the demo's table and its payload fields for the filters (the browser test
        # drives it: tests/integration/test_search_page.py)
        assert "<form" in page and 'api("search", request())' in page
        assert '{"public.books": ["name", "description", "author", "year"]}' in page

        assert non_loopback_listeners([app.cli.proc.pid, postmaster_pid(pg_data)]) == []
    finally:
        rc = app.cli.stop(signal.SIGINT)
    assert rc == 0, app.cli.output()[-3000:]
    assert pg_data is not None and not (pg_data / "postmaster.pid").exists(), "demo left PostgreSQL running"
