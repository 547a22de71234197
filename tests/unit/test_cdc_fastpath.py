"""actors/cdc_reader.py: the per-change hot path, against hand-built pgoutput messages (no server).

``_copy_message`` decodes an insert or update with a complete new tuple straight from
the CopyData bytes (``_upsert``); everything else goes through ``_row_change``.  Both
must give the same changes and leave the same state behind.
"""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import actors.cdc_reader as cdc_reader
from actors.cdc_reader import PgChangeSource
from actors.changes import Change
from actors.pgoutput import UNCHANGED_TOAST, ProtocolError, RowChange
from actors.source_config import SourceConfig, TableConfig
from actors.source_schema import TableSpec
from benchmarks.bench_cdc import ReplayConn, ReplayPgConn
from tests.unit.test_pgoutput import TEXT, begin, commit, delete, insert, relation, update

INT4 = 23
RELID = 16384
BOOKS = "public.books"
COLUMNS = [(1, "id", INT4, -1), (0, "name", TEXT, -1), (0, "description", TEXT, -1), (0, "year", INT4, -1)]
REPO = Path(__file__).resolve().parents[2]


def _spec() -> TableSpec:
    config = TableConfig(name=BOOKS, text="{name}: {description}", payload=["name", "year"])
    return TableSpec(config, ["id"], {"id": INT4, "name": TEXT, "description": TEXT, "year": INT4},
                     ["id", "name", "description", "year"], oid=RELID)


def _source() -> PgChangeSource:
    source = PgChangeSource(SourceConfig(dsn="postgresql://u@127.0.0.1:1/db", slot="s"), {BOOKS: _spec()})
    # the side connection: a Relation message that fits the spec is checked without a query
    source._side = object()  # type: ignore[assignment]
    return source


def wal(payload: bytes, start: int = 0x100) -> bytes:
    """An XLogData CopyData message: 'w', WAL start, WAL end, send time, the pgoutput message."""
    return b"w" + struct.pack(">QQq", start, start + 0x10, 0) + payload


def keepalive(wal_end: int, reply: bool = False) -> bytes:
    return b"k" + struct.pack(">Qqb", wal_end, 0, 1 if reply else 0)


STREAM = [
    relation(RELID, "public", "books", "d", COLUMNS),
    begin(0x1000, 1, 501),
    insert(RELID, [1, "Dune", "Sand.", 1965]),
    insert(RELID, [2, "Emma", "Manners.", 1815]),
    commit(0x1000, 0x1010, 2),
    begin(0x2000, 3, 502),
    update(RELID, [1, "Dune", "Sand.", 1966]),  # payload only: text unchanged
    update(RELID, [2, "Emma", "Matchmaking.", 1815]),  # text changed
    update(RELID, [3, "Dune", "Sand.", 1966], old=[1, None, None, None]),  # key changed: delete + upsert
    delete(RELID, [2, None, None, None]),
    insert(RELID, [2, "Emma", "Manners.", 1815]),  # same text as before the delete: not "unchanged"
    update(RELID, [2, "Emma", "Manners.", 1815]),  # now it is
    insert(RELID, [4, None, "No name.", None]),
    commit(0x2000, 0x2010, 4),
    begin(0x3000, 5, 503),
    update(RELID, [3, "Dune", UNCHANGED_TOAST, 1967]),  # TOAST: waits for a fetch (general path)
    update(RELID, [4, "Four", "No name.", 1]),  # after a deferred change: general path too
    commit(0x3000, 0x3010, 6),
]


def _fields(changes: list[Change]) -> list[tuple[Any, ...]]:
    return [(c.op, c.table, c.key, c.text, c.payload, c.lsn, c.text_unchanged) for c in changes]


def _run(source: PgChangeSource, messages: list[bytes]) -> list[Change]:
    out: list[Change] = []
    for i, m in enumerate(messages):
        source._copy_message(wal(m, 0x100 + i), out)
    return out


def _general_only(source: PgChangeSource) -> PgChangeSource:
    """The same reader with the hot path routed through the general one."""
    def upsert(kind: str, rel: Any, row: dict[str, Any], out: list[Change]) -> None:
        source._row_change(RowChange(kind, rel, row, None), out)

    source._upsert = upsert  # type: ignore[method-assign]
    return source


