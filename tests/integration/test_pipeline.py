"""The whole pipeline on real components: PostgreSQL CDC -> Ray actors -> sink -> Serve over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cluster.demo import BATCH_2, insert_sql
from tests.integration.checks import assert_index_equals_table
from tests.support.churn import ChurnWriter
from tests.support.harness import (
    REPO,
    free_port,
    http_get,
    non_loopback_listeners,
    postmaster_pid,
    start_run,
    wait_caught_up,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


def _top_name(app, q: str) -> str:  # noqa: ANN001
    results = app.search(q, k=3)["results"]
    return results[0]["payload"]["name"] if results else ""


def _metrics(app) -> dict[tuple[str, tuple], float]:  # noqa: ANN001
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(app.base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def _search_options_run_in_the_store(app, books: str, kind: str) -> None:  # noqa: ANN001
    """POST /search's table, filter, score_threshold and mode over HTTP, against what PostgreSQL holds."""
    with psycopg.connect(books) as conn:
        before_1900 = {r[0] for r in conn.execute("SELECT id FROM books WHERE year < 1900")}
        wells = {r[0] for r in conn.execute("SELECT id FROM books WHERE author = 'H.G. Wells'")}
    assert 1 <= len(before_1900) < 8 and wells
    # every match of the filter comes back (k above the count), nothing else
    status, body = app.post_search({"q": "battle in space", "k": 10, "filter": {"year": {"lt": 1900}}})
    assert status == 200 and {r["id"] for r in body["results"]} == before_1900, body
    status, body = app.post_search({"q": "battle in space", "k": 10, "table": "public.books",
                                    "filter": {"author": {"in": ["H.G. Wells", "nobody"]}, "year": {"gte": 1000}}})
    assert status == 200 and {r["id"] for r in body["results"]} == wells, body
    # GET takes the same filter as JSON
    got = app.search_with({"q": "battle in space", "k": 10, "filter": '{"year": {"lt": 1900}}'})
    assert {r["id"] for r in got["results"]} == before_1900
    # a threshold above every score leaves nothing; one below the last keeps all
    status, body = app.post_search({"q": "battle in space", "k": 3, "score_threshold": 0.99})
    assert status == 200 and body["results"] == []
    # errors name the field, the table, the mode
    status, body = app.post_search({"q": "x", "filter": {"isbn": "123"}})
    assert status == 400 and "'isbn' is not in the payload" in body["error"], body
    status, body = app.post_search({"q": "x", "table": "public.films"})
    assert status == 400 and "'public.films' is not indexed" in body["error"], body
    status, body = app.post_search({"q": "Martian invasion", "k": 3, "mode": "keyword"})
    if kind == "mysql":
        assert status == 400 and "mode 'keyword'" in body["error"] and "\n" not in body["error"], body
    else:
        assert status == 200 and body["results"][0]["payload"]["name"] == "The War of the Worlds", body


