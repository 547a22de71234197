"""The chunked backfill (actors/backfill.py) on a real slot, without Ray: rows read in key chunks
by parallel connections while other sessions write, reconciled with the stream by watermarks,
and resumed from a stored plan."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg

from actors.cdc_reader import PgChangeSource
from actors.changes import ChangeBatch
from actors.source_schema import inspect_source
from cluster.config import config_from_dict
from tests.support.harness import current_lsn, wait_for

SLOT = "chunks_test"


def _source(dsn: str, readers: int, chunk: int) -> PgChangeSource:
    config = config_from_dict(
        {
            "source": {"dsn": dsn, "slot": SLOT, "publication": SLOT, "backfill_chunk": chunk,
                       "backfill_readers": readers},
            "tables": [{"name": "public.items", "text": "{body}", "payload": ["n"]}],
        },
        origin="test",
        environ={},
    )
    return PgChangeSource(config.source, inspect_source(config.source, config.tables))


def _make_table(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, n int NOT NULL, body text NOT NULL)")
        conn.execute("INSERT INTO items SELECT g, 0, 'row ' || g FROM generate_series(1, %s) g", (rows,))
        conn.execute("ANALYZE items")  # the key ranges are cut from its histogram


def _apply(index: dict[Any, str], batch: ChangeBatch) -> None:
    """What the writer does with a batch, on a dict: the last change per key wins, in order."""
    for c in batch.changes:
        if c.op == "truncate":
            index.clear()
        elif c.op == "delete":
            index.pop(c.key, None)
        else:
            index[c.key] = c.text or ""


def _table(dsn: str) -> dict[Any, str]:
    with psycopg.connect(dsn) as conn:
        return {(i,): b for i, b in conn.execute("SELECT id, body FROM items").fetchall()}


def _churn(dsn: str, rows: int, stop: threading.Event, done: list[int]) -> None:
    """Updates, deletes and inserts all over the key space until ``stop``, in small transactions.

    Each key is updated at most once (a random order of them all): a chunk row handed out over
    a newer change would stay wrong, nothing later mends it.
    """
    order = list(range(1, rows + 1))
    random.Random(7).shuffle(order)
    with psycopg.connect(dsn, autocommit=True, application_name="churn") as conn:
        i = 0
        while not stop.is_set() and (i + 1) * 8 <= rows:
            keys = order[i * 8:(i + 1) * 8]
            i += 1
            with conn.transaction():
                conn.execute("UPDATE items SET body = %s, n = n + 1 WHERE id = ANY(%s)", (f"changed {i}", keys[:6]))
                conn.execute("DELETE FROM items WHERE id = ANY(%s)", (keys[6:],))
                conn.execute("INSERT INTO items VALUES (%s, 0, %s)", (rows + i, f"new {i}"))
            done[0] = i


def _idle_in_transaction(dsn: str) -> list[Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, backend_type, now() - xact_start FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction' AND application_name <> 'churn'").fetchall()


def test_chunks_read_while_others_write_converge_to_the_table(dsn: str) -> None:
    rows = 12_000
    _make_table(dsn, rows)

    stop, done = threading.Event(), [0]
    churn = threading.Thread(target=_churn, args=(dsn, rows, stop, done))
    churn.start()
    wait_for(lambda: done[0] >= 5, 30, "the churn to start")
    source = _source(dsn, readers=2, chunk=200)
    info = source.start(backfill=True)
    churned_before = done[0]
    assert abs(info["backfill_total"]["rows"] - rows) <= rows // 20  # counted while the churn deletes
    ranges = info["plan"]["tables"]["public.items"]
    assert len(ranges) == 2 and ranges[0]["up_to"] is not None  # cut from the histogram
    assert ranges[1]["up_to"] is not None  # up to the largest key at the start: inserts come by the stream
    index: dict[Any, str] = {}
    plans, chunk_rows, held = [], 0, []
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline, "the backfill did not complete"
            batch = source.read_batch(256, 0.5)
            _apply(index, batch)
            chunk_rows += batch.backfill_rows
            if batch.backfill is not None:
                plans.append(batch.backfill)
            # no session holds a snapshot open across chunks (a snapshot backfill does: its
            # transaction sits idle between chunks for the whole backfill)
            held += _idle_in_transaction(dsn)
            if batch.snapshot_complete:
                churned_during = done[0] - churned_before
                break
    finally:
        stop.set()
        churn.join(30)
    assert churned_during >= 20, f"only {churned_during} transactions of churn during the backfill"
    assert held == []
    # checkpoints all along (a batch that ends several chunks carries the plan once)
    assert len(plans) >= 10 and plans[-1]["rows"] == chunk_rows
    assert all(r["done"] for r in plans[-1]["tables"]["public.items"])
    # the rest of the stream (the churn's last transactions), then the table and the index agree
    target = current_lsn(dsn)
    deadline = time.monotonic() + 60
    while True:
        batch = source.read_batch(1000, 0.5)
        _apply(index, batch)
        if batch.ack_lsn and batch.ack_lsn >= target and not batch.changes:
            break
        assert time.monotonic() < deadline, "the stream did not catch up"
    source.close()
    table = _table(dsn)
    wrong = {k for k in set(table) | set(index) if table.get(k) != index.get(k)}
    assert not wrong, f"{len(wrong)} keys differ, e.g. {sorted(wrong)[:5]}: table {[table.get(k) for k in sorted(wrong)[:5]]} " \
                      f"index {[index.get(k) for k in sorted(wrong)[:5]]}"


def test_a_stopped_backfill_resumes_at_its_last_stored_chunk(dsn: str) -> None:
    rows, chunk = 5000, 250
    _make_table(dsn, rows)
    source = _source(dsn, readers=1, chunk=chunk)
    source.start(backfill=True)
    index: dict[Any, str] = {}
    stored: dict[str, Any] | None = None  # the plan of the last batch "written"
    deadline = time.monotonic() + 60
    while stored is None or stored["rows"] < rows * 0.6:
        assert time.monotonic() < deadline
        batch = source.read_batch(100, 0.5)
        assert not batch.snapshot_complete
        _apply(index, batch)
        stored = batch.backfill or stored
    # a batch read but never written (the crash came first), then the crash
    source.read_batch(100, 0.5)
    source.close()
    first_run = stored["rows"]

    source = _source(dsn, readers=1, chunk=chunk)
    source.start(backfill=False, plan=stored)
    second_run = 0
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline
        batch = source.read_batch(500, 0.5)
        _apply(index, batch)
        second_run += batch.backfill_rows
        if batch.snapshot_complete:
            break
    source.close()
    # the second run read only what the stored plan did not claim: nothing before its cursor
    assert first_run + second_run == rows, (first_run, second_run)
    assert index == _table(dsn)
