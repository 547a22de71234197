"""Decoder for PostgreSQL's built-in ``pgoutput`` logical replication protocol.

Pure functions over bytes: no connection, no Ray, so the unit tests feed it
hand-built messages.  Only protocol version 1 text-format tuples are needed
(we start replication with ``proto_version '1'``).

Message layouts follow the PostgreSQL 15 docs, "Logical Replication Message
Formats".
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Union

# Type OIDs (pg_type.dat) whose text form we turn into JSON-native values.
_BOOL = 16
_INTS = {20, 21, 23, 26}  # int8, int2, int4, oid
_FLOATS = {700, 701}  # float4, float8
_NUMERIC = 1700
_JSONS = {114, 3802}  # json, jsonb

#: marker for a TOASTed column the server did not resend because it is unchanged
UNCHANGED_TOAST = object()


def convert_text_value(type_oid: int, text: str | None) -> Any:
    """Turn a column's text representation into a JSON-friendly Python value.

    The backfill reads rows with ``col::text`` and runs them through this same
    function, so a row looks identical whether it came from the snapshot or the
    stream (required for "index == table" comparisons).
    """
    if text is None:
        return None
    if type_oid == _BOOL:
        return text == "t"
    if type_oid in _INTS:
        return int(text)
    if type_oid in _FLOATS:
        try:
            value = float(text)
        except ValueError:
            return text
        return value if math.isfinite(value) else text  # NaN/Infinity are not JSON
    if type_oid == _NUMERIC:
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            value = float(text)
        except ValueError:
            return text
        return value if math.isfinite(value) else text
    if type_oid in _JSONS:
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


@dataclass(slots=True)
class Column:
    name: str
    type_oid: int
    is_key: bool


@dataclass(slots=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str
    columns: list[Column]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(slots=True)
class Begin:
    final_lsn: int
    commit_ts: int
    xid: int


@dataclass(slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(slots=True)
class RowChange:
    """Insert ('I'), Update ('U') or Delete ('D') on one relation.

    ``new`` and ``old`` map column name -> converted value (or
    ``UNCHANGED_TOAST``); ``old`` is only present for deletes and for updates
    that changed the replica identity (or use REPLICA IDENTITY FULL).
    """

    kind: str
    relation: Relation
    new: dict[str, Any] | None = None
    old: dict[str, Any] | None = None


@dataclass(slots=True)
class Truncate:
    relations: list[Relation] = field(default_factory=list)


@dataclass(slots=True)
class Ignored:
    tag: str


Message = Union[Begin, Commit, Relation, RowChange, Truncate, Ignored]


class ProtocolError(ValueError):
    """Bytes that are not a valid pgoutput message."""


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes | memoryview) -> None:
        self.buf = bytes(buf)
        self.pos = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ProtocolError("message truncated")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def byte(self) -> str:
        return chr(self.take(">B")[0])

    def int8(self) -> int:
        return self.take(">b")[0]

    def int16(self) -> int:
        return self.take(">h")[0]

    def int32(self) -> int:
        return self.take(">i")[0]

    def uint32(self) -> int:
        return self.take(">I")[0]

    def int64(self) -> int:
        return self.take(">q")[0]

    def uint64(self) -> int:
        return self.take(">Q")[0]

    def cstring(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string")
        out = self.buf[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return out

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ProtocolError("message truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


class PgOutputDecoder:
    """Stateful decoder: remembers Relation messages to name tuple columns."""

    def __init__(self) -> None:
        self.relations: dict[int, Relation] = {}

    def decode(self, data: bytes | memoryview) -> Message:
        r = _Reader(data)
        tag = r.byte()
        if tag == "B":
            return Begin(final_lsn=r.uint64(), commit_ts=r.int64(), xid=r.uint32())
        if tag == "C":
            r.int8()  # flags, unused
            return Commit(commit_lsn=r.uint64(), end_lsn=r.uint64(), commit_ts=r.int64())
        if tag == "R":
            relid = r.uint32()
            namespace = r.cstring() or "pg_catalog"
            name = r.cstring()
            identity = r.byte()
            ncols = r.int16()
            cols = []
            for _ in range(ncols):
                flags = r.int8()
                cname = r.cstring()
                oid = r.uint32()
                r.int32()  # typmod
                cols.append(Column(cname, oid, bool(flags & 1)))
            rel = Relation(relid, namespace, name, identity, cols)
            self.relations[relid] = rel
            return rel
        if tag == "I":
            rel = self._relation(r.uint32())
            if r.byte() != "N":
                raise ProtocolError("insert without new tuple")
            return RowChange("I", rel, new=self._tuple(r, rel))
        if tag == "U":
            rel = self._relation(r.uint32())
            old = None
            marker = r.byte()
            if marker in ("K", "O"):
                old = self._tuple(r, rel)
                marker = r.byte()
            if marker != "N":
                raise ProtocolError("update without new tuple")
            return RowChange("U", rel, new=self._tuple(r, rel), old=old)
        if tag == "D":
            rel = self._relation(r.uint32())
            marker = r.byte()
            if marker not in ("K", "O"):
                raise ProtocolError("delete without old tuple")
            return RowChange("D", rel, old=self._tuple(r, rel))
        if tag == "T":
            nrels = r.int32()
            r.int8()  # options (cascade / restart identity)
            return Truncate([self._relation(r.uint32()) for _ in range(nrels)])
        # 'O' origin, 'Y' type, 'M' message: nothing to apply
        return Ignored(tag)

    def _relation(self, relid: int) -> Relation:
        try:
            return self.relations[relid]
        except KeyError:
            raise ProtocolError(f"row for relation {relid} before its Relation message") from None

    @staticmethod
    def _tuple(r: _Reader, rel: Relation) -> dict[str, Any]:
        n = r.int16()
        if n > len(rel.columns):
            raise ProtocolError(f"tuple has {n} columns, relation {rel.qualified_name} has {len(rel.columns)}")
        row: dict[str, Any] = {}
        for i in range(n):
            col = rel.columns[i]
            kind = r.byte()
            if kind == "n":
                row[col.name] = None
            elif kind == "u":
                row[col.name] = UNCHANGED_TOAST
            elif kind == "t":
                size = r.int32()
                row[col.name] = convert_text_value(col.type_oid, r.raw(size).decode("utf-8"))
            elif kind == "b":
                size = r.int32()
                row[col.name] = r.raw(size)
            else:
                raise ProtocolError(f"unknown tuple column kind {kind!r}")
        return row


# --- replication stream envelope (CopyData payloads) -------------------------

@dataclass(slots=True)
class XLogData:
    data_start: int
    wal_end: int
    payload: bytes


@dataclass(slots=True)
class Keepalive:
    wal_end: int
    reply_requested: bool


def parse_copy_message(data: bytes | memoryview) -> XLogData | Keepalive:
    """Split one CopyData message of the streaming protocol ('w' or 'k')."""
    buf = bytes(data)
    if not buf:
        raise ProtocolError("empty copy message")
    tag = buf[:1]
    if (tag == b"w" and len(buf) < 25) or (tag == b"k" and len(buf) < 18):
        raise ProtocolError("copy message truncated")
    if tag == b"w":
        start, end, _ts = struct.unpack_from(">QQq", buf, 1)
        return XLogData(start, end, buf[25:])
    if tag == b"k":
        end, _ts, reply = struct.unpack_from(">Qqb", buf, 1)
        return Keepalive(end, bool(reply))
    raise ProtocolError(f"unknown copy message {tag!r}")


def standby_status(written: int, flushed: int, applied: int, now_us: int, reply: bool = False) -> bytes:
    """Standby status update ('r'): tells the server what we durably flushed."""
    return b"r" + struct.pack(">QQQqb", written, flushed, applied, now_us, 1 if reply else 0)
