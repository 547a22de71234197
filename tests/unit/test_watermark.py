"""actors/watermark.py: chunk windows between watermarks, and key ranges from a histogram."""

from __future__ import annotations

import pytest

from actors.changes import Change
from actors.watermark import (
    SIGNAL_PREFIX,
    WATERMARK_PREFIX,
    ChunkWindows,
    key_ranges,
    new_chunk_id,
    parse_signal,
    parse_watermark,
    signal_content,
    split_points,
    watermark_content,
)

T = "public.books"


def _rows(*keys: int, table: str = T) -> list[Change]:
    return [Change("upsert", table, (k,), f"book {k}", {"id": k}) for k in keys]


def test_rows_the_stream_did_not_touch_are_handed_out_at_the_high_watermark() -> None:
    w = ChunkWindows()
    c = new_chunk_id()
    w.begin(c)
    w.changed(T, (2,))  # before the low watermark: in the SELECT's snapshot and the stream alike
    assert w.watermark("low", c) == []
    w.rows_read(c, _rows(1, 2, 3, 4))
    w.changed(T, (3,))  # committed inside the window: the stream's value wins
    w.changed("public.other", (4,))  # another table's key 4 is another row
    out = w.watermark("high", c)
    assert [x.key for x in out] == [(1,), (2,), (4,)]
    assert len(w) == 0


def test_a_change_before_the_rows_arrive_still_counts() -> None:
    # the stream can show the low watermark and later changes before the chunk's SELECT returns
    w = ChunkWindows()
    c = new_chunk_id()
    w.begin(c)
    w.watermark("low", c)
    w.changed(T, (1,))
    w.rows_read(c, _rows(1, 2))
    assert [x.key for x in w.watermark("high", c)] == [(2,)]


def test_windows_of_parallel_chunks_each_drop_what_changed_inside_them() -> None:
    w = ChunkWindows()
    a, b = new_chunk_id(), new_chunk_id()
    w.begin(a)
    w.begin(b)
    w.watermark("low", a)
    w.changed(T, (10,))  # inside a only: b's low watermark comes later
    w.watermark("low", b)
    w.rows_read(a, _rows(1, 10))
    w.rows_read(b, _rows(10, 20))
    w.changed(T, (20,))
    assert [x.key for x in w.watermark("high", a)] == [(1,)]  # 10 changed inside a
    assert [x.key for x in w.watermark("high", b)] == [(10,)]


def test_a_truncate_inside_the_window_drops_the_tables_rows() -> None:
    w = ChunkWindows()
    c = new_chunk_id()
    w.begin(c)
    w.watermark("low", c)
    w.rows_read(c, _rows(1, 2) + _rows(1, table="public.other"))
    w.truncated(T)
    assert [(x.table, x.key) for x in w.watermark("high", c)] == [("public.other", (1,))]


def test_a_chunk_without_its_low_watermark_or_its_rows_is_read_again() -> None:
    w = ChunkWindows()
    c, d = new_chunk_id(), new_chunk_id()
    w.begin(c)
    w.rows_read(c, _rows(1))
    assert w.watermark("high", c) is None  # the stream restarted after the low watermark
    w.begin(d)
    w.watermark("low", d)
    assert w.watermark("high", d) is None  # the reader died before its SELECT returned
    assert len(w) == 0


def test_watermarks_of_another_run_change_nothing() -> None:
    w = ChunkWindows()
    c = new_chunk_id()
    w.begin(c)
    assert w.watermark("low", "an-old-run") == [] and w.watermark("high", "an-old-run") == []
    w.watermark("low", c)
    assert w.abandon() == [c] and len(w) == 0


def test_watermark_messages_round_trip_and_others_are_not_ours() -> None:
    c = new_chunk_id()
    assert parse_watermark(WATERMARK_PREFIX, watermark_content("high", c).encode()) == ("high", c)
    assert parse_watermark("someone.else", watermark_content("low", c).encode()) is None
    assert parse_watermark(WATERMARK_PREFIX, b"not json") is None
    assert parse_watermark(WATERMARK_PREFIX, b'{"kind": "middle", "chunk": "x"}') is None
    with pytest.raises(ValueError):
        watermark_content("middle", c)
    assert new_chunk_id() != new_chunk_id()


def test_split_points_cut_a_histogram_into_even_ranges() -> None:
    bounds = list(range(0, 1001, 10))  # 100 buckets of equal shares
    assert split_points(bounds, 4) == [250, 500, 750]
    assert split_points(bounds, 1) == [] and split_points([1, 2], 4) == []
    assert split_points([0, 5, 5, 5, 9], 4) == [5]  # repeated bounds give one cut, never an empty range
    assert key_ranges([250, 500]) == [(None, 250), (250, 500), (500, None)]
    assert key_ranges([]) == [(None, None)]
    # text forms in the server's order ("10" sorts after "9" there): only equality is used
    assert split_points([str(v) for v in bounds], 4) == ["250", "500", "750"]
    assert split_points(["a", "a", "a", "c"], 2) == []  # the middle bound equals the first: no cut


def test_a_backfill_request_is_for_one_slot_and_names_its_tables() -> None:
    content = signal_content("books_slot", ["public.books"]).encode()
    assert parse_signal(SIGNAL_PREFIX, content, "books_slot") == ["public.books"]
    assert parse_signal(SIGNAL_PREFIX, content, "other_slot") is None  # another pipeline's request
    assert parse_signal(WATERMARK_PREFIX, content, "books_slot") is None
    assert parse_signal(SIGNAL_PREFIX, b'{"slot": "books_slot", "backfill": "public.books"}', "books_slot") is None
    assert parse_signal(SIGNAL_PREFIX, b"{", "books_slot") is None
    assert parse_signal(SIGNAL_PREFIX, signal_content("s", []).encode(), "s") == []  # [] = every table
