"""MySQLSink against a real, private MariaDB 10.11 (no vector type: the portable dialect).

The server is started once per module by ``tests.support.mariadb.MariaDBServer``
on a free loopback port; every test uses its own sink table.
"""

from __future__ import annotations

import decimal
import logging
import threading
import time
import uuid
from typing import Iterator

import numpy as np
import pytest
from pydantic import SecretStr

from actors.changes import point_id, text_hash
from actors.sinks.base import PointError, PointTooLarge, SinkError, VectorPoint, open_sink
from actors.sinks.mysql import INDEX_STATE_NAME, MAX_DIMENSION, MySQLSink
from actors.sinks.mysql.dialects import MAX_TEXT_BYTES
from actors.sinks.mysql.config import MySQLSinkConfig
from tests.support.mariadb import MariaDBServer

pytestmark = pytest.mark.integration

DIM = 8


@pytest.fixture
def server(mariadb: MariaDBServer) -> MariaDBServer:
    """The session's private MariaDB (tests/integration/conftest.py)."""
    return mariadb


def _config(server: MariaDBServer, table: str, dialect: str = "portable", db: str | None = None, password: str | None = None) -> MySQLSinkConfig:
    return MySQLSinkConfig(
        kind="mysql",
        dsn=server.dsn(db),
        table=table,
        dialect=dialect,  # type: ignore[arg-type]
        password=SecretStr(server.password if password is None else password),
    )


@pytest.fixture
def table_name() -> str:
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture
def sink(server: MariaDBServer, table_name: str) -> Iterator[MySQLSink]:
    s = MySQLSink(_config(server, table_name), scan_chunk_rows=16, retry_deadline_s=30)
    s.ensure_ready(DIM)
    try:
        yield s
    finally:
        s.close()


def make_points(n: int, seed: int = 0, tables: tuple[str, ...] = ("public.docs", "public.notes")) -> list[VectorPoint]:
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(n):
        table = tables[i % len(tables)]
        text = f"row {i} — ünïcode {seed}"
        # Deliberately not normalised: the sink must compute true cosine.
        vec = (rng.normal(size=DIM) * rng.uniform(0.1, 10)).astype(np.float32)
        pts.append(
            VectorPoint(
                id=point_id(table, [i]),
                table=table,
                key=[i],
                vector=vec,
                text=text,
                text_hash=text_hash(text),
                payload={"i": i, "title": f"title {i}", "tags": ["a", "b"]},
            )
        )
    return pts


def numpy_ranking(points: list[VectorPoint], q: np.ndarray) -> list[tuple[str, float]]:
    mat = np.stack([p.vector for p in points]).astype(np.float64)
    q64 = q.astype(np.float64)
    scores = mat @ q64 / (np.linalg.norm(mat, axis=1) * np.linalg.norm(q64))
    order = sorted(range(len(points)), key=lambda i: (-scores[i], points[i].id))
    return [(points[i].id, float(scores[i])) for i in order]


def raw_rows(server: MariaDBServer, table: str) -> dict[str, tuple]:
    """Rows as seen by an independent connection (proves the sink committed)."""
    with server.user_connection() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT `id`, `source_table`, `text`, `payload`, `embedding` FROM `{table}`")
        return {r[0]: r for r in cur.fetchall()}


# ----------------------------------------------------------------------------- dialect selection


def test_auto_picks_portable_on_mariadb_10_11_and_logs_once(server: MariaDBServer, caplog: pytest.LogCaptureFixture) -> None:
    server.create_database("autodetect")  # a DSN no other test uses, so the one-time log is ours
    caplog.set_level(logging.INFO, logger="actors.sinks.mysql")
    first = MySQLSink(_config(server, "auto_t", dialect="auto", db="autodetect"))
    second = MySQLSink(_config(server, "auto_t", dialect="auto", db="autodetect"))
    try:
        assert first.dialect == second.dialect == "portable"
        assert "10.11" in first.server.version
        choices = [r.getMessage() for r in caplog.records if "using dialect" in r.getMessage()]
        assert len(choices) == 1, choices
        assert "'portable'" in choices[0] and "10.11" in choices[0]
        assert server.password not in choices[0]
    finally:
        first.close()
        second.close()


