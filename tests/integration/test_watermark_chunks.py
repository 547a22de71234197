"""The watermark premise of actors/watermark.py, on a real PostgreSQL: a chunk read between a low and
a high watermark (``pg_logical_emit_message``), while another transaction changes its rows, comes out
of the slot's pgoutput stream in a place where it agrees with the table."""

from __future__ import annotations

from typing import Any

import psycopg

from actors.changes import Change
from actors.pgoutput import Commit, LogicalMessage, PgOutputDecoder, RowChange
from actors.watermark import WATERMARK_PREFIX, ChunkWindows, new_chunk_id, parse_watermark, watermark_content

SLOT = "wm_test"


def _emit(conn: psycopg.Connection, kind: str, chunk: str) -> None:
    conn.execute("SELECT pg_logical_emit_message(true, %s, %s)", (WATERMARK_PREFIX, watermark_content(kind, chunk)))


def _stream(conn: psycopg.Connection) -> list[Any]:
    """Every pgoutput message the slot holds, decoded, in the order the stream sends them."""
    decoder = PgOutputDecoder()
    rows = conn.execute(
        "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
        "'publication_names', %s, 'messages', 'true')", (SLOT, SLOT)).fetchall()
    return [decoder.decode(bytes(r[0])) for r in rows]


def _key(event: RowChange) -> tuple[Any, ...]:
    return ((event.new or event.old or {})["id"],)


def test_a_chunk_between_watermarks_plus_the_stream_equals_the_table(books: str) -> None:
    with psycopg.connect(books, autocommit=True) as conn, psycopg.connect(books) as other:
        conn.execute(f"CREATE PUBLICATION {SLOT} FOR TABLE books")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
        ids = [r[0] for r in conn.execute("SELECT id FROM books ORDER BY id").fetchall()]
        windows, chunk = ChunkWindows(), new_chunk_id()
        windows.begin(chunk)
        _emit(conn, "low", chunk)
        # a transaction that commits after the chunk's snapshot and before the high watermark
        other.execute("UPDATE books SET description = 'changed while the chunk was read' WHERE id = %s", (ids[0],))
        other.execute("DELETE FROM books WHERE id = %s", (ids[1],))
        with conn.transaction():
            read = conn.execute("SELECT id, description FROM books WHERE id <= %s ORDER BY id", (ids[3],)).fetchall()
        other.commit()
        windows.rows_read(chunk, [Change("upsert", "public.books", (i,), d) for i, d in read])
        _emit(conn, "high", chunk)
        conn.execute("UPDATE books SET description = 'after the chunk' WHERE id = %s", (ids[2],))
        table = dict(conn.execute("SELECT id, description FROM books").fetchall())
        stream = _stream(conn)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))

    # the store as the writer builds it: rows the slot holds no change for (written before the
    # slot existed, outside this chunk) are what other chunks bring; apply in stream order
    index: dict[Any, str | None] = {i: d for i, d in table.items() if i > ids[3]}
    naive = dict(index)
    handed_out, order = None, []
    for event in stream:
        if isinstance(event, LogicalMessage):
            mark = parse_watermark(event.prefix, event.content)
            assert mark is not None and mark[1] == chunk
            order.append(mark[0])
            rows = windows.watermark(*mark)
            if mark[0] == "high":
                handed_out = rows
                assert rows is not None
                for c in rows:
                    index[c.key[0]] = c.text
                for i, d in read:  # what handing out every row read would do
                    naive[i] = d
        elif isinstance(event, RowChange):
            key = _key(event)
            windows.changed("public.books", key)
            order.append(event.kind)
            value = None if event.kind == "D" else event.new["description"]
            for store in (index, naive):
                store[key[0]] = value
        elif isinstance(event, Commit):
            continue
    # the other transaction's changes sit inside the window, the later update after it
    assert order == ["low", "U", "D", "high", "U"]
    assert handed_out is not None and [c.key for c in handed_out] == [(ids[2],), (ids[3],)]
    live = {i: d for i, d in index.items() if d is not None}
    assert live == table
    # without the window the chunk's stale copy of the updated row would win (and the deleted one return)
    assert {i: d for i, d in naive.items() if d is not None} != table
