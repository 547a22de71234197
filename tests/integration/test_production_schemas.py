"""Production schemas on a real PostgreSQL: replica identity, generated columns, partitioned tables,
schema changes while streaming.

Reader-level cases drive ``PgChangeSource`` on a real slot without Ray (fast); the
end-to-end cases run the real pipeline and check the index against the table.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from actors.cdc_reader import PgChangeSource
from actors.changes import Change
from actors.schema_watch import SchemaChanged
from actors.source_schema import SourceError, inspect_source
from cluster.config import Config, config_from_dict, load_config
from tests.integration.checks import assert_index_matches_source
from tests.support.harness import (
    confirmed_lsn,
    current_lsn,
    free_port,
    http_get,
    start_run,
    wait_caught_up,
    wait_for,
    write_config,
)


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



def _docs(dsn: str) -> Stream:
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
    stream = _docs(dsn)
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
    stream = _docs(dsn)
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
    stream = _docs(dsn)
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
    stream = _docs(dsn)
    try:
        _execute(dsn, ddl)  # no row change follows: found from the catalog
        assert expected in _stopped(stream)
    finally:
        stream.close()


# -- end to end, both sinks: partitions converge; a schema change stops the pipeline on purpose ------

def _verify_clean(path) -> None:  # noqa: ANN001
    """``embedcluster verify`` finds nothing to report (exit 0), running pipeline or not."""
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "verify", "--config", str(path), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stdout[-3000:], done.stderr[-3000:])


E2E_TABLES = [
    {"name": "public.events", "text": "{body}", "payload": ["region"]},
    {"name": "public.readings", "text": "{note}", "payload": ["taken"]},
]


def test_partitions_and_a_schema_change_end_to_end(dsn: str, sink_settings: dict[str, Any], tmp_path) -> None:  # noqa: ANN001
    _execute(dsn, *PARTITIONED, *ODD_DDL, "INSERT INTO events SELECT 'eu', g, 'eu event ' || g FROM generate_series(10, 40) g")
    port = free_port()
    path = write_config(tmp_path / "ec.toml", dsn, port, sink_settings, slot="e2e", tables=[*E2E_TABLES, ODD_TABLE])
    app = start_run(path, port, tmp_path / "run1.log")
    try:
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
        )
        wait_caught_up(dsn, "e2e")
        _verify_clean(path)  # while it runs: partitions, moved rows, the attached partition, odd names
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
                               capture_output=True, text=True, timeout=60)
        assert "pipeline:      halted" in shown.stdout and "renamed to 'remark'" in shown.stdout, shown.stdout
        # everything before the rename is written and confirmed, nothing after it
        assert wait_for(lambda: confirmed_lsn(dsn, "e2e") >= before, 30, "the slot to confirm the row before the rename")
        assert confirmed_lsn(dsn, "e2e") < current_lsn(dsn)
        assert app.search("after the rename", k=5)["results"][0]["payload"] != {"taken": "2025-05-01"}
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    # the user follows the line: the config names the new column, and the run resumes where it stopped
    tables = [E2E_TABLES[0], {**E2E_TABLES[1], "text": "{remark}"}, ODD_TABLE]
    path = write_config(tmp_path / "ec.toml", dsn, port, sink_settings, slot="e2e", tables=tables)
    app = start_run(path, port, tmp_path / "run2.log")
    try:
        wait_caught_up(dsn, "e2e")
        assert app.stats()["state"] == "streaming"
        _verify_clean(path)
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    assert_index_matches_source(load_config(path))


# -- 7. the resume position: a store that missed changes is never resumed silently ---------------------


def test_a_store_restored_from_a_backup_is_indexed_again(books: str, tmp_path) -> None:  # noqa: ANN001
    import shutil

    from cluster.demo import BATCH_2, insert_sql

    store = tmp_path / "qdrant"
    sink = {"kind": "qdrant", "collection": "books", "path": str(store)}
    port = free_port()
    path = write_config(tmp_path / "ec.toml", books, port, sink, slot="resume")
    app = start_run(path, port, tmp_path / "run1.log")
    assert app.cli.stop() == 0, app.cli.output()[-3000:]
    shutil.copytree(store, tmp_path / "backup")  # the store as it was after the backfill
    app = start_run(path, port, tmp_path / "run2.log")
    try:
        _execute(books, insert_sql(BATCH_2))
        wait_caught_up(books, "resume")  # the slot confirms the new books: they are in the store
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    shutil.rmtree(store)
    shutil.copytree(tmp_path / "backup", store)  # ...which is then restored from the backup
    app = start_run(path, port, tmp_path / "run3.log")
    try:
        wait_caught_up(books, "resume")
    finally:
        assert app.cli.stop() == 0, app.cli.output()[-3000:]
    log = app.cli.output()
    assert "missed the changes between" in log and "backfilling again" in log, log[-3000:]
    assert_index_matches_source(load_config(path))  # the eight books the backup lacked are back
    _verify_clean(path)


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