def test_open_sink_builds_mysql_sink(server: MariaDBServer, table_name: str) -> None:
    s = open_sink(_config(server, table_name, dialect="auto"))
    try:
        assert isinstance(s, MySQLSink) and s.shared is True and s.dialect == "portable"
    finally:
        s.close()


@pytest.mark.parametrize("dialect", ["mariadb", "cloudsql", "cloudsql-preview"])
def test_forcing_a_vector_dialect_without_server_support_fails_clearly(server: MariaDBServer, dialect: str) -> None:
    with pytest.raises(SinkError) as err:
        MySQLSink(_config(server, "forced", dialect=dialect))
    msg = str(err.value)
    assert f"sink.dialect = '{dialect}'" in msg
    assert "10.11" in msg and "'portable'" in msg
    assert "\n" not in msg


# ----------------------------------------------------------------------------- connection errors


def test_bad_password_is_a_clear_error_without_the_password(server: MariaDBServer) -> None:
    wrong = "definitely-not-the-password-42"
    with pytest.raises(SinkError) as err:
        MySQLSink(_config(server, "x", password=wrong))
    msg = str(err.value)
    assert "rejected user 'embedcluster'" in msg and "EMBEDCLUSTER_SINK_PASSWORD" in msg
    assert wrong not in msg and server.password not in msg


def test_unreachable_server_is_a_clear_error(server: MariaDBServer) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on once this socket closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = MySQLSinkConfig(kind="mysql", dsn=f"mysql://embedcluster@127.0.0.1:{port}/vectors", password=SecretStr("x"))
    started = time.monotonic()
    with pytest.raises(SinkError) as err:
        MySQLSink(cfg, connect_timeout_s=3)
    assert f"cannot reach the MySQL sink at 127.0.0.1:{port}" in str(err.value)
    assert time.monotonic() - started < 10  # fails fast, no retry loop at construction


def test_unknown_database_is_a_clear_error(server: MariaDBServer) -> None:
    # An unprivileged user gets "access denied" (1044) for a database that does not exist.
    with pytest.raises(SinkError, match="may not use database 'no_such_db'.*create the database"):
        MySQLSink(_config(server, "x", db="no_such_db"))


# ----------------------------------------------------------------------------- schema


def test_ensure_ready_creates_tables_and_is_idempotent(server: MariaDBServer, sink: MySQLSink, table_name: str) -> None:
    sink.ensure_ready(DIM)  # second call: no error, nothing changes
    with server.root_connection(database=server.database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE, COLUMN_KEY FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (server.database, table_name),
        )
        cols = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
        cur.execute(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (server.database, f"{table_name}_state"),
        )
        assert cur.fetchone() is not None
    assert cols["id"] == ("char(36)", "PRI")
    assert cols["embedding"][0] == f"varbinary({4 * DIM})"
    assert cols["source_table"][1] == "MUL"  # indexed for the filtered search
    assert {"source_key", "text", "text_hash", "payload", "content_hash"} <= set(cols)
    assert sink.count() == 0


def test_dimension_mismatch_is_a_clear_error(server: MariaDBServer, sink: MySQLSink, table_name: str) -> None:
    other = MySQLSink(_config(server, table_name))
    try:
        with pytest.raises(SinkError) as err:
            other.ensure_ready(DIM * 2)
    finally:
        other.close()
    msg = str(err.value)
    assert f"stores {DIM}-dimensional vectors" in msg and f"produces {DIM * 2}" in msg
    assert "sink.table" in msg


def test_dimension_limit(server: MariaDBServer, table_name: str) -> None:
    s = MySQLSink(_config(server, table_name))
    try:
        with pytest.raises(SinkError, match="16,000"):
            s.ensure_ready(MAX_DIMENSION + 1)
        s.ensure_ready(MAX_DIMENSION)  # the largest allowed still fits InnoDB's row-size limit
        v = np.ones(MAX_DIMENSION, dtype=np.float32)
        s.upsert([VectorPoint(point_id("public.big", [1]), "public.big", [1], v, "big", text_hash("big"), {})])
        (hit,) = s.search(v, 1)
        assert hit.key == [1] and hit.score == pytest.approx(1.0)
    finally:
        s.close()


