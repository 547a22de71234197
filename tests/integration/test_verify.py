"""``embedcluster verify`` on a real private PostgreSQL, both sinks, against a running pipeline and a stopped one.

One ``embedcluster run`` per sink: verify is clean while it runs, finds each class of difference
introduced on purpose (a point deleted, a payload changed, an orphan inserted: written through
the running pipeline's writer actor on embedded Qdrant, directly on MySQL), repairs them, and
reports no lag as a difference while rows are being written.  Then, with the pipeline stopped, a
difference written straight into the store is found and repaired too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.checks import assert_index_equals_table, table_rows
from tests.integration.test_pipeline import ChurnWriter
from actors.changes import point_id
from tests.support.harness import REPO, free_port, start_run, wait_caught_up, wait_for, write_config

pytestmark = pytest.mark.integration

BOOKS = "public.books"

# Writes differences into the store through verify's own store access (cluster.verify.open_store):
# directly, or through the writer actor of the pipeline that holds the store.
# argv: config, key of a point to delete, key of a point whose payload to change, key of an orphan.
TAMPER = """
import sys

import numpy as np

import cluster  # noqa: F401 - before Ray
from actors.changes import point_id, text_hash
from actors.sinks.base import VectorPoint
from cluster.config import load_config
from cluster.verify import open_store

opened = open_store(load_config(sys.argv[1]))
try:
    store, table = opened.store, "public.books"
    deleted, changed, orphan = (int(k) for k in sys.argv[2:5])
    store.delete([point_id(table, [deleted])])
    point = store.get_points([point_id(table, [changed])])[point_id(table, [changed])]
    vector = np.full(384, 384 ** -0.5, dtype=np.float32)
    store.upsert([
        VectorPoint(point.id, table, point.key, vector, point.text, point.text_hash, {**point.payload, "year": 1}),
        VectorPoint(point_id(table, [orphan]), table, [orphan], vector, "an orphan", text_hash("an orphan"), {}),
    ])
    print(opened.how)
finally:
    opened.close()
