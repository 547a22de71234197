"""Production schemas on a real private PostgreSQL (issue 10), every case in one module.

1. ``embedcluster verify``: clean while the pipeline runs and when it is stopped, finds each class
   of difference written on purpose (a point deleted, a payload changed, an orphan), repairs it, never
   reports lag; on both sinks.
2. Partitioned tables (LIST and RANGE, composite keys, partition-key updates, a partition attached
   while streaming), published via the partition root.
3. Replica identity and stored generated columns, checked before the publication is touched.
4. Schema changes while streaming: a new column is followed; a column, key or table the config uses
   that changes stops the pipeline on purpose, after writing what came before.
5. Exact values: every type identical from backfill and stream, PostgreSQL's text forms in the text.
6. TOAST: unchanged values cost one query per batch and table (or none), nothing is re-embedded.
7. Identifiers with spaces, quotes, upper case and non-ASCII letters; a store that missed changes
   (restored from a backup) is indexed again, not resumed; on both sinks.

Reader-level cases drive ``PgChangeSource`` on a real slot without Ray (fast, precise about what the
reader hands out).  ``test_every_case_end_to_end`` runs the cases that reach the store through the
real pipeline on both sinks (embedded Qdrant and MySQL on MariaDB), with ``embedcluster verify``
reporting zero differences after each step; the verify and resume tests run on both sinks too.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

from actors.cdc_reader import PgChangeSource
from actors.changes import Change, point_id
from actors.pgoutput import UNCHANGED_TOAST, Column, Relation, RowChange
from actors.pgvalues import convert_text_value, float_text, render_value, renderer_for
from actors.schema_watch import SchemaChanged
from actors.source_schema import SourceError, connect, inspect_source
from cluster.config import Config, config_from_dict, load_config
from tests.integration.checks import assert_index_equals_table, assert_index_matches_source, table_rows
from tests.support.churn import ChurnWriter
from tests.support.harness import (
    REPO,
    confirmed_lsn,
    current_lsn,
    free_port,
    http_get,
    start_run,
    wait_caught_up,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


def _config(dsn: str, tables: list[dict[str, Any]], slot: str = "schemas") -> Config:
    return config_from_dict({"source": {"dsn": dsn, "slot": slot, "publication": slot}, "tables": tables},
                            origin="test", environ={})


def _inspect_error(dsn: str, tables: list[dict[str, Any]]) -> str:
    config = _config(dsn, tables)
    with pytest.raises(SourceError) as info:
        inspect_source(config.source, config.tables)
    message = str(info.value)
    assert "\n" not in message
    return message


def _execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


class Stream:
    """A started PgChangeSource past its backfill; collects changes until a condition holds."""

    def __init__(self, dsn: str, tables: list[dict[str, Any]]) -> None:
        config = _config(dsn, tables)
        self.source = PgChangeSource(config.source, inspect_source(config.source, config.tables))
        self.source.start(backfill=True)
        self.backfill: list[Change] = []
        while True:
            batch = self.source.read_batch(1000, 0.5)
            self.backfill += batch.changes
            if batch.snapshot_complete:
                break

    def read(self, count: int, timeout: float = 30.0) -> list[Change]:
        changes: list[Change] = []
        deadline = time.monotonic() + timeout
        while len(changes) < count:
            assert time.monotonic() < deadline, f"only {len(changes)} of {count} changes arrived: {changes}"
            changes += self.source.read_batch(1000, 0.3).changes
        return changes

    def close(self) -> None:
        self.source.close()

# -- 1. embedcluster verify: each class of difference found and repaired, lag never reported -------


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
    config = write_config(tmp_path / "ec.toml", books, port, sink_settings, model="null")
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

# -- 3. replica identity, checked before the publication exists -----------------------------


def test_replica_identity_nothing_is_refused_before_the_publication_is_touched(dsn: str) -> None:
    _execute(dsn, "CREATE TABLE docs (id int PRIMARY KEY, body text)", "ALTER TABLE docs REPLICA IDENTITY NOTHING")
    message = _inspect_error(dsn, [{"name": "docs", "text": "{body}"}])
    assert "REPLICA IDENTITY NOTHING" in message and "ALTER TABLE docs REPLICA IDENTITY DEFAULT" in message
    assert "tables[0].name" in message
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone()[0] == 0
        # the application's own writes still work: nothing was published
        conn.execute("INSERT INTO docs VALUES (1, 'a')")
        conn.execute("UPDATE docs SET body = 'b' WHERE id = 1")
        conn.execute("DELETE FROM docs WHERE id = 1")


def test_replica_identity_full_and_index_on_the_key_are_accepted(dsn: str) -> None:
    _execute(
        dsn,
        "CREATE TABLE full_t (id int PRIMARY KEY, body text)",
        "ALTER TABLE full_t REPLICA IDENTITY FULL",
        "CREATE TABLE idx_t (id int PRIMARY KEY, body text)",
        "ALTER TABLE idx_t REPLICA IDENTITY USING INDEX idx_t_pkey",
    )
    config = _config(dsn, [{"name": "full_t", "text": "{body}"}, {"name": "idx_t", "text": "{body}"}])
    specs = inspect_source(config.source, config.tables)
    assert specs["public.full_t"].key_columns == ["id"] and specs["public.idx_t"].key_columns == ["id"]


def test_replica_identity_using_another_index_is_refused(dsn: str) -> None:
    _execute(
        dsn,
        "CREATE TABLE docs (id int PRIMARY KEY, code text NOT NULL, body text)",
        "CREATE UNIQUE INDEX docs_code ON docs (code)",
        "ALTER TABLE docs REPLICA IDENTITY USING INDEX docs_code",
    )
    message = _inspect_error(dsn, [{"name": "docs", "text": "{body}"}])
    assert "USING INDEX on (code)" in message and "primary key (id)" in message and "REPLICA IDENTITY DEFAULT" in message


def test_a_partition_with_replica_identity_nothing_is_refused(dsn: str) -> None:
    _execute(
        dsn,
        "CREATE TABLE events (region text, id int, body text, PRIMARY KEY (region, id)) PARTITION BY LIST (region)",
        "CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu')",
        "CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us')",
        "ALTER TABLE events_us REPLICA IDENTITY NOTHING",
    )
    message = _inspect_error(dsn, [{"name": "events", "text": "{body}"}])
    assert "partition events_us of public.events" in message and "ALTER TABLE events_us REPLICA IDENTITY DEFAULT" in message


def test_stored_generated_columns_are_refused(dsn: str) -> None:
    _execute(dsn, "CREATE TABLE docs (id int PRIMARY KEY, body text, shout text GENERATED ALWAYS AS (upper(body)) STORED)")
    message = _inspect_error(dsn, [{"name": "docs", "text": "{shout}"}])
    assert "'shout'" in message and "generated" in message and "tables[0]" in message
    message = _inspect_error(dsn, [{"name": "docs", "text": "{body}", "payload": ["shout"]}])
    assert "'shout'" in message
    config = _config(dsn, [{"name": "docs", "text": "{body}"}])  # not used: fine
    assert inspect_source(config.source, config.tables)["public.docs"].key_columns == ["id"]


def test_a_partition_and_its_partitioned_table_cannot_both_be_configured(dsn: str) -> None:
    _execute(
        dsn,
        "CREATE TABLE events (region text, id int, body text, PRIMARY KEY (region, id)) PARTITION BY LIST (region)",
        "CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu')",
    )
    message = _inspect_error(dsn, [{"name": "events", "text": "{body}"}, {"name": "events_eu", "text": "{body}"}])
    assert "tables[1].name public.events_eu is a partition of public.events (tables[0].name)" in message


# -- 2. partitioned tables ----------------------------------------------------------------------


PARTITIONED = [
    # LIST partitioning, composite key
    "CREATE TABLE events (region text, id int, body text, PRIMARY KEY (region, id)) PARTITION BY LIST (region)",
    "CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu')",
    "CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us')",
    # RANGE partitioning
    "CREATE TABLE readings (id int, taken date, note text, PRIMARY KEY (id, taken)) PARTITION BY RANGE (taken)",
    "CREATE TABLE readings_2024 PARTITION OF readings FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE TABLE readings_2025 PARTITION OF readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
    "INSERT INTO events VALUES ('eu', 1, 'first eu'), ('us', 1, 'first us')",
    "INSERT INTO readings VALUES (1, '2024-06-01', 'summer'), (2, '2025-02-01', 'winter')",
]
PARTITIONED_TABLES = [{"name": "events", "text": "{body}", "payload": ["region"]},
                      {"name": "readings", "text": "{note}", "payload": ["taken"]}]

# a schema and a table whose names have spaces, quotes and non-ASCII letters, and columns likewise
ODD_DDL = [
    'CREATE SCHEMA "Sales Dept"',
    'CREATE TABLE "Sales Dept"."Café ""Orders""" ("Order Id" int, "Région" text, "Note ""quoted""" text, '
    'PRIMARY KEY ("Order Id", "Région"))',
    'INSERT INTO "Sales Dept"."Café ""Orders""" VALUES (1, \'Île\', \'first\'), (2, \'Nord\', \'second\')',
]
ODD_TABLE = {"name": '"Sales Dept"."Café ""Orders"""', "text": '{Note "quoted"}', "payload": ["Région"]}