@pytest.mark.parametrize("fingerprint", ["hash", "digest"])
def test_hot_path_gives_what_the_general_path_gives(monkeypatch, fingerprint):
    if fingerprint == "digest":  # the fingerprint used when PYTHONHASHSEED is set
        monkeypatch.setattr(cdc_reader, "_fingerprint", cdc_reader._digest)
    fast, slow = _source(), _general_only(_source())
    got, want = _run(fast, STREAM), _run(slow, STREAM)
    assert _fields(got) == _fields(want)
    assert fast._emitted == slow._emitted
    assert list(fast._emitted) == list(slow._emitted)  # the same recency order
    assert [d[3:] for d in fast._deferred] == [d[3:] for d in slow._deferred]
    assert (fast._safe_lsn, fast._received_lsn, fast._in_txn) == (slow._safe_lsn, slow._received_lsn, slow._in_txn)
    assert _fields(got) == [
        ("upsert", BOOKS, (1,), "Dune: Sand.", {"name": "Dune", "year": 1965}, 0x1000, False),
        ("upsert", BOOKS, (2,), "Emma: Manners.", {"name": "Emma", "year": 1815}, 0x1000, False),
        ("upsert", BOOKS, (1,), "Dune: Sand.", {"name": "Dune", "year": 1966}, 0x2000, True),
        ("upsert", BOOKS, (2,), "Emma: Matchmaking.", {"name": "Emma", "year": 1815}, 0x2000, False),
        ("delete", BOOKS, (1,), None, None, 0x2000, False),
        ("upsert", BOOKS, (3,), "Dune: Sand.", {"name": "Dune", "year": 1966}, 0x2000, False),
        ("delete", BOOKS, (2,), None, None, 0x2000, False),
        ("upsert", BOOKS, (2,), "Emma: Manners.", {"name": "Emma", "year": 1815}, 0x2000, False),
        ("upsert", BOOKS, (2,), "Emma: Manners.", {"name": "Emma", "year": 1815}, 0x2000, True),
        ("upsert", BOOKS, (4,), ": No name.", {"name": None, "year": None}, 0x2000, False),
        ("upsert", BOOKS, (3,), None, None, 0x3000, False),  # rendered once its TOAST value is fetched
        ("upsert", BOOKS, (4,), "Four: No name.", {"name": "Four", "year": 1}, 0x3000, False),
    ]
    assert fast._safe_lsn == 0x3010 and not fast._in_txn


def test_hot_path_ignores_tables_not_followed():
    source = _source()
    other = relation(777, "public", "other", "d", COLUMNS)
    assert _run(source, [other, begin(1, 1, 1), insert(777, [1, "a", "b", 2]), commit(1, 2, 3)]) == []
    assert source._safe_lsn == 2


def test_positions_from_the_envelope_and_keepalives():
    source = _source()
    out: list[Change] = []
    source._copy_message(wal(relation(RELID, "public", "books", "d", COLUMNS), 0x50), out)
    source._copy_message(wal(begin(0x900, 1, 1), 0x60), out)
    source._copy_message(memoryview(wal(insert(RELID, [1, "a", "b", 2]), 0x70)), out)  # as psycopg hands it
    assert source._received_lsn == 0x70 and len(out) == 1
    source._copy_message(keepalive(0x80), out)  # inside a transaction: not a safe position
    assert source._received_lsn == 0x80 and source._safe_lsn == 0
    source._copy_message(wal(insert(RELID, [2, "a", "b", 2]), 0x40), out)  # an older start never moves it back
    assert source._received_lsn == 0x80
    source._copy_message(wal(commit(0x900, 0x910, 1), 0x90), out)
    assert source._safe_lsn == 0x910
    source._copy_message(keepalive(0x2000), out)  # between transactions: everything up to it is handed out
    assert source._safe_lsn == 0x2000 and source._received_lsn == 0x2000