def test_vector_column_the_dialect_cannot_read(server: MariaDBServer, table_name: str) -> None:
    with server.user_connection() as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE `{table_name}` (`id` CHAR(36) PRIMARY KEY, `source_table` VARCHAR(255), `source_key` JSON, "
            "`text` TEXT, `text_hash` VARCHAR(64), `payload` JSON, `content_hash` CHAR(32), `embedding` BLOB)"
        )
    s = MySQLSink(_config(server, table_name))
    try:
        with pytest.raises(SinkError) as err:
            s.ensure_ready(DIM)
    finally:
        s.close()
    msg = str(err.value)
    assert "`embedding` has type blob" in msg and "cannot read" in msg


def test_foreign_table_with_the_same_name_is_refused(server: MariaDBServer, table_name: str) -> None:
    with server.user_connection() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE `{table_name}` (`id` INT PRIMARY KEY, `name` TEXT)")
    s = MySQLSink(_config(server, table_name))
    try:
        with pytest.raises(SinkError, match="not an embedcluster vector table"):
            s.ensure_ready(DIM)
    finally:
        s.close()


def test_operations_before_ensure_ready_explain_what_to_do(server: MariaDBServer, table_name: str) -> None:
    s = MySQLSink(_config(server, table_name))
    try:
        with pytest.raises(SinkError, match=r"call ensure_ready\(dimension\) first"):
            s.upsert(make_points(1))
        # Reads of a table nobody created yet are empty (a search replica may start first).
        assert s.search(np.ones(DIM, np.float32), 5) == []
        assert s.count() == 0 and list(s.iter_points()) == [] and s.text_hashes(["x"]) == {}
        assert s.get_state("anything") is None  # state works without the vector table
    finally:
        s.close()


# ----------------------------------------------------------------------------- writes


def test_upsert_is_durable_and_replay_is_idempotent(server: MariaDBServer, sink: MySQLSink, table_name: str) -> None:
    pts = make_points(40)
    sink.upsert(pts)
    rows = raw_rows(server, table_name)  # another connection sees them: committed
    assert len(rows) == 40 and sink.count() == 40
    stored = {p.id: p for p in sink.iter_points(with_vectors=True)}

    sink.upsert(pts)  # replay
    sink.upsert(pts[:10])
    assert sink.count() == 40
    again = {p.id: p for p in sink.iter_points(with_vectors=True)}
    assert again.keys() == stored.keys()
    for pid, p in again.items():
        assert (p.text, p.payload, p.text_hash) == (stored[pid].text, stored[pid].payload, stored[pid].text_hash)
        assert np.array_equal(p.vector, stored[pid].vector)

    # Overwrite: same id, new content; a batch repeating an id keeps the last version.
    changed = VectorPoint(pts[0].id, pts[0].table, pts[0].key, pts[1].vector, "new text", text_hash("new text"), {"v": 2})
    newest = VectorPoint(pts[0].id, pts[0].table, pts[0].key, pts[2].vector, "newest", text_hash("newest"), {"v": 3})
    sink.upsert([changed, newest])
    assert sink.count() == 40
    (p0,) = [p for p in sink.iter_points(with_vectors=True) if p.id == pts[0].id]
    assert (p0.text, p0.payload, p0.text_hash) == ("newest", {"v": 3}, text_hash("newest"))
    assert np.array_equal(p0.vector, pts[2].vector)


def _global_inserts(server: MariaDBServer) -> int:
    with server.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Com_insert'")
        return int(cur.fetchone()[1])


def test_batches_are_multi_row_statements_split_by_size(server: MariaDBServer, table_name: str) -> None:
    s = MySQLSink(_config(server, table_name), max_statement_bytes=64 << 10)
    s.ensure_ready(DIM)
    try:
        pts = make_points(600, seed=3)
        before = _global_inserts(server)
        s.upsert(pts)  # ~100 KiB of SQL: a few INSERTs of many rows, not 600 single-row ones
        statements = _global_inserts(server) - before
        assert 2 <= statements <= 10, statements
        assert s.count() == 600
        assert s.text_hashes([p.id for p in pts]) == {p.id: p.text_hash for p in pts}
    finally:
        s.close()


