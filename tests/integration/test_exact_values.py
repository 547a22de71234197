"""Exact values and TOAST on a real PostgreSQL (issue 10, parts 5 and 6), PgChangeSource without Ray.

Every value a row carries is the same whether the row came from the backfill
(``col::text``) or from pgoutput, and equal to what PostgreSQL holds: numeric
exact, booleans, JSON, arrays, ISO timestamps, uuid, bytea, NULL; the text
template prints PostgreSQL's own text forms.  Unchanged TOASTed values cost
one query per batch and table, or none at all.
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg
import pytest

from actors.cdc_reader import PgChangeSource
from actors.changes import Change, point_id
from actors.pgoutput import UNCHANGED_TOAST, Column, Relation, RowChange
from actors.pgvalues import convert_text_value, float_text, renderer_for, render_value
from actors.source_schema import SourceError, connect, inspect_source
from cluster.config import config_from_dict

# -- helpers ------------------------------------------------------------------------------------


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


def _docs(conn: psycopg.Connection, table: str, rows: int, full: bool = False) -> None:
    conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, title text, body text, counter int DEFAULT 0)")
    conn.execute(f"ALTER TABLE {table} ALTER COLUMN body SET STORAGE EXTERNAL")  # out of line, uncompressed
    if full:
        conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    with conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {table} (id, title, body) VALUES (%s, %s, %s)",
                        [(i, f"title {i}", _body(i)) for i in range(1, rows + 1)])


def test_unchanged_toast_costs_one_query_per_batch_or_none(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _docs(conn, "docs", 5)
        _docs(conn, "docs_full", 2, full=True)
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
        _docs(conn, "docs", 30)
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