def _ops(changes: list[Change]) -> list[tuple[str, str, tuple[Any, ...]]]:
    return [(c.op, c.table, c.key) for c in changes]


def test_partitioned_tables_stream_under_their_own_name(dsn: str) -> None:
    _execute(dsn, *PARTITIONED)
    stream = Stream(dsn, PARTITIONED_TABLES)
    try:
        assert sorted(_ops(stream.backfill)) == [
            ("upsert", "public.events", ("eu", 1)), ("upsert", "public.events", ("us", 1)),
            ("upsert", "public.readings", (1, "2024-06-01")), ("upsert", "public.readings", (2, "2025-02-01")),
        ]
        _execute(dsn, "INSERT INTO events VALUES ('us', 2, 'second us')",
                 "UPDATE readings SET note = 'hot summer' WHERE id = 1")
        changes = stream.read(2)
        assert _ops(changes) == [("upsert", "public.events", ("us", 2)), ("upsert", "public.readings", (1, "2024-06-01"))]
        assert changes[1].text == "hot summer"
        # the partition key changes: the row moves to another partition, and its key changes
        _execute(dsn, "UPDATE events SET region = 'eu' WHERE region = 'us' AND id = 2")
        moved = stream.read(2)
        assert _ops(moved) == [("delete", "public.events", ("us", 2)), ("upsert", "public.events", ("eu", 2))]
        assert moved[1].payload == {"region": "eu"} and moved[1].text == "second us"
        _execute(dsn, "UPDATE readings SET taken = '2025-06-01' WHERE id = 1")
        assert _ops(stream.read(2)) == [("delete", "public.readings", (1, "2024-06-01")),
                                        ("upsert", "public.readings", (1, "2025-06-01"))]
        # a partition attached while streaming is covered without a restart
        _execute(
            dsn,
            "CREATE TABLE events_ap (region text NOT NULL, id int NOT NULL, body text)",
            "ALTER TABLE events ATTACH PARTITION events_ap FOR VALUES IN ('ap')",
            "INSERT INTO events VALUES ('ap', 7, 'new region')",
            "DELETE FROM events WHERE region = 'eu' AND id = 1",
        )
        late = stream.read(2)
        assert _ops(late) == [("upsert", "public.events", ("ap", 7)), ("delete", "public.events", ("eu", 1))]
        assert late[0].text == "new region"
    finally:
        stream.close()


def test_an_existing_publication_is_switched_to_publish_via_the_root(dsn: str) -> None:
    _execute(dsn, *PARTITIONED[:3], "CREATE PUBLICATION schemas FOR TABLE events")
    stream = Stream(dsn, PARTITIONED_TABLES[:1])
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = 'schemas'").fetchone()[0]
        _execute(dsn, "INSERT INTO events VALUES ('eu', 5, 'x')")
        assert _ops(stream.read(1)) == [("upsert", "public.events", ("eu", 5))]
    finally:
        stream.close()


# -- 4. schema changes while streaming ------------------------------------------------------------