@pytest.mark.parametrize(
    "data", [b"w" + b"\0" * 24, wal(insert(RELID, [1, "a", "b", 2]))[:-3], wal(b"I" + b"\0" * 3), b"x" * 30],
    ids=["empty-xlogdata", "truncated-row", "truncated-header", "unknown"],
)
def test_malformed_messages_raise_protocol_error(data):
    source = _source()
    source._copy_message(wal(relation(RELID, "public", "books", "d", COLUMNS)), [])
    with pytest.raises(ProtocolError):
        source._copy_message(data, [])


def test_an_insert_without_its_key_is_a_clear_error():
    source = _source()
    with pytest.raises(cdc_reader.SchemaChanged, match="an insert of public.books arrived without the value"):
        _run(source, [relation(RELID, "public", "books", "d", COLUMNS), begin(1, 1, 1),
                      insert(RELID, [None, "a", "b", 1])])


# -- the garbage collector is paused while a batch is decoded, not while waiting ------------------


class _FakePg(ReplayPgConn):
    """The benchmark's replayed replication connection (``messages`` in its buffer, then
    nothing), recording whether the collector ran at each read."""

    def __init__(self, messages: list[bytes], sock: int) -> None:
        super().__init__(messages, sock)
        self.gc_at_reads: list[bool] = []

    def get_copy_data(self, async_: int) -> tuple[int, Any]:
        self.gc_at_reads.append(gc.isenabled())
        return super().get_copy_data(async_)


@pytest.fixture
def pipe_fd():
    rfd, wfd = os.pipe()  # nobody writes: never readable
    yield rfd
    os.close(rfd)
    os.close(wfd)


def _streaming(source: PgChangeSource, messages: list[bytes], sock: int) -> _FakePg:
    pg = _FakePg(messages, sock)
    source._repl, source._streaming = ReplayConn(pg), True  # type: ignore[assignment]
    return pg


@pytest.fixture(params=[True, False], ids=["gc-on", "gc-off"])
def enabled_before(request):
    was = gc.isenabled()
    (gc.enable if request.param else gc.disable)()
    yield request.param
    (gc.enable if was else gc.disable)()


def test_collector_paused_while_decoding_and_restored(pipe_fd, enabled_before):
    source = _source()
    pg = _streaming(source, [wal(m) for m in STREAM[:5]], pipe_fd)
    out: list[Change] = []
    with source._lock:
        source._stream_into(out, 100, deadline=0)
    assert gc.isenabled() is enabled_before  # restored, whatever it was
    assert [c.key for c in out] == [(1,), (2,)]
    assert set(pg.gc_at_reads) == {False}  # decoding: paused (or off already)
    assert source._gc_paused is False


def test_collector_runs_while_the_reader_waits(monkeypatch, pipe_fd, enabled_before):
    source = _source()
    _streaming(source, [], pipe_fd)
    blocking: list[bool] = []
    real_select = cdc_reader.select.select

    def select(r: Any, w: Any, x: Any, timeout: float) -> Any:
        if timeout > 0:
            blocking.append(gc.isenabled())
        return real_select(r, w, x, 0)

    monkeypatch.setattr(cdc_reader.select, "select", select)
    with source._lock:
        source._stream_into([], 100, deadline=cdc_reader.time.monotonic() + 0.05)
    assert blocking and set(blocking) == {enabled_before}  # as it was before the read: not paused
    assert gc.isenabled() is enabled_before


def test_collector_restored_when_decoding_fails(pipe_fd):
    source = _source()
    pg = _FakePg([wal(relation(RELID, "public", "books", "d", COLUMNS)), b"x" * 30], pipe_fd)
    source._repl, source._streaming = ReplayConn(pg), True  # type: ignore[assignment]
    assert gc.isenabled()
    with pytest.raises(ProtocolError), source._lock:
        source._stream_into([], 100, deadline=0)
    assert gc.isenabled() and source._gc_paused is False


@pytest.mark.parametrize(("env", "expected"), [({}, "hash"), ({"PYTHONHASHSEED": "random"}, "hash"),
                                               ({"PYTHONHASHSEED": "0"}, "_digest"),
                                               ({"PYTHONHASHSEED": "123"}, "_digest")])
def test_text_fingerprint_is_a_digest_when_the_hash_key_is_known(env, expected):
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"} | env
    code = "import actors.cdc_reader as r; print(r._fingerprint.__name__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environ, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == expected