def test_delete(server: MariaDBServer, sink: MySQLSink, table_name: str) -> None:
    pts = make_points(20)
    sink.upsert(pts)
    sink.delete([p.id for p in pts[:5]] + [str(uuid.uuid4())])  # unknown ids are ignored
    sink.delete([])
    assert sink.count() == 15
    assert set(raw_rows(server, table_name)) == {p.id for p in pts[5:]}
    sink.delete([p.id for p in pts[:5]])  # replaying a delete is harmless
    assert sink.count() == 15


def test_payload_json_edge_cases(sink: MySQLSink) -> None:
    p = make_points(1)[0]
    p.payload = {"price": decimal.Decimal("12.50"), "ratio": float("nan"), "nested": {"ö": [1, None]}}
    p.key = [decimal.Decimal("1.5"), "k"]
    p.id = point_id(p.table, p.key)
    sink.upsert([p])
    (stored,) = list(sink.iter_points())
    assert stored.payload == {"price": "12.50", "ratio": None, "nested": {"ö": [1, None]}}
    # A key read back still maps to the same point id (ids use the same str() fallback).
    assert point_id(stored.table, stored.key) == p.id


def test_invalid_vectors_are_rejected(sink: MySQLSink) -> None:
    p = make_points(1)[0]
    p.vector = np.ones(DIM + 1, np.float32)
    with pytest.raises(SinkError, match=f"has {DIM + 1} dimensions but the table stores {DIM}"):
        sink.upsert([p])
    p.vector = np.full(DIM, np.nan, np.float32)
    with pytest.raises(SinkError, match="NaN"):
        sink.upsert([p])
    assert sink.count() == 0


# ----------------------------------------------------------------------------- reads


def test_search_order_and_cosine_scores_match_numpy(sink: MySQLSink) -> None:
    pts = make_points(200, seed=1)
    sink.upsert(pts)  # scan_chunk_rows=16: the search streams 13 pages
    rng = np.random.default_rng(99)
    for _ in range(5):
        q = rng.normal(size=DIM).astype(np.float32) * 3
        expected = numpy_ranking(pts, q)[:10]
        hits = sink.search(q, 10)
        by_key = {p.key[0]: p for p in pts}
        got = [(by_key[h.key[0]].id, h.score) for h in hits]
        assert [g[0] for g in got] == [e[0] for e in expected]
        np.testing.assert_allclose([g[1] for g in got], [e[1] for e in expected], rtol=0, atol=1e-6)
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
        top = by_key[hits[0].key[0]]
        assert hits[0].table == top.table and hits[0].payload == top.payload


def test_filtered_search_is_restricted_to_one_source_table(sink: MySQLSink) -> None:
    pts = make_points(90, seed=2)
    sink.upsert(pts)
    q = np.random.default_rng(5).normal(size=DIM).astype(np.float32)
    notes = [p for p in pts if p.table == "public.notes"]
    hits = sink.search(q, 7, table="public.notes")
    assert {h.table for h in hits} == {"public.notes"}
    expected = numpy_ranking(notes, q)[:7]
    assert [point_id(h.table, h.key) for h in hits] == [e[0] for e in expected]
    np.testing.assert_allclose([h.score for h in hits], [e[1] for e in expected], atol=1e-6)
    assert sink.search(q, 5, table="public.nothing") == []


def _filter_points(n: int) -> list[VectorPoint]:
    """Points whose payloads hold numbers, strings, booleans, arrays, nulls and odd field names."""
    pts = make_points(n, seed=3)
    for p in pts:
        i = p.key[0]
        p.payload = {"year": 1900 + i, "author": ["ann", "bob", "cy"][i % 3], "ok": i % 2 == 0,
                     "tags": ["t%d" % (i % 4), "all"], "maybe": None if i % 5 else i,
                     'odd "name".x': i % 7, "price": i / 4}
    return pts