"""


def _verify(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", "verify", "--config", str(config), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=240)


def _report(result: subprocess.CompletedProcess[str], code: int) -> dict[str, Any]:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def _tamper(config: Path, deleted: int, changed: int, orphan: int) -> str:
    result = subprocess.run([sys.executable, "-c", TAMPER, str(config), str(deleted), str(changed), str(orphan)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def _assert_found(doc: dict[str, Any], deleted: int, changed: int, orphan: int) -> None:
    assert (doc["clean"], doc["missing"], doc["stale"], doc["orphans"]) == (False, 1, 1, 1), doc
    examples = doc["tables"][BOOKS]["examples"]
    assert [e["key"] for e in examples["missing"]] == [[deleted]]
    assert [(e["key"], e["reason"]) for e in examples["stale"]] == [([changed], "payload")]
    assert [e["key"] for e in examples["orphans"]] == [[orphan]]


def test_verify_finds_and_repairs_differences_and_never_reports_lag(
    books: str, sink_settings: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path / "ec.toml", books, port, sink_settings)
    embedded = sink_settings["kind"] == "qdrant"
    app = start_run(config, port, tmp_path / "run.log")
    try:
        wait_caught_up(books, "embedcluster")
        clean = _verify(config)
        assert clean.returncode == 0, clean.stdout + clean.stderr[-3000:]
        assert clean.stdout.splitlines()[:2] == [
            "table         rows  points  missing  stale  orphans",
            "public.books     8       8        0      0        0",
        ], clean.stdout
        assert "clean: every row has its point" in clean.stdout
        assert "pipeline running: each snapshot compared once slot embedcluster had confirmed it" in clean.stdout
        assert ("through the running pipeline's writer" in clean.stdout) == embedded

        # each class of difference, on purpose; the pipeline keeps running
        how = _tamper(config, deleted=1, changed=2, orphan=999)
        assert how.startswith("through the running pipeline's writer" if embedded else "direct"), how
        found = _report(_verify(config, "--json"), 1)
        _assert_found(found, 1, 2, 999)
        assert found["pipeline_running"] and found["tables"][BOOKS]["rows"] == 8 and found["tables"][BOOKS]["points"] == 8

        repaired = _verify(config, "--repair")
        assert repaired.returncode == 1, repaired.stdout + repaired.stderr[-3000:]
        lines = repaired.stdout.splitlines()
        assert "missing  public.books: [1]" in lines and "stale    public.books: [2] (payload)" in lines
        assert "orphans  public.books: [999]" in lines
        assert "3 differences (1 missing, 1 stale, 1 orphans); repaired: 1 missing and 1 stale points written, " \
               "1 orphans deleted" in lines

        # rows inserted, updated and deleted while verify reads: lag is waited for, never reported
        # (and the repair above left nothing behind)
        churn = ChurnWriter(books, seed=5)
        churn.start()
        try:
            wait_for(lambda: churn.transactions >= 10, 30, "the first churn transactions")
            during = _report(_verify(config, "--json", "--chunk", "40"), 0)
            assert churn.transactions >= 20  # it kept writing while verify ran
        finally:
            churn.finish()
        assert during["pipeline_running"] and during["tables"][BOOKS]["rows"] > 8 and during["waited_s"] > 0
        wait_caught_up(books, "embedcluster")
    finally:
        rc = app.cli.stop(signal.SIGTERM)
    assert rc == 0, app.cli.output()[-3000:]

    # stopped: the store is opened directly; a difference written there is found and repaired
    ids = sorted(table_rows(books))
    first, second = ids[:2]
    assert _tamper(config, deleted=first, changed=second, orphan=ids[-1] + 1000) == "direct"
    repaired = _verify(config, "--repair")
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr[-3000:]
    assert "slot embedcluster is not active (no pipeline running):" in repaired.stdout
    assert f"missing  public.books: [{first}]" in repaired.stdout.splitlines()
    assert "repaired: 1 missing and 1 stale points written, 1 orphans deleted" in repaired.stdout
    after = _report(_verify(config, "--json", "--table", "books"), 0)
    assert not after["pipeline_running"] and isinstance(after["unconfirmed_bytes"], int)
    assert_index_equals_table(books, sink_settings)

    unknown = _verify(config, "--table", "public.nope")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip().splitlines()[-1] == "error: table public.nope is not configured (tables: public.books)"


def test_verify_without_a_slot_composite_keys_and_keys_of_any_shape(dsn: str, tmp_path: Path) -> None:
    """No pipeline ever ran (no slot): the store as written directly is compared as is.  Stored keys
    that cannot be keys of the table (a text in an integer column, another arity) are orphans."""
    import psycopg

    from actors.sinks.base import VectorPoint, open_sink
    from actors.source_schema import inspect_source
    from actors.verify import expected_point
    from cluster.config import load_config

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE shelves (region text, n int, label text, PRIMARY KEY (region, n))")
        conn.execute("INSERT INTO shelves SELECT r, g, r || ' shelf ' || g FROM unnest(ARRAY['eu', 'us']) r, "
                     "generate_series(1, 30) g")
    sink_settings = {"kind": "qdrant", "collection": "shelves", "path": str(tmp_path / "qdrant")}
    config = write_config(tmp_path / "ec.toml", dsn, free_port(), sink_settings, slot="never_created",
                          tables=[{"name": "public.shelves", "text": "{label}", "payload": ["label"]}])
    loaded = load_config(config)
    (spec,) = inspect_source(loaded.source, loaded.tables).values()
    with psycopg.connect(dsn) as conn:
        rows = [spec.row_from_texts(r) for r in conn.execute(f"SELECT {spec.text_select_list()} FROM shelves")]
    vector = [384 ** -0.5] * 384
    points = []
    for row in rows:
        pid, want = expected_point(spec, row)
        if want.key != ["us", 7]:  # one row without its point
            points.append(VectorPoint(pid, spec.name, want.key, vector, want.text, want.text_hash, want.payload))
    for key in (["eu", "not a number"], ["eu", 1, 2], ["zz", 5]):
        points.append(VectorPoint(point_id(spec.name, key), spec.name, key, vector, "x", "x", {}))
    sink = open_sink(loaded.sink)
    try:
        sink.ensure_ready(384)
        sink.upsert(points)
    finally:
        sink.close()

    doc = _report(_verify(config, "--json", "--chunk", "7"), 1)
    assert (doc["missing"], doc["stale"], doc["orphans"]) == (1, 0, 3), doc
    table = doc["tables"]["public.shelves"]
    assert (table["rows"], table["points"]) == (60, 62)
    assert [e["key"] for e in table["examples"]["missing"]] == [["us", 7]]
    assert sorted(map(json.dumps, (e["key"] for e in table["examples"]["orphans"]))) == sorted(
        map(json.dumps, [["eu", "not a number"], ["eu", 1, 2], ["zz", 5]]))
    assert (doc["slot_exists"], doc["pipeline_running"]) == (False, False)
    text = _verify(config)
    assert text.returncode == 1 and "slot never_created does not exist: no pipeline streams into this store" in text.stdout