def test_backfill_story_updates_deletes_status_and_drop(books: str, sink_settings: dict[str, Any], pg, tmp_path: Path) -> None:  # noqa: ANN001
    port = free_port()
    light = wait_for(lambda: (p := free_port()) != port and p, 5, "a second free port")
    config = write_config(tmp_path / "ec.toml", books, port, sink_settings, extra=f"metrics_port = {light}")
    app = start_run(config, port, tmp_path / "run.log")
    try:
        # backfill: the eight pre-existing books are searchable; its progress says all 8 of 8 are written
        assert app.stats()["rows_applied"] >= 8
        backfill = app.stats()["backfill"]
        assert (backfill["rows_done"], backfill["rows_total"], backfill["finished"], backfill["percent"]) == (
            8, 8, True, 100.0), backfill
        assert backfill["total_is_estimate"] is False and backfill["eta_seconds"] == 0
        first = app.search("battle in space", k=5)
        assert first["query"] == "battle in space" and first["k"] == 5
        assert first["results"][0]["payload"]["name"] == "The War of the Worlds"
        assert first["results"][0]["table"] == "public.books" and first["results"][0]["id"] == 7
        scores = [r["score"] for r in first["results"]]
        assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1
        assert isinstance(first["took_ms"], float)
        _search_options_run_in_the_store(app, books, sink_settings["kind"])
        shown = _cli("search", "battle in space", "-k", "3", "--filter", "year<1900", "--url", app.base)
        assert shown.returncode == 0 and "hit(s) for 'battle in space'" in shown.stdout and "1898" in shown.stdout, shown
        answer = json.loads(_cli("search", "battle in space", "-k", "3", "--filter", "year<1900", "--url", app.base,
                                 "--json").stdout)
        assert answer["results"][0]["payload"]["name"] == "The War of the Worlds"
        assert all(r["payload"]["year"] < 1900 for r in answer["results"])
        refused = _cli("search", "x", "--filter", "isbn=1", "--config", str(config))
        assert refused.returncode == 2 and "'isbn' is not in the payload" in refused.stderr, refused

        # the story: a second batch of alien-invasion books, Old Man's War first within seconds
        with psycopg.connect(books, autocommit=True) as conn:
            conn.execute(insert_sql(BATCH_2))
            committed = time.monotonic()
        wait_for(lambda: _top_name(app, "battle in space") == "Old Man's War", 10, "Old Man's War to rank first")
        visible_after = time.monotonic() - committed
        assert visible_after < 3.0, f"new rows took {visible_after:.2f}s to become searchable"
        # /metrics: that commit's freshness (commit -> written), and the search latency of this replica
        metrics = _metrics(app)
        assert metrics[("embedcluster_freshness_seconds_count", ())] >= 1
        assert metrics[("embedcluster_freshness_seconds_bucket", (("le", "5.0"),))] >= 1
        assert metrics[("embedcluster_search_seconds_count", (("mode", "dense"),))] >= 1

        # update: new text -> new vector and payload
        with psycopg.connect(books, autocommit=True) as conn:
            conn.execute("UPDATE books SET description = %s, year = 1966 WHERE name = 'Dune'",
                         ("A baker opens a shop that sells croissants and sourdough bread.",))
        hit = wait_for(
            lambda: next((r for r in app.search("bakery selling bread", k=1)["results"] if r["id"] == 4), None),
            10, "the updated Dune row to match its new text",
        )
        assert hit["payload"]["year"] == 1966 and "sourdough" in hit["payload"]["description"]

        # delete: the row leaves the index
        with psycopg.connect(books, autocommit=True) as conn:
            conn.execute("DELETE FROM books WHERE name = 'Snow Crash'")
        wait_for(
            lambda: all(r["id"] != 6 for r in app.search("virtual reality metaverse", k=20)["results"]),
            10, "the deleted Snow Crash row to leave the index",
        )

        # payload-only update: same text, so the model does not run again
        embedded_before = app.stats()["embedding"]["texts"]
        with psycopg.connect(books, autocommit=True) as conn:
            conn.execute("UPDATE books SET year = 1896 WHERE name = 'The Time Machine'")
        wait_for(
            lambda: any(r["id"] == 1 and r["payload"]["year"] == 1896
                        for r in app.search("travels through time", k=3)["results"]),
            10, "the payload-only update to show",
        )
        assert app.stats()["embedding"]["texts"] == embedded_before

        # a text over the model's token limit is embedded truncated, and /stats counts it
        truncated_before = app.stats()["truncated_texts"]
        with psycopg.connect(books, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO books (name, description, author, year) VALUES (%s, %s, %s, %s)",
                ("A Very Long Book", " ".join(f"chapter{i % 90} of the saga" for i in range(300)), "Anon", 2001),
            )
        wait_for(lambda: app.stats()["truncated_texts"] == truncated_before + 1, 15, "/stats to count the truncated text")
        assert app.stats()["embedding"]["truncated"] == truncated_before + 1

        # nothing listens beyond loopback: Ray, Serve, workers, and PostgreSQL
        assert non_loopback_listeners([app.cli.proc.pid, postmaster_pid(pg.data_dir)]) == []

        wait_caught_up(books, "embedcluster")
        # idle: the slot follows the server's position, lag drains to zero
        stats = wait_for(lambda: (s := app.stats())["lag_bytes"] == 0 and s, 15, "/stats to report zero lag")
        assert stats["state"] == "streaming" and stats["confirmed_lsn"] not in (None, "-")
        # [serve] metrics_port: the same figures for frequent scraping, from the coordinator itself
        status, direct = http_get(f"http://127.0.0.1:{light}/stats")
        assert status == 200 and direct["rows_applied"] == stats["rows_applied"] and direct["state"] == "streaming"
        with urllib.request.urlopen(f"http://127.0.0.1:{light}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        assert f"embedcluster_rows_applied {float(stats['rows_applied'])}" in text, text[:2000]
        # background WAL (e.g. running-xacts records) can put the server a few
        # bytes ahead for a moment; the slot follows it within a keepalive
        status = wait_for(
            lambda: (r := _cli("status", "--config", str(config))).returncode == 0
            and "lag bytes:     0" in r.stdout and r,
            30, "embedcluster status to report zero lag",
        )
        assert "slot:          embedcluster" in status.stdout and "active:        yes" in status.stdout
        assert "pipeline:      streaming" in status.stdout and "rows applied:  " in status.stdout
        assert "backfill:      done: 8 rows at " in status.stdout, status.stdout
        as_json = json.loads(_cli("status", "--config", str(config), "--json").stdout)
        assert as_json["pipeline"] == "streaming" and as_json["lag_bytes"] is not None and as_json["rows_applied"] >= 8
        busy = _cli("drop", "--config", str(config), "--yes")  # the running pipeline holds the slot
        assert busy.returncode == 2 and "in use by process" in busy.stderr, busy.stderr
    finally:
        rc = app.cli.stop(signal.SIGTERM)
    assert rc == 0, app.cli.output()[-3000:]
    assert "stopped: slot embedcluster confirmed" in app.cli.output()
    assert "backfill done: 8 rows at " in app.cli.output()  # the terminal's last progress line
    assert_index_equals_table(books, sink_settings)

    refused = _cli("drop", "--config", str(config))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    dropped = _cli("drop", "--config", str(config), "--yes")
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped slot embedcluster" in dropped.stdout and "dropped publication embedcluster" in dropped.stdout
    with psycopg.connect(books) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'embedcluster'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_publication WHERE pubname = 'embedcluster'").fetchone()[0] == 0


@pytest.mark.parametrize("how", ["sigterm"])  # "crash": the SIGKILL of run in test_fault_suite.py
def test_restart_mid_stream_loses_and_duplicates_nothing(how: str, books: str, sink_settings: dict[str, Any], tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path / "ec.toml", books, port, sink_settings, model="null")
    churn = ChurnWriter(books, seed=7 if how == "sigterm" else 11)
    app = start_run(config, port, tmp_path / "run1.log")
    churn.start()
    try:
        # stop while changes are streaming in and batches are in flight
        wait_for(lambda: app.stats()["rows_applied"] >= 60, 60, "the first streamed changes to be applied")
    finally:
        if how == "sigterm":
            rc = app.cli.stop(signal.SIGTERM)
            assert rc == 0, app.cli.output()[-3000:]
        else:
            app.cli.kill_group()
    before_restart = churn.transactions
    wait_for(lambda: churn.transactions >= before_restart + 20, 30, "more changes while the pipeline is down")

    app = start_run(config, port, tmp_path / "run2.log")
    try:
        wait_for(lambda: churn.transactions >= before_restart + 60, 60, "changes while the pipeline runs again")
        churn.finish()
        wait_caught_up(books, "embedcluster", timeout=120)
    finally:
        churn.stop_event.set()
        rc = app.cli.stop(signal.SIGTERM)
    assert rc == 0, app.cli.output()[-3000:]
    if how == "sigterm":
        # a clean stop resumes from the slot: no second snapshot
        assert "resuming stream" in app.cli.output()
    assert_index_equals_table(books, sink_settings)


# Crashes of each actor and of the whole run (SIGKILL) under a heavier workload, on both sinks:
# tests/integration/test_fault_suite.py.