def test_payload_filters_run_in_sql_and_return_every_match_up_to_k(sink: MySQLSink) -> None:
    from actors.sinks.base import FieldFilter

    pts = _filter_points(200)
    sink.upsert(pts)
    q = np.random.default_rng(9).normal(size=DIM).astype(np.float32)
    by_id = {p.id: p for p in pts}

    def run(*filters: FieldFilter, k: int = 50, table: str | None = None) -> list[VectorPoint]:
        hits = sink.search(q, k, filters=filters, table=table)
        return [by_id[point_id(h.table, h.key)] for h in hits]

    def ranked(keep) -> list[str]:
        return [pid for pid, _ in numpy_ranking([p for p in pts if keep(p)], q)]

    # a range holding 7 of 200 rows: all 7 come back with k = 10 (not the 10 best, filtered after)
    got = run(FieldFilter("year", range=(("gte", 1950), ("lt", 1957))), k=10)
    assert [p.id for p in got] == ranked(lambda p: 1950 <= p.payload["year"] < 1957)
    assert len(got) == 7
    # equality on a string, "in", booleans (not 1/0), array membership, AND of several fields
    assert [p.id for p in run(FieldFilter("author", equals="bob"), k=100)] == ranked(lambda p: p.payload["author"] == "bob")
    assert {p.payload["author"] for p in run(FieldFilter("author", any_of=("ann", "cy")), k=200)} == {"ann", "cy"}
    assert len(run(FieldFilter("author", any_of=("ann", "cy")), k=200)) == len([i for i in range(200) if i % 3 != 1])
    assert all(p.payload["ok"] is True for p in run(FieldFilter("ok", equals=True), k=200))
    assert len(run(FieldFilter("ok", equals=True), k=200)) == 100
    assert len(run(FieldFilter("tags", equals="t1"), k=200)) == 50
    both = run(FieldFilter("author", equals="ann"), FieldFilter("year", range=(("lt", 1930),)), k=200)
    assert sorted(p.key[0] for p in both) == [i for i in range(30) if i % 3 == 0]
    # a float range, a field holding null for most rows, an odd name with quotes and a dot
    assert sorted(p.key[0] for p in run(FieldFilter("price", range=(("gt", 49.0),)), k=200)) == list(range(197, 200))
    assert sorted(p.key[0] for p in run(FieldFilter("maybe", range=(("gte", 0),)), k=200)) == list(range(0, 200, 5))
    assert len(run(FieldFilter('odd "name".x', equals=3), k=200)) == len([i for i in range(200) if i % 7 == 3])
    # a string never matches a number, nor a missing field anything; with the table condition too
    assert run(FieldFilter("year", equals="1950")) == []
    assert run(FieldFilter("nope", equals=1)) == []
    assert {p.table for p in run(FieldFilter("author", equals="cy"), table="public.notes", k=200)} == {"public.notes"}
    # an injection attempt through a field name and a value is data, not SQL
    assert run(FieldFilter("year') OR 1=1 -- ", equals="x' OR '1'='1")) == []
    assert sink.count() == 200


def test_score_threshold_and_modes(sink: MySQLSink) -> None:
    from actors.sinks.base import UnsupportedSearch

    pts = make_points(40, seed=4)
    sink.upsert(pts)
    q = pts[3].vector
    everything = sink.search(q, 40)
    cut = everything[10].score
    kept = sink.search(q, 40, score_threshold=cut)
    assert [h.key for h in kept] == [h.key for h in everything if h.score >= cut] and len(kept) >= 11
    with pytest.raises(UnsupportedSearch, match="mode 'hybrid'"):
        sink.search(q, 5, text="row", mode="hybrid")


def test_search_edge_cases(sink: MySQLSink) -> None:
    q = np.ones(DIM, np.float32)
    assert sink.search(q, 5) == []  # empty table
    pts = make_points(4)
    sink.upsert(pts)
    assert sink.search(q, 0) == []
    assert len(sink.search(q, 50)) == 4  # k larger than the table
    zero = VectorPoint(point_id("public.z", [0]), "public.z", [0], np.zeros(DIM, np.float32), "z", "h", {})
    sink.upsert([zero])
    (z,) = [h for h in sink.search(q, 10) if h.table == "public.z"]
    assert z.score == 0.0  # cosine with a zero vector is undefined; ranked neutral
    (same,) = sink.search(pts[1].vector, 1)
    assert same.key == pts[1].key and same.score == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(SinkError, match="query vector"):
        sink.search(np.ones(DIM + 2, np.float32), 3)