def _docs_stream(dsn: str) -> Stream:
    _execute(dsn, "CREATE TABLE docs (id int PRIMARY KEY, title text, body text, n int)",
             "INSERT INTO docs VALUES (1, 'one', 'first', 1)")
    return Stream(dsn, [{"name": "docs", "text": "{title}: {body}", "payload": ["n"]}])


def _stopped(stream: Stream, timeout: float = 30.0) -> str:
    """Read until the reader stops on a schema change; returns its one-line message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stream.source.read_batch(1000, 0.3)
        except SchemaChanged as exc:
            message = str(exc)
            assert "\n" not in message
            # it stays stopped: no change of the table after it is handed out
            with pytest.raises(SchemaChanged):
                stream.source.read_batch(1000, 0.3)
            return message
    raise AssertionError("the reader did not stop on the schema change")


def test_a_new_column_is_followed(dsn: str) -> None:
    stream = _docs_stream(dsn)
    try:
        _execute(dsn, "ALTER TABLE docs ADD COLUMN extra text", "INSERT INTO docs VALUES (2, 'two', 'second', 2, 'x')")
        (change,) = stream.read(1)
        assert change.key == (2,) and change.text == "two: second" and change.payload == {"n": 2}
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        ("ALTER TABLE docs RENAME COLUMN body TO content", "column 'body' of public.docs (used by tables[0].text) was renamed to 'content'"),
        ("ALTER TABLE docs DROP COLUMN body", "column 'body' of public.docs (used by tables[0].text) was dropped"),
        ("ALTER TABLE docs ALTER COLUMN n TYPE bigint", "column 'n' of public.docs (listed in tables[0].payload) changed type from integer to bigint"),
    ],
    ids=["rename-column", "drop-column", "change-type"],
)
def test_a_column_the_config_uses_stops_the_reader_after_what_came_before(dsn: str, ddl: str, expected: str) -> None:
    stream = _docs_stream(dsn)
    try:
        _execute(dsn, "INSERT INTO docs VALUES (2, 'two', 'before the change', 2)")
        (before,) = stream.read(1)
        assert before.key == (2,)
        _execute(dsn, "INSERT INTO docs VALUES (3, 'three', 'also before', 3)", ddl)
        _execute(dsn, "INSERT INTO docs (id, title, n) VALUES (4, 'four', 4)")
        # the insert before the DDL is still handed out; nothing after it
        (also_before,) = stream.read(1)
        assert also_before.key == (3,)
        message = _stopped(stream)
        assert expected in message and "update tables[0]" in message and "restart" in message
    finally:
        stream.close()


def test_a_changed_primary_key_stops_the_reader(dsn: str) -> None:
    stream = _docs_stream(dsn)
    try:
        _execute(dsn, "ALTER TABLE docs DROP CONSTRAINT docs_pkey", "ALTER TABLE docs ADD PRIMARY KEY (id, n)",
                 "INSERT INTO docs VALUES (5, 'five', 'x', 5)")
        message = _stopped(stream)
        assert "primary key of public.docs changed from (id) to (id, n)" in message
    finally:
        stream.close()


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        ("ALTER TABLE docs RENAME TO papers", 'was renamed to public.papers; set tables[0].name = "public.papers"'),
        ("DROP TABLE docs", "table public.docs (tables[0].name) was dropped; its points stay in the store"),
    ],
    ids=["rename-table", "drop-table"],
)
def test_a_renamed_or_dropped_table_stops_the_reader(dsn: str, ddl: str, expected: str) -> None:
    stream = _docs_stream(dsn)
    try:
        _execute(dsn, ddl)  # no row change follows: found from the catalog
        assert expected in _stopped(stream)
    finally:
        stream.close()

# -- 5, 6. reader-level helpers ------------------------------------------------------------------------------------


def _source(dsn: str, tables: list[dict[str, Any]], slot: str = "exact") -> PgChangeSource:
    config = config_from_dict(
        {"source": {"dsn": dsn, "slot": slot, "publication": slot}, "tables": tables}, origin="test", environ={}
    )
    return PgChangeSource(config.source, inspect_source(config.source, config.tables))


def _backfill(source: PgChangeSource) -> list[Change]:
    source.start(backfill=True)
    out: list[Change] = []
    while True:
        batch = source.read_batch(1000, 0.5)
        out += batch.changes
        if batch.snapshot_complete:
            return out


def _read_until(source: PgChangeSource, done: Any, timeout: float = 30) -> list[list[Change]]:
    """Batches (non-empty) until ``done(all changes so far)`` is true."""
    batches: list[list[Change]] = []
    deadline = time.monotonic() + timeout
    while not done([c for b in batches for c in b]):
        assert time.monotonic() < deadline, f"gave up after {[c for b in batches for c in b]}"
        batch = source.read_batch(5000, 0.5)
        if batch.changes:
            batches.append(batch.changes)
    return batches


def _until_key(key: tuple[Any, ...]) -> Any:
    return lambda changes: any(c.key == key for c in changes)


class _CountingConn:
    """The reader's side connection, counting the SELECTs that read ``table``'s rows."""

    def __init__(self, conn: psycopg.Connection, table: str) -> None:
        self._conn, self._table, self.selects = conn, f'"{table}"', 0

    def execute(self, sql: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(sql, str) and sql.startswith("SELECT") and self._table in sql:
            self.selects += 1
        return self._conn.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _count_fetches(source: PgChangeSource, table: str) -> _CountingConn:
    assert source._side is not None
    counting = _CountingConn(source._side, table)
    source._side = counting  # type: ignore[assignment]
    return counting

# -- every type, backfilled and streamed ---------------------------------------------------------------

# column -> (SQL type, SQL literal, expected key/payload value)
COLUMNS: dict[str, tuple[str, str, Any]] = {
    "b": ("bool", "true", True),
    "bf": ("bool", "false", False),
    "n": ("numeric", "12345678901234567890.1234567891", "12345678901234567890.1234567891"),
    "ni": ("numeric", "12345678901234567890", 12345678901234567890),
    "nscale": ("numeric(10,2)", "7", "7.00"),
    "nnan": ("numeric", "'NaN'", "NaN"),
    "j": ("jsonb", """'{"b": [1, 2.5, null, true], "a": "ü"}'""", {"a": "ü", "b": [1, 2.5, None, True]}),
    "js": ("json", """'{"z":1,"a":2}'""", {"z": 1, "a": 2}),
    "ia": ("int[]", "'{1,NULL,3}'", [1, None, 3]),
    "ba": ("bool[]", "'{t,f,NULL}'", [True, False, None]),
    "na": ("numeric[]", "'{1,2.50,12345678901234567890.1234567891}'", [1, "2.50", "12345678901234567890.1234567891"]),
    "ta": ("text[]", """ARRAY['a,b', 'c "d"', 'e\\f', '', 'NULL', NULL, '{x}']""", ["a,b", 'c "d"', "e\\f", "", "NULL", None, "{x}"]),
    "ja": ("jsonb[]", """ARRAY['{"k": [1]}'::jsonb, NULL, '"s"']""", [{"k": [1]}, None, "s"]),
    "m2": ("int[]", "'{{1,2},{3,NULL}}'", [[1, 2], [3, None]]),
    "empty": ("text[]", "'{}'", []),
    "tz": ("timestamptz", "'2024-01-02 03:04:05.123456+05:30'", "2024-01-01T21:34:05.123456+00:00"),
    "tza": ("timestamptz[]", "ARRAY['2024-06-01 12:00:00+00'::timestamptz]", ["2024-06-01T12:00:00+00:00"]),
    "ts": ("timestamp", "'2024-01-02 03:04:05.5'", "2024-01-02T03:04:05.5"),
    "tinf": ("timestamptz", "'infinity'", "infinity"),
    "d": ("date", "'2024-01-31'", "2024-01-31"),
    "u": ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    "by": ("bytea", "'\\x00ff10'", "AP8Q"),
    "moods": ("mood[]", "'{happy,sad}'", ["happy", "sad"]),
    "p": ("posint", "5", 5),
    "pa": ("posint[]", "'{1,2}'", [1, 2]),
    "f8": ("float8", "1e15", 1e15),
    "f4": ("float4", "1.5", 1.5),
    "ch": ("char(4)", "'ab'", "ab"),
    "ip": ("inet", "'10.1.2.3'", "10.1.2.3"),
    "iv": ("interval", "'1 day 2 hours'", "1 day 02:00:00"),
    "nul": ("text", "NULL", None),
}
TEMPLATE = "|".join(f"{{{c}}}" for c in COLUMNS)


def _types_table(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
    conn.execute("CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
    cols = ", ".join(f"{c} {t}" for c, (t, _, _) in COLUMNS.items())
    conn.execute(f"CREATE TABLE items (id int PRIMARY KEY, {cols})")


def _insert(conn: psycopg.Connection, key: int) -> None:
    values = ", ".join(v for _, v, _ in COLUMNS.values())
    conn.execute(f"INSERT INTO items (id, {', '.join(COLUMNS)}) VALUES ({key}, {values})")


def test_every_type_is_exact_and_identical_from_backfill_and_stream(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # session settings that would change every text form: connect() must override them,
    # on the replication connection (pgoutput prints with the walsender's settings) too
    monkeypatch.setenv("PGOPTIONS", "-c DateStyle=SQL,DMY -c TimeZone=Asia/Tokyo -c extra_float_digits=0 "
                                    "-c bytea_output=escape -c IntervalStyle=sql_standard")
    with psycopg.connect(dsn, autocommit=True, options="") as conn:
        _types_table(conn)
        _insert(conn, 1)
    source = _source(dsn, [{"name": "public.items", "text": TEMPLATE, "payload": list(COLUMNS)}])
    try:
        backfilled = _backfill(source)
        assert [c.key for c in backfilled] == [(1,)]
        with psycopg.connect(dsn, autocommit=True, options="") as conn:
            _insert(conn, 2)
            conn.execute("UPDATE items SET id = id WHERE id = 1")  # the same row again, streamed
        streamed = [c for b in _read_until(source, lambda cs: len(cs) >= 2) for c in b]
    finally:
        source.close()
    expected = {c: v for c, (_, _, v) in COLUMNS.items()}
    inserted, updated = streamed
    for change in (backfilled[0], inserted, updated):
        assert change.payload == expected
        for column, value in expected.items():  # types too: True == 1 == 1.0 in Python
            assert repr(change.payload[column]) == repr(value), column
    assert inserted.key == (2,) and updated.key == (1,)
    assert backfilled[0].text == inserted.text == updated.text
    assert updated.text_unchanged  # streaming renders what the backfill rendered: no re-embedding

    # the text is PostgreSQL's own text form of each value (json keeps its input layout
    # in PostgreSQL, we print it the way jsonb does; inet as its output function prints it,
    # without the host mask inet::text adds)
    with connect(dsn, "test", autocommit=True) as conn:
        pg_texts = conn.execute(f"SELECT {', '.join(f'{c}::text' for c in COLUMNS)} FROM items WHERE id = 1").fetchone()
    want = ["" if t is None else t for t in pg_texts]
    want[list(COLUMNS).index("js")] = '{"z": 1, "a": 2}'
    want[list(COLUMNS).index("ip")] = "10.1.2.3"
    assert updated.text.split("|") == want
    assert updated.text.split("|")[:4] == ["true", "false", "12345678901234567890.1234567891", "12345678901234567890"]


def test_render_matches_postgres_text_forms(dsn: str) -> None:
    """Floats (shortest exact digits, PostgreSQL's exponent rule) and arrays (quoting), for many values."""
    rng = random.Random(3)
    floats = [rng.uniform(-1, 1) * 10 ** rng.randint(-30, 30) for _ in range(300)]
    floats += [0.1, 1e15, 1e16, 123456789012345.0, 1e-4, 1e-5, 2.5e-7, 1.0, 100.0, 3.4028235e38, -0.0]
    words = ["", "NULL", "null", "a,b", "{", "}", '"q"', "back\\slash", " lead", "tab\tx", "ü", "plain", "x y"]
    arrays = [[rng.choice(words + [None]) for _ in range(rng.randint(0, 5))] for _ in range(50)]
    with connect(dsn, "test", autocommit=True) as conn:
        f8 = [r[0] for r in conn.execute("SELECT x::text FROM unnest(%s::float8[]) AS x", (floats,)).fetchall()]
        f4 = [r[0] for r in conn.execute("SELECT x::float4::text FROM unnest(%s::float8[]) AS x", (floats,)).fetchall()]
        ta = [conn.execute("SELECT %s::text[]::text", (a,)).fetchone()[0] for a in arrays]
    for text in f8:
        assert float_text(convert_text_value(701, text)) == text
    for text in f4:
        assert render_value(convert_text_value(700, text), renderer_for(700)) == text
    for text, values in zip(ta, arrays):
        assert convert_text_value(1009, text) == values
        assert render_value(values, renderer_for(1009)) == text


def test_numeric_keys_beyond_float_precision_stay_two_points(dsn: str) -> None:
    a, b, c = "12345678901234567890.1234567891", "12345678901234567890.1234567892", "0.10000000000000000001"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE nk (id numeric PRIMARY KEY, body text)")
        conn.execute("INSERT INTO nk VALUES (%s, 'a'), (%s, 'b'), (42, 'int')", (a, b))
    source = _source(dsn, [{"name": "public.nk", "text": "{body} {id}", "payload": ["id"]}])
    try:
        backfilled = {c.key: c for c in _backfill(source)}
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO nk VALUES (%s, 'c')", (c,))
            conn.execute("UPDATE nk SET body = 'b2' WHERE id = %s", (b,))
        streamed = [ch for batch in _read_until(source, lambda cs: len(cs) >= 2) for ch in batch]
    finally:
        source.close()
    assert sorted(backfilled, key=str) == sorted([(a,), (b,), (42,)], key=str)
    assert len({point_id("public.nk", k) for k in backfilled}) == 3
    assert point_id("public.nk", (42,)) == point_id("public.nk", [42])  # integral: an int, as before
    assert backfilled[(a,)].payload == {"id": a} and backfilled[(a,)].text == f"a {a}"
    assert [(ch.key, ch.text) for ch in streamed] == [((c,), f"c {c}"), ((b,), f"b2 {b}")]


# -- TOAST ----------------------------------------------------------------------------------------


def _body(i: int, size: int = 8000) -> str:
    rng = random.Random(i)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(size))


