"""actors/cdc_reader.py against a real PostgreSQL slot (no Ray): what may be confirmed after a restart."""

from __future__ import annotations

import time

import psycopg

from actors.cdc_reader import PgChangeSource
from actors.changes import ChangeBatch, parse_lsn
from actors.source_schema import inspect_source
from cluster.config import config_from_dict
from tests.support.harness import current_lsn


def _source(dsn: str) -> PgChangeSource:
    config = config_from_dict(
        {
            "source": {"dsn": dsn, "slot": "restart_test", "publication": "restart_test"},
            "tables": [{"name": "public.books", "text": "{description}", "payload": ["name"]}],
        },
        origin="test",
        environ={},
    )
    return PgChangeSource(config.source, inspect_source(config.source, config.tables))


def _read_until(source: PgChangeSource, keys_wanted: int, max_changes: int, timeout: float = 30) -> list[ChangeBatch]:
    batches: list[ChangeBatch] = []
    deadline = time.monotonic() + timeout
    while sum(len(b) for b in batches) < keys_wanted:
        assert time.monotonic() < deadline, f"only {sum(len(b) for b in batches)} of {keys_wanted} changes arrived"
        batch = source.read_batch(max_changes, 0.5)
        if batch.changes:
            batches.append(batch)
    return batches


def test_a_restart_does_not_confirm_what_it_has_not_read_again(books: str) -> None:
    """Guarantee 1 across two failures in a row.

    Changes handed out but never written are read again after a restart.  The
    first batch of the new stream must not carry the old stream's safe position:
    once written and confirmed it would skip the changes not re-read yet, and a
    second failure would restart past them.
    """
    source = _source(books)
    source.start(backfill=True)
    while not source.read_batch(1000, 0.5).snapshot_complete:
        pass
    with psycopg.connect(books, autocommit=True) as conn:
        ids = []
        after = []
        for title in ("first", "second", "third"):
            ids.append(conn.execute(
                "INSERT INTO books (name, description) VALUES (%s, %s) RETURNING id", (title, f"{title} book")
            ).fetchone()[0])
            after.append(current_lsn(books))
    # First attempt: all three transactions handed out, nothing written or confirmed.
    first_attempt = _read_until(source, 3, max_changes=100)
    assert first_attempt[-1].ack_lsn is not None and first_attempt[-1].ack_lsn >= after[0]
    source.close()

    source.start(backfill=False)  # what the coordinator does after a failure
    replay = source.read_batch(1, 5.0)
    assert [c.key for c in replay.changes] == [(ids[0],)]
    assert replay.ack_lsn is None or replay.ack_lsn <= after[0], (
        f"the first replayed batch would confirm {replay.ack_lsn}, past its own change (<= {after[0]})"
    )
    rest = _read_until(source, 2, max_changes=100)
    assert [c.key for b in rest for c in b.changes] == [(ids[1],), (ids[2],)]
    assert rest[-1].ack_lsn is not None and rest[-1].ack_lsn >= after[1]
    source.ack(rest[-1].ack_lsn)
    source.close()


def test_a_batch_carries_the_commit_of_its_last_transaction(books: str) -> None:
    """A small transaction arrives as several messages (BEGIN, rows, COMMIT).
    A batch cut between its last row and its COMMIT could not confirm that
    commit when written: the slot (and anyone waiting on it) then lagged
    behind the written data until the next idle read.  Every batch handed
    out at light load must end on a commit."""
    source = _source(books)
    source.start(backfill=True)
    while not source.read_batch(1000, 0.5).snapshot_complete:
        pass
    try:
        with psycopg.connect(books, autocommit=True) as conn:
            for i in range(60):
                # the WAL position after the row's insert record, before its commit record
                inserted_at = parse_lsn(conn.execute(
                    "INSERT INTO books (name, description) VALUES (%s, 'x') RETURNING pg_current_wal_insert_lsn()::text",
                    (f"row {i}",),
                ).fetchone()[0])
                batch = _read_until(source, 1, max_changes=100)[0]
                assert [c.payload["name"] for c in batch.changes] == [f"row {i}"]
                assert batch.ack_lsn is not None and batch.ack_lsn > inserted_at, (
                    f"transaction {i}: the batch with its row stops before its commit"
                )
    finally:
        source.close()


def test_an_ack_is_sent_while_a_read_waits(books: str) -> None:
    """The actor runs ``ack`` beside an idle ``read_batch`` (its control group): the ack must
    reach the slot at once, not when the read's timeout ends (it used to wait ~0.2 s behind
    every idle read in the pipeline)."""
    import threading

    from tests.support.harness import confirmed_lsn

    source = _source(books)
    source.start(backfill=True)
    while not source.read_batch(1000, 0.5).snapshot_complete:
        pass
    try:
        with psycopg.connect(books, autocommit=True) as conn:
            conn.execute("INSERT INTO books (name, description) VALUES ('acked', 'while reading')")
        batch = _read_until(source, 1, max_changes=100)[0]
        assert batch.ack_lsn and confirmed_lsn(books, "restart_test") < batch.ack_lsn
        seq = source._seq
        reader = threading.Thread(target=source.read_batch, args=(100, 3.0))
        reader.start()
        try:
            # the read has begun (and waits up to 3 s on the idle socket)
            deadline = time.monotonic() + 5
            while source._seq == seq:
                assert time.monotonic() < deadline
                time.sleep(0.001)
            acked_at = time.monotonic()
            source.ack(batch.ack_lsn)
            while confirmed_lsn(books, "restart_test") < batch.ack_lsn:
                assert time.monotonic() - acked_at < 1.0, "the ack waited for the read"
                time.sleep(0.005)
            took = time.monotonic() - acked_at
            assert reader.is_alive(), "the read ended before the ack was checked"
            assert took < 0.2, f"the slot confirmed {took * 1000:.0f} ms after the ack"
        finally:
            reader.join(10)
    finally:
        source.close()