def test_a_reader_that_never_called_ensure_ready_can_search(server: MariaDBServer, sink: MySQLSink, table_name: str) -> None:
    # Search replicas open the sink without knowing the model dimension.
    pts = make_points(12)
    sink.upsert(pts)
    reader = MySQLSink(_config(server, table_name, dialect="auto"))
    try:
        q = pts[5].vector
        assert [h.key for h in reader.search(q, 3)] == [h.key for h in sink.search(q, 3)]
        assert reader.count() == 12
    finally:
        reader.close()


def test_iter_points(sink: MySQLSink) -> None:
    pts = make_points(37, seed=4)
    sink.upsert(pts)
    all_points = list(sink.iter_points())  # 37 rows over pages of 16
    assert sorted(p.id for p in all_points) == sorted(p.id for p in pts)
    assert all(p.vector is None for p in all_points)
    docs = list(sink.iter_points(table="public.docs", with_vectors=True))
    expected = {p.id: p for p in pts if p.table == "public.docs"}
    assert {p.id for p in docs} == set(expected)
    for p in docs:
        src = expected[p.id]
        assert (p.table, p.key, p.text, p.text_hash, p.payload) == (src.table, src.key, src.text, src.text_hash, src.payload)
        assert p.vector is not None and p.vector.dtype == np.float32
        assert np.array_equal(p.vector, src.vector)  # float32 round-trips exactly
    assert list(sink.iter_points(table="public.none")) == []


def test_state_get_set_is_durable_and_separate_from_points(server: MariaDBServer, sink: MySQLSink, table_name: str) -> None:
    assert sink.get_state("cursor") is None
    sink.set_state("cursor", {"lsn": "0/16B3748", "tables": ["public.docs"], "n": 3})
    sink.set_state("cursor", {"lsn": "0/16B3800", "n": 4})  # overwrite
    sink.set_state("other", {"x": None})
    assert sink.count() == 0  # state records are not points
    fresh = MySQLSink(_config(server, table_name))  # new connection, new process-equivalent
    try:
        assert fresh.get_state("cursor") == {"lsn": "0/16B3800", "n": 4}
        assert fresh.get_state("other") == {"x": None}
        fresh.set_state("other", None)
        fresh.set_state("never-set", None)  # removing a missing document is fine
    finally:
        fresh.close()
    assert sink.get_state("other") is None
    assert sink.get_state(INDEX_STATE_NAME) is None  # portable keeps no index bookkeeping


# ----------------------------------------------------------------------------- failures and retries


