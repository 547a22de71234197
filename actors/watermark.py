"""A backfill read in chunks while the stream runs, reconciled with it by watermarks.

The approach of Netflix's DBLog and Debezium's incremental snapshots, on PostgreSQL's logical
decoding messages.  A chunk (a primary-key range of one table) is read between two watermarks
that its reader writes into the WAL, each in a transaction of its own::

    SELECT pg_logical_emit_message(true, 'embedcluster.watermark', '{"kind": "low", ...}')
    SELECT <the chunk's rows>                      -- a short transaction of its own
    SELECT pg_logical_emit_message(true, 'embedcluster.watermark', '{"kind": "high", ...}')

The stream then carries, in commit order: the low watermark, the row changes committed while
the chunk was read, the high watermark.  Between the two, :class:`ChunkWindows` drops from the
chunk every key that the stream changes: that change is at least as new as what the SELECT
read, and it is applied in its own place in commit order.  At the high watermark the rows left
are handed out, as if they had been written there.  They are right at that place:

* a transaction committed before the low watermark is in the SELECT's snapshot (taken after
  the low watermark's commit) and in the stream before the window: both agree;
* one committed after the SELECT's snapshot was taken commits before the high watermark (the
  high watermark is written after the SELECT ends), so it is in the window: its keys are
  dropped, and the stream brings their new values;
* one committed between the low watermark and the snapshot is in both: dropped all the same,
  the stream's copy is as new.

So no snapshot transaction stays open for the whole backfill (the source's vacuum is held back
by one chunk's SELECT at most), chunks can be read by several connections at once, each with
windows of its own, and a finished chunk is a checkpoint: a backfill stopped midway resumes
at the first chunk not finished.  A window whose low watermark the stream never showed (the
stream restarted after it) cannot tell which keys changed: its chunk is read again.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from actors.changes import Change

#: the prefix of every watermark message (``pg_logical_emit_message``); others are not ours
WATERMARK_PREFIX = "embedcluster.watermark"
#: the prefix of a request written into the WAL for the pipeline of one slot (``embedcluster
#: backfill``): it acts where the stream reaches it, whether the pipeline runs now or later
SIGNAL_PREFIX = "embedcluster.signal"


def signal_content(slot: str, backfill: Sequence[str]) -> str:
    """A request that the pipeline of ``slot`` backfill the tables ``backfill`` again."""
    return json.dumps({"slot": slot, "backfill": list(backfill), "id": uuid.uuid4().hex}, separators=(",", ":"))


def parse_signal(prefix: str, content: bytes, slot: str) -> list[str] | None:
    """The tables a signal for ``slot`` asks to backfill; None for anything else (another slot's)."""
    if prefix != SIGNAL_PREFIX:
        return None
    try:
        data = json.loads(content)
        tables = data["backfill"]
    except (ValueError, KeyError, TypeError):
        return None
    if data.get("slot") != slot or not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        return None
    return tables


def new_chunk_id() -> str:
    """An id no earlier run used: watermarks of a run that stopped midway are not taken for this one's."""
    return uuid.uuid4().hex


def watermark_content(kind: str, chunk_id: str) -> str:
    """The message text of a ``low`` or ``high`` watermark of ``chunk_id``."""
    if kind not in ("low", "high"):
        raise ValueError(f"a watermark is 'low' or 'high', not {kind!r}")
    return json.dumps({"kind": kind, "chunk": chunk_id}, separators=(",", ":"))


def parse_watermark(prefix: str, content: bytes) -> tuple[str, str] | None:
    """``(kind, chunk id)`` of one of our watermarks; None for any other logical message."""
    if prefix != WATERMARK_PREFIX:
        return None
    try:
        data = json.loads(content)
        kind, chunk = data["kind"], data["chunk"]
    except (ValueError, KeyError, TypeError):
        return None
    if kind not in ("low", "high") or not isinstance(chunk, str):
        return None
    return kind, chunk


@dataclass
class _Window:
    low_seen: bool = False
    rows: list[Change] | None = None
    changed: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    truncated: set[str] = field(default_factory=set)


class ChunkWindows:
    """The chunks being read, and what the stream changes while each one's window is open.

    The stream's reader calls :meth:`watermark` for each of our logical messages,
    :meth:`changed` for every row change and :meth:`truncated` for every TRUNCATE it hands
    out; a chunk's reader calls :meth:`begin` before it writes the low watermark and
    :meth:`rows_read` once its SELECT has returned.  Not thread-safe: the caller serialises.
    """

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def begin(self, chunk_id: str) -> None:
        """A chunk is about to be read: its watermarks will follow in the stream."""
        self._windows[chunk_id] = _Window()

    def rows_read(self, chunk_id: str, rows: Sequence[Change]) -> None:
        """The chunk's SELECT returned ``rows`` (upserts with their table and key)."""
        window = self._windows.get(chunk_id)
        if window is not None:
            window.rows = list(rows)

    def changed(self, table: str, key: tuple[Any, ...]) -> None:
        """The stream hands out a change of ``key``: it wins over every open window's copy."""
        for window in self._windows.values():
            if window.low_seen:
                window.changed.add((table, key))

    def truncated(self, table: str) -> None:
        """The stream hands out a TRUNCATE of ``table``: no open window's rows of it survive."""
        for window in self._windows.values():
            if window.low_seen:
                window.truncated.add(table)

    def watermark(self, kind: str, chunk_id: str) -> list[Change] | None:
        """At a low watermark, open the chunk's window (returns ``[]``).  At a high one, close it
        and return the chunk's rows that the stream did not change meanwhile, to hand out right
        there; None when the chunk must be read again (this stream never showed its low
        watermark, or its rows never arrived).  A watermark of a chunk this object does not know
        (another run's) returns ``[]`` and changes nothing."""
        window = self._windows.get(chunk_id)
        if window is None:
            return []
        if kind == "low":
            window.low_seen = True
            return []
        del self._windows[chunk_id]
        if not window.low_seen or window.rows is None:
            return None
        return [c for c in window.rows
                if c.table not in window.truncated and (c.table, c.key) not in window.changed]

    def abandon(self) -> list[str]:
        """Forget every open window (the stream restarts); returns their chunk ids, to read again."""
        ids = list(self._windows)
        self._windows.clear()
        return ids


def split_points(histogram: Sequence[Any], parts: int) -> list[Any]:
    """At most ``parts - 1`` distinct values that cut a key column into ``parts`` ranges of
    about as many rows each, from the column's histogram (``pg_stats.histogram_bounds``: bounds
    of buckets holding equal shares of the rows, in the column's own order).  Empty when there
    is nothing to cut by.  Values are only compared for equality: their order is the server's
    (a text column's collation, say), which Python need not share."""
    bounds = list(histogram)
    if parts <= 1 or len(bounds) < 3:
        return []
    buckets = len(bounds) - 1
    cuts: list[Any] = []
    for i in range(1, parts):
        index = round(i * buckets / parts)
        if not 1 <= index < buckets:
            continue
        value = bounds[index]
        if (not cuts or value != cuts[-1]) and value != bounds[0] and value != bounds[-1]:
            cuts.append(value)
    return cuts


def key_ranges(cuts: Sequence[Any]) -> list[tuple[Any, Any]]:
    """``(after, up_to)`` bounds on the first key column for the ranges ``cuts`` make (None: open):
    ``[(None, c1), (c1, c2), ..., (cn, None)]``, each ``after < value <= up_to``."""
    edges: list[Any] = [None, *cuts, None]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