def _toast_table(conn: psycopg.Connection, table: str, rows: int, full: bool = False) -> None:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, title text, body text, counter int DEFAULT 0)")
    conn.execute(f"ALTER TABLE {table} ALTER COLUMN body SET STORAGE EXTERNAL")  # out of line, uncompressed
    if full:
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id, title, body) VALUES (%s, %s, %s)",
                        [(i, f"title {i}", _body(i)) for i in range(1, rows + 1)])


def test_unchanged_toast_costs_one_query_per_batch_or_none(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _toast_table(conn, "docs", 5)
        _toast_table(conn, "docs_full", 2, full=True)
    tables = [{"name": "public.docs", "text": "{body}", "payload": ["title"]},
              {"name": "public.docs_full", "text": "{body}", "payload": ["title"]}]
    source = _source(dsn, tables)
    try:
        backfilled = {(c.table, c.key): c for c in _backfill(source)}
        assert backfilled[("public.docs", (3,))].text == _body(3)
        fetches = _count_fetches(source, "docs")
        with psycopg.connect(dsn, autocommit=True) as conn:
            # (1) a column outside the template and payload: nothing the index holds changed
            conn.execute("UPDATE docs SET counter = counter + 1")
            conn.execute("INSERT INTO docs (id, title, body) VALUES (100, 'marker', 'short')")
        changes = [c for b in _read_until(source, _until_key((100,))) for c in b]
        assert [c.key for c in changes] == [(100,)], "an update that changes nothing indexed needs no change"
        assert fetches.selects == 0

        with psycopg.connect(dsn, autocommit=True) as conn:
            # (2) the payload changed, the text did not: one fetch for the whole batch, nothing to embed
            with conn.transaction():
                conn.execute("UPDATE docs SET title = 'new ' || id WHERE id <= 5")
        batches = _read_until(source, lambda cs: len(cs) >= 5)
        changes = [c for b in batches for c in b]
        assert [c.key for c in changes] == [(i,) for i in range(1, 6)]
        assert all(c.text == _body(c.key[0]) and c.text_unchanged for c in changes)
        assert [c.payload for c in changes] == [{"title": f"new {i}"} for i in range(1, 6)]
        assert fetches.selects == len(batches) == 1

        with psycopg.connect(dsn, autocommit=True) as conn:
            # (3) REPLICA IDENTITY FULL: the old tuple has the values, no fetch at all
            conn.execute("UPDATE docs_full SET title = 'full ' || id")
        changes = [c for b in _read_until(source, lambda cs: len(cs) >= 2) for c in b]
        assert [(c.key, c.text, c.payload, c.text_unchanged) for c in changes] == [
            ((i,), _body(i), {"title": f"full {i}"}, True) for i in (1, 2)]
        assert fetches.selects == 1

        with psycopg.connect(dsn, autocommit=True) as conn:
            # (4) one batch, in order: a change to fetch, then the same key's new text, a delete
            # after a change to fetch, and a key change after one
            with conn.transaction():
                conn.execute("UPDATE docs SET title = 'a' WHERE id = 1")
                conn.execute("UPDATE docs SET body = 'fresh text' WHERE id = 1")
                conn.execute("UPDATE docs SET title = 'b' WHERE id = 2")
                conn.execute("DELETE FROM docs WHERE id = 2")
                conn.execute("UPDATE docs SET title = 'c' WHERE id = 3")
                conn.execute("UPDATE docs SET id = 30 WHERE id = 3")
            conn.execute("UPDATE docs SET title = 'd' WHERE id = 1")  # next transaction: text unchanged
            conn.execute("INSERT INTO docs (id, title, body) VALUES (101, 'marker', 'short')")
        changes = [c for b in _read_until(source, _until_key((101,))) for c in b]
        got = [(c.op, c.key, c.text, (c.payload or {}).get("title"), c.text_unchanged) for c in changes]
        assert got == [
            # fetched at the end of the batch: the current row is newer than the change (and
            # the newer version follows); what is remembered per key still follows the stream
            ("upsert", (1,), "fresh text", "a", False),
            ("upsert", (1,), "fresh text", "a", True),
            # ids 2 and 3 are gone (deleted, moved to 30) when fetched: their interim versions are
            # skipped, the delete follows
            ("delete", (2,), None, None, False),
            ("delete", (3,), None, None, False),
            ("upsert", (30,), _body(3), "c", False),  # a new key: nothing emitted for it yet
            ("upsert", (1,), "fresh text", "d", True),
            ("upsert", (101,), "short", "marker", False),
        ], got
    finally:
        source.close()


def test_after_a_restart_unchanged_toast_is_fetched_once_per_batch(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _toast_table(conn, "docs", 30)
    source = _source(dsn, [{"name": "public.docs", "text": "{title}: {body}", "payload": ["title", "counter"]}])
    try:
        _backfill(source)
        source.close()
        source.start(backfill=False)  # the reader's memory of emitted texts is gone
        fetches = _count_fetches(source, "docs")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE docs SET counter = counter + 1")
        batches = _read_until(source, lambda cs: len(cs) >= 30)
        changes = [c for b in batches for c in b]
        assert [c.key for c in changes] == [(i,) for i in range(1, 31)]
        assert all(c.text == f"title {c.key[0]}: {_body(c.key[0])}" and c.payload == {"title": f"title {c.key[0]}", "counter": 1}
                   for c in changes)
        assert fetches.selects == len(batches) <= 2
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE docs SET counter = counter + 1 WHERE id = 7")
        (again,) = [c for b in _read_until(source, lambda cs: len(cs) >= 1) for c in b]
        # remembered once fetched: the text is known unchanged (the title arrives, so it is still fetched)
        assert again.text_unchanged and again.payload == {"title": "title 7", "counter": 2}
    finally:
        source.close()


def test_a_key_stored_out_of_line_is_taken_from_the_old_tuple(dsn: str) -> None:
    """A text key long enough to be TOASTed arrives as 'unchanged' in an update's new tuple;
    PostgreSQL then sends the old key, and that is the key (never a poison change)."""
    rng = random.Random(5)
    key = "".join(rng.choice("0123456789abcdef") for _ in range(2500))  # incompressible
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bigkey (k text PRIMARY KEY, counter int, body text)")
        conn.execute("INSERT INTO bigkey VALUES (%s, 0, 'hello')", (key,))
    source = _source(dsn, [{"name": "public.bigkey", "text": "{body}", "payload": ["counter"]}])
    try:
        assert [c.key for c in _backfill(source)] == [(key,)]
        arrived: list[tuple[bool, bool]] = []
        decode = source._row_change

        def spy(event: RowChange, out: list[Change]) -> None:
            arrived.append((event.new["k"] is UNCHANGED_TOAST, (event.old or {}).get("k") == key))
            decode(event, out)

        source._row_change = spy  # type: ignore[method-assign]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE bigkey SET counter = 1")
        (change,) = [c for b in _read_until(source, lambda cs: len(cs) >= 1) for c in b]
    finally:
        source.close()
    assert arrived == [(True, True)]  # the case this test is about: new tuple 'u', old key sent
    assert change.key == (key,) and change.payload == {"counter": 1} and change.text == "hello"
    assert change.text_unchanged


def test_an_unknown_key_is_a_clear_error_not_a_change(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (k text PRIMARY KEY, body text)")
    source = _source(dsn, [{"name": "public.t", "text": "{body}"}])
    rel = Relation(1, "public", "t", "d", [Column("k", 25, True), Column("body", 25, False)])
    out: list[Change] = []
    with pytest.raises(SourceError, match="public.t.*REPLICA IDENTITY FULL"):
        source._row_change(RowChange("U", rel, new={"k": UNCHANGED_TOAST, "body": "x"}), out)
    source._row_change(RowChange("U", rel, new={"k": UNCHANGED_TOAST, "body": "x"}, old={"k": "key", "body": None}), out)
    assert [(c.key, c.text) for c in out] == [(("key",), "x")]

# -- end to end, both sinks: every case that reaches the store, with verify after each step -------------

def _verify_clean(path: Path) -> dict[str, Any]:
    """``embedcluster verify`` finds nothing to report (exit 0), running pipeline or not."""
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "verify", "--config", str(path), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, (done.returncode, done.stdout[-3000:], done.stderr[-3000:])
    return json.loads(done.stdout)


def _texts_embedded(app: Any) -> int:
    """Texts the pipeline's embedding actors have embedded so far (``/stats``)."""
    return wait_for(lambda: app.stats().get("embedding"), 30, "the embedding figures in /stats")["texts"]


NUMERIC_KEYS = ("12345678901234567890.1234567891", "12345678901234567890.1234567892", "0.10000000000000000001")

E2E_TABLES = [
    {"name": "public.events", "text": "{body}", "payload": ["region"]},
    {"name": "public.readings", "text": "{note}", "payload": ["taken"]},
    ODD_TABLE,
    # every type, in the key's row as payload and as text; REPLICA IDENTITY FULL
    {"name": "public.items", "text": TEMPLATE, "payload": list(COLUMNS)},
    # numeric keys beyond float precision; REPLICA IDENTITY USING INDEX on the key
    {"name": "public.nk", "text": "{body} {id}", "payload": ["id"]},
    # TOASTed text, a counter beside it
    {"name": "public.toasted", "text": "{body}", "payload": ["title", "counter"]},
]


def _e2e_schema(dsn: str) -> None:
    _execute(dsn, *PARTITIONED, *ODD_DDL,
             "INSERT INTO events SELECT 'eu', g, 'eu event ' || g FROM generate_series(10, 40) g")
    a, b, _ = NUMERIC_KEYS
    with psycopg.connect(dsn, autocommit=True) as conn:
        _types_table(conn)
        _insert(conn, 1)
        conn.execute("ALTER TABLE items REPLICA IDENTITY FULL")
        conn.execute("CREATE TABLE nk (id numeric PRIMARY KEY, body text)")
        conn.execute("ALTER TABLE nk REPLICA IDENTITY USING INDEX nk_pkey")
        conn.execute("INSERT INTO nk VALUES (%s, 'a'), (%s, 'b'), (42, 'int')", (a, b))
        _toast_table(conn, "toasted", 12)


def _assert_stored_values(path: Path) -> None:
    """What the store holds, value by value: exact types whichever way the row came, two points
    for two numeric keys that a float would merge, the TOASTed rows' new payloads."""
    from actors.sinks.base import open_sink

    config = load_config(path)
    sink = wait_for(lambda: open_sink(config.sink), 60, "the sink to be released by the stopped pipeline", interval=0.5)
    try:
        items = sink.get_points([point_id("public.items", [k]) for k in (1, 2)])
        nk = sink.get_points([point_id("public.nk", [k]) for k in NUMERIC_KEYS])
        toasted = sink.get_points([point_id("public.toasted", [k]) for k in range(1, 13)])
    finally:
        sink.close()
    expected = {c: v for c, (_, _, v) in COLUMNS.items()}
    assert len(items) == 2
    for point in items.values():  # row 1 backfilled (then updated in place), row 2 streamed
        for column, value in expected.items():
            # types too (True == 1 == 1.0 in Python); not the order of JSON object keys, which
            # MySQL's JSON type does not keep
            got = json.dumps(point.payload[column], sort_keys=True)
            assert got == json.dumps(value, sort_keys=True), (point.key, column, got)
    assert len({p.text for p in items.values()}) == 1
    assert sorted(p.key[0] for p in nk.values()) == sorted(NUMERIC_KEYS)
    assert {p.key[0]: p.text for p in nk.values()}[NUMERIC_KEYS[1]] == f"b2 {NUMERIC_KEYS[1]}"
    assert sorted((p.key[0], p.payload["title"], p.payload["counter"]) for p in toasted.values()) == [
        (i, f"new {i}" if i <= 3 else f"title {i}", 1) for i in range(1, 13)]
    assert all(p.text == _body(p.key[0]) for p in toasted.values())


def test_every_case_end_to_end(dsn: str, sink_settings: dict[str, Any], tmp_path: Path) -> None:
    """Partitions, odd identifiers, replica identity FULL and USING INDEX, every value type,
    numeric keys, TOAST, a schema change that stops the pipeline, and the resume after the fix:
    through ``embedcluster run`` on one sink, ``embedcluster verify`` clean after each step."""
    _e2e_schema(dsn)
    port = free_port()
    path = write_config(tmp_path / "ec.toml", dsn, port, sink_settings, slot="e2e", tables=E2E_TABLES)
    app = start_run(path, port, tmp_path / "run1.log")
    try:
        wait_caught_up(dsn, "e2e")
        _verify_clean(path)  # the backfill: every table, every value
        _execute(
            dsn,
            "UPDATE events SET region = 'us' WHERE region = 'eu' AND id BETWEEN 10 AND 20",  # rows move partitions
            "UPDATE readings SET taken = '2025-03-01' WHERE id = 1",
            "CREATE TABLE events_ap (region text NOT NULL, id int NOT NULL, body text)",
            "ALTER TABLE events ATTACH PARTITION events_ap FOR VALUES IN ('ap')",
            "INSERT INTO events VALUES ('ap', 1, 'attached while streaming')",
            "DELETE FROM events WHERE id = 40",
            'UPDATE "Sales Dept"."Café ""Orders""" SET "Région" = \'Sud\', "Note ""quoted""" = \'moved\' WHERE "Order Id" = 2',
            'INSERT INTO "Sales Dept"."Café ""Orders""" VALUES (3, \'Est\', \'third\')',
            "UPDATE items SET id = id WHERE id = 1",  # the backfilled row again, streamed (old tuple FULL)
            f"INSERT INTO nk VALUES ('{NUMERIC_KEYS[2]}', 'c')",
            f"UPDATE nk SET body = 'b2' WHERE id = '{NUMERIC_KEYS[1]}'",
            "DELETE FROM nk WHERE id = 42",
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            _insert(conn, 2)
        wait_caught_up(dsn, "e2e")
        # TOAST: the payload changes, the TOASTed text does not: nothing is embedded again
        before = _texts_embedded(app)
        _execute(dsn, "UPDATE toasted SET title = 'new ' || id WHERE id <= 3", "UPDATE toasted SET counter = counter + 1")
        wait_caught_up(dsn, "e2e")
        assert _texts_embedded(app) == before
        # while it runs: partitions, moved rows, the attached partition, odd names, values, TOAST
        _verify_clean(path)

        # a column the template uses is renamed: the pipeline stops on purpose, after what came before
        _execute(dsn, "INSERT INTO readings VALUES (3, '2025-04-01', 'before the rename')")
        before = current_lsn(dsn)
        _execute(dsn, "ALTER TABLE readings RENAME COLUMN note TO remark",
                 "INSERT INTO readings VALUES (4, '2025-05-01', 'after the rename')")

        def halted() -> Any:
            status, body = http_get(app.base + "/healthz", timeout=5)
            return status == 503 and body.get("status") == "halted" and body
        body = wait_for(halted, 60, "/healthz to report the stop")
        assert "column 'note' of public.readings (used by tables[1].text) was renamed to 'remark'" in body["error"]
        stats = app.stats()
        assert stats["state"] == "halted" and "renamed to 'remark'" in stats["last_error"]
        shown = subprocess.run([sys.executable, "-m", "cluster.cli", "status", "--config", str(path)],
                               capture_output=True, text=True, timeout=60, cwd=REPO)
        assert "pipeline:      halted" in shown.stdout and "renamed to 'remark'" in shown.stdout, shown.stdout
        # everything before the rename is written and confirmed, nothing after it
        assert wait_for(lambda: confirmed_lsn(dsn, "e2e") >= before, 30, "the slot to confirm the row before the rename")
        assert confirmed_lsn(dsn, "e2e") < current_lsn(dsn)
        assert app.search("after the rename", k=5)["results"][0]["payload"] != {"taken": "2025-05-01"}
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    # the user follows the line: the config names the new column, and the run resumes where it stopped
    tables = [dict(t) for t in E2E_TABLES]
    tables[1]["text"] = "{remark}"
    path = write_config(tmp_path / "ec.toml", dsn, port, sink_settings, slot="e2e", tables=tables)
    app = start_run(path, port, tmp_path / "run2.log")
    try:
        wait_caught_up(dsn, "e2e")
        assert app.stats()["state"] == "streaming"
        _verify_clean(path)
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    resumed = app.cli.output()
    assert "resuming stream" in resumed and "backfill from snapshot" not in resumed  # not indexed again
    assert_index_matches_source(load_config(path))
    _assert_stored_values(path)


# -- 7. the resume position: a store that missed changes is never resumed silently ---------------------


def _backup(sink_settings: dict[str, Any], request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], None]:
    """Copy the store as it is now (the pipeline stopped); returns what restores that copy."""
    if sink_settings["kind"] == "qdrant":
        store, copy = Path(sink_settings["path"]), tmp_path / "backup"
        shutil.copytree(store, copy)

        def restore_files() -> None:
            shutil.rmtree(store)
            shutil.copytree(copy, store)
        return restore_files
    server = request.getfixturevalue("mariadb")
    tables = [sink_settings["table"], f"{sink_settings['table']}_state"]  # the points and the state documents

    def copy_tables(pairs: list[tuple[str, str]]) -> None:
        conn = server.user_connection()
        try:
            with conn.cursor() as cur:
                for source, target in pairs:
                    cur.execute(f"DROP TABLE IF EXISTS `{target}`")
                    cur.execute(f"CREATE TABLE `{target}` LIKE `{source}`")
                    cur.execute(f"INSERT INTO `{target}` SELECT * FROM `{source}`")
            conn.commit()
        finally:
            conn.close()
    copy_tables([(t, f"backup_{t}") for t in tables])
    return lambda: copy_tables([(f"backup_{t}", t) for t in tables])


def test_a_store_restored_from_a_backup_is_indexed_again(
    books: str, sink_settings: dict[str, Any], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from cluster.demo import BATCH_2, insert_sql

    port = free_port()
    path = write_config(tmp_path / "ec.toml", books, port, sink_settings, slot="resume", model="null")
    app = start_run(path, port, tmp_path / "run1.log")
    assert app.cli.stop() == 0, app.cli.output()[-3000:]
    restore = _backup(sink_settings, request, tmp_path)  # the store as it was after the backfill
    app = start_run(path, port, tmp_path / "run2.log")
    try:
        _execute(books, insert_sql(BATCH_2))
        wait_caught_up(books, "resume")  # the slot confirms the new books: they are in the store
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    restore()  # ...which is then restored from the backup
    app = start_run(path, port, tmp_path / "run3.log")
    try:
        wait_caught_up(books, "resume")
        _verify_clean(path)  # the eight books the backup lacked are back, while it runs
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    log = app.cli.output()
    assert "missed the changes between" in log and "backfilling again" in log, log[-3000:]
    assert_index_matches_source(load_config(path))
    assert len(table_rows(books)) == 16

# -- 7. identifiers: spaces, quotes, upper case and non-ASCII letters (end to end: the e2e test above) --


def test_odd_identifiers_backfill_and_stream(dsn: str) -> None:
    _execute(dsn, *ODD_DDL)
    stream = Stream(dsn, [ODD_TABLE])
    try:
        table = 'Sales Dept."Café ""Orders"""'  # the one spelling: quoted only where a part holds a quote or dot
        assert sorted((c.table, c.key, c.text, c.payload["Région"]) for c in stream.backfill) == [
            (table, (1, "Île"), "first", "Île"), (table, (2, "Nord"), "second", "Nord"),
        ]
        _execute(
            dsn,
            'UPDATE "Sales Dept"."Café ""Orders""" SET "Note ""quoted""" = \'changed\' WHERE "Order Id" = 1',
            'UPDATE "Sales Dept"."Café ""Orders""" SET "Région" = \'Sud\' WHERE "Order Id" = 2',
            'DELETE FROM "Sales Dept"."Café ""Orders""" WHERE "Order Id" = 1',
        )
        changes = stream.read(4)
        assert [(c.op, c.table, c.key) for c in changes] == [
            ("upsert", table, (1, "Île")), ("delete", table, (2, "Nord")), ("upsert", table, (2, "Sud")),
            ("delete", table, (1, "Île")),
        ]
        assert changes[0].text == "changed" and changes[2].payload == {"Région": "Sud"}
    finally:
        stream.close()


def test_a_dropped_tables_points_are_removed_only_by_forget(tmp_path) -> None:  # noqa: ANN001
    import numpy as np

    from actors.changes import point_id, text_hash
    from actors.sinks.base import VectorPoint, open_sink
    from cluster.config import QdrantSinkConfig

    sink_config = QdrantSinkConfig(path=str(tmp_path / "q"), collection="forget")
    sink = open_sink(sink_config)
    sink.ensure_ready(4)
    vector = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)
    sink.upsert([VectorPoint(point_id(t, [k]), t, [k], vector, "x", text_hash("x"), {})
                 for t in ("public.docs", "public.gone") for k in range(3)])
    sink.close()
    path = tmp_path / "ec.toml"
    path.write_text(f'[source]\ndsn = "postgresql://u@127.0.0.1:1/db"\n[[tables]]\nname = "docs"\n'
                    f'[sink]\nkind = "qdrant"\ncollection = "forget"\npath = "{tmp_path / "q"}"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cluster.cli", "forget", "--config", str(path), *args],
                              capture_output=True, text=True, timeout=120)

    unconfirmed = cli("--table", "gone")
    assert unconfirmed.returncode == 2 and "pass --yes" in unconfirmed.stderr
    configured = cli("--table", "docs", "--yes")
    assert configured.returncode == 2 and "public.docs is still configured (tables[0])" in configured.stderr
    done = cli("--table", "gone", "--yes")
    assert done.returncode == 0 and "deleted 3 points of gone" in done.stdout, done.stderr
    sink = open_sink(sink_config)
    try:
        assert sorted((p.table, p.key[0]) for p in sink.iter_points()) == [("public.docs", k) for k in range(3)]
    finally:
        sink.close()