def test_write_blocked_by_a_lock_is_retried_and_lands(server: MariaDBServer, table_name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="actors.sinks.mysql")
    s = MySQLSink(_config(server, table_name), lock_wait_timeout_s=1, retry_deadline_s=60)
    s.ensure_ready(DIM)
    pts = make_points(3)
    s.upsert(pts)
    blocker = server.user_connection()
    blocker.begin()
    with blocker.cursor() as cur:
        cur.execute(f"SELECT `id` FROM `{table_name}` WHERE `id` = %s FOR UPDATE", (pts[0].id,))
    changed = VectorPoint(pts[0].id, pts[0].table, pts[0].key, pts[0].vector, "after lock", text_hash("after lock"), {})
    errors: list[BaseException] = []

    def write() -> None:
        try:
            s.upsert([changed, *make_points(2, seed=9, tables=("public.other",))])
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    t = threading.Thread(target=write)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not any("error 1205" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the sink never hit the lock"
            assert t.is_alive(), f"write finished while the lock was held: {errors}"
            time.sleep(0.05)  # poll for the retry warning, bounded by the deadline
    finally:
        blocker.rollback()
        blocker.close()
    t.join(timeout=30)
    assert not t.is_alive() and errors == []
    texts = {p.id: p.text for p in s.iter_points()}
    assert texts[pts[0].id] == "after lock" and len(texts) == 5
    s.close()


def test_write_after_the_connection_was_killed_reconnects(server: MariaDBServer, sink: MySQLSink) -> None:
    sink.upsert(make_points(3))
    with server.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s", (server.user,))
        ids = [r[0] for r in cur.fetchall()]
        assert ids
        for cid in ids:
            cur.execute("KILL CONNECTION %s", (cid,))
    sink.upsert(make_points(6, seed=1, tables=("public.more",)))
    assert sink.count() == 9


def test_retry_deadline_gives_up_with_a_clear_error(server: MariaDBServer, table_name: str) -> None:
    s = MySQLSink(_config(server, table_name), lock_wait_timeout_s=1, retry_deadline_s=2)
    s.ensure_ready(DIM)
    pts = make_points(1)
    s.upsert(pts)
    blocker = server.user_connection()
    blocker.begin()
    try:
        with blocker.cursor() as cur:
            cur.execute(f"SELECT `id` FROM `{table_name}` WHERE `id` = %s FOR UPDATE", (pts[0].id,))
        with pytest.raises(SinkError, match=r"gave up upserting 1 points .* nothing was acknowledged"):
            s.upsert(pts)
    finally:
        blocker.rollback()
        blocker.close()
    s.upsert(pts)  # the lock is gone: the same write now succeeds
    assert s.count() == 1
    s.close()


# ----------------------------------------------------------------------------- sizes a point cannot have
#
# What MariaDB 10.11 and pymysql do without the sink's checks (seen here): a statement over
# max_allowed_packet makes the server drop the connection (pymysql: 2006 "server has gone away",
# or 2013 then 1153 "Got a packet bigger than 'max_allowed_packet'"), which looks like an outage
# and was retried until the deadline; a value over a column (MEDIUMTEXT: 16 MiB) is error 1406
# "Data too long for column ... at row N" in strict mode, and is cut silently without it.


def _status(server: MariaDBServer, name: str) -> int:
    with server.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
        return int(cur.fetchone()[1])


def _packet(server: MariaDBServer) -> int:
    with server.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@global.max_allowed_packet")
        return int(cur.fetchone()[0])


def test_a_text_over_the_mediumtext_column_is_a_permanent_error_naming_the_column(sink: MySQLSink) -> None:
    fine = make_points(2)
    big = make_points(3, seed=4)[2]
    big.text = "é" * (MAX_TEXT_BYTES // 2 + 1)  # 8 Mi characters, 16 MiB + 1 byte in UTF-8
    started = time.monotonic()
    with pytest.raises(PointTooLarge) as info:
        sink.upsert(fine + [big])
    assert time.monotonic() - started < 5  # refused here, not retried
    err = info.value
    assert err.permanent and err.point_id == big.id and (err.size, err.limit) == (MAX_TEXT_BYTES + 1, MAX_TEXT_BYTES)
    assert "MEDIUMTEXT" in str(err) and "16,777,215" in str(err) and "\n" not in str(err)
    assert sink.count() == 0
    sink.upsert(fine)
    with pytest.raises(PointTooLarge):
        sink.update_payloads([VectorPoint(fine[0].id, fine[0].table, fine[0].key, None, big.text, "h", {})])
    assert {p.id: p.text for p in sink.iter_points()} == {p.id: p.text for p in fine}


def test_a_row_over_max_allowed_packet_is_a_permanent_error_measured_on_the_escaped_sql(
    server: MariaDBServer, sink: MySQLSink
) -> None:
    packet = _packet(server)
    p = make_points(1)[0]
    p.text = "'" * (packet // 2 + 1)  # fits the column, but every quote is sent escaped: twice the packet
    with pytest.raises(PointTooLarge) as info:
        sink.upsert([p])
    err = info.value
    assert err.point_id == p.id and err.limit < packet < err.size and "max_allowed_packet" in str(err)
    assert f"{packet:,}" in str(err) and "\n" not in str(err)
    sink.upsert(make_points(2))  # the connection is fine: nothing too large was sent
    assert sink.count() == 2


def test_a_row_just_under_max_allowed_packet_is_written(server: MariaDBServer, sink: MySQLSink) -> None:
    """The limit is the packet (less 1 KiB), not a fraction of it: a 15 MiB text fits a 16 MiB packet."""
    packet = _packet(server)
    p = make_points(1)[0]
    p.text = "x" * (packet - (4 << 10))
    sink.upsert([p])
    (got,) = sink.get_points([p.id]).values()
    assert len(got.text) == len(p.text)


def test_a_value_the_server_refuses_as_too_long_is_a_point_error_naming_the_point(
    server: MariaDBServer, sink: MySQLSink, table_name: str
) -> None:
    """A narrower text column (say TEXT, 64 KiB, altered by hand) passes the sink's own check;
    the server's error 1406 names the row, and the sink names its point."""
    with server.user_connection() as conn, conn.cursor() as cur:
        cur.execute(f"ALTER TABLE `{table_name}` MODIFY `text` TEXT NOT NULL")
    pts = make_points(4)
    pts[2].text = "x" * 70_000
    with pytest.raises(PointError) as info:
        sink.upsert(pts)
    assert info.value.permanent and info.value.point_id == pts[2].id
    assert "1406" in str(info.value) and pts[2].id in str(info.value) and "\n" not in str(info.value)
    assert sink.count() == 0
    sink.upsert(pts[:2])
    with pytest.raises(PointError) as info:
        sink.update_payloads([VectorPoint(pts[1].id, pts[1].table, pts[1].key, None, "y" * 70_000, "h", {})])
    assert info.value.point_id == pts[1].id


# ----------------------------------------------------------------------------- bulk deletes, generations


def test_delete_table_runs_in_chunks_of_bounded_transactions(server: MariaDBServer, table_name: str) -> None:
    s = MySQLSink(_config(server, table_name), delete_chunk_rows=100)
    s.ensure_ready(DIM)
    try:
        docs = make_points(350, tables=("public.docs",))
        notes = make_points(20, seed=1, tables=("public.notes",))
        s.upsert(docs + notes)
        deletes, commits = _status(server, "Com_delete"), _status(server, "Com_commit")
        assert s.delete_table("public.docs") == 350
        assert _status(server, "Com_delete") - deletes >= 4  # 100 + 100 + 100 + 50 rows
        assert _status(server, "Com_commit") - commits >= 4  # one transaction each
        assert {p.table for p in s.iter_points()} == {"public.notes"} and s.count() == 20
        for i, p in enumerate(notes):
            p.generation = 9 if i % 2 else 0
        s.upsert(notes)
        assert s.delete_table_except_generation("public.notes", 9) == 10
        assert {p.generation for p in s.iter_points()} == {9}
    finally:
        s.close()


def test_a_table_from_before_generations_gets_the_column_with_zero(server: MariaDBServer, table_name: str) -> None:
    s = MySQLSink(_config(server, table_name))
    s.ensure_ready(DIM)
    pts = make_points(4)
    s.upsert(pts)
    s.close()
    with server.user_connection() as conn, conn.cursor() as cur:
        cur.execute(f"ALTER TABLE `{table_name}` DROP COLUMN `generation`")  # as every table was before
    again = MySQLSink(_config(server, table_name))
    try:
        again.ensure_ready(DIM)
        assert {p.id: p.generation for p in again.iter_points()} == {p.id: 0 for p in pts}
        pts[0].generation = 3
        again.upsert(pts[:1])
        assert again.delete_table_except_generation("public.docs", 3) == 1  # pts[2]; pts[0] is the new generation
        assert sorted(p.id for p in again.iter_points()) == sorted(p.id for p in (pts[0], pts[1], pts[3]))
    finally:
        again.close()


# ----------------------------------------------------------------------------- the test server helper


def test_missing_server_binaries_name_the_install_command() -> None:
    from tests.support.mariadb import MariaDBUnavailable, find_binary

    with pytest.raises(MariaDBUnavailable, match="apt-get install -y mariadb-server-core mariadb-client-core"):
        find_binary("mariadbd-that-does-not-exist")


def test_private_server_stops_cleanly() -> None:
    import socket

    srv = MariaDBServer(database="scratch").start()
    base, port = srv.base_dir, srv.port
    assert srv.running and "scratch" in srv.dsn() and srv.password not in srv.dsn()
    with srv.user_connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == (f"{srv.user}@127.0.0.1", "scratch")
    srv.stop()
    assert not srv.running and not base.exists()
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(2)
        s.connect(("127.0.0.1", port))  # nothing listens any more
