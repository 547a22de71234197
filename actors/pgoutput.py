"""Decoder for PostgreSQL's built-in ``pgoutput`` logical replication protocol.

Pure functions over bytes: no connection, no Ray, so the unit tests feed it
hand-built messages.  Only protocol version 1 text-format tuples are needed
(we start replication with ``proto_version '1'``).

Message layouts follow the PostgreSQL 15 docs, "Logical Replication Message
Formats".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Union

# text form -> value: actors.pgvalues (re-exported here for existing callers)
from actors.pgvalues import TypeCatalog, convert_text_value, converter_for  # noqa: F401

#: marker for a TOASTed column the server did not resend because it is unchanged
UNCHANGED_TOAST = object()


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
class LogicalMessage:
    """``pg_logical_emit_message(transactional, prefix, content)`` ('M', PostgreSQL 14+, sent with the
    ``messages`` option): a transactional one arrives at its transaction's place in commit order,
    which is what a backfill's watermarks need (actors/watermark.py)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(slots=True)
class Ignored:
    tag: str


Message = Union[Begin, Commit, Relation, RowChange, Truncate, LogicalMessage, Ignored]


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

    def cstring(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("unterminated string")
        out = self.buf[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return out


_U32 = struct.Struct(">I").unpack_from
_I16 = struct.Struct(">h").unpack_from
_BEGIN = struct.Struct(">QqI").unpack_from
_COMMIT = struct.Struct(">bQQq").unpack_from
_TAG_I, _TAG_U, _TAG_D, _TAG_B, _TAG_C = b"IUDBC"
_N, _K, _O = b"NKO"
# tuple column kinds ("t", "n", "u", "b") are literals in _py_tuple: 116, 110, 117, 98


def _py_tuple(buf: bytes, pos: int, rel: Relation, plan: list[tuple[str, Any]]) -> tuple[dict[str, Any], int, bool]:
    """TupleData at ``buf[pos]``: (column name -> value, position after it, any column unchanged TOAST).

    The innermost loop of the reader (once per column of every change).  This is
    the fallback: where the C extension ``actors._pgtuple`` is built (at install,
    when a C compiler is there) its ``tuple_at`` is used instead, with the same
    results and errors (see :data:`COMPILED`).
    """
    n = _I16(buf, pos)[0]
    pos += 2
    if n != len(plan):
        if n > len(plan) or n < 0:
            raise ProtocolError(f"tuple has {n} columns, relation {rel.qualified_name} has {len(plan)}")
        plan = plan[:n]
    row: dict[str, Any] = {}
    toasted = False
    end_of_buf = len(buf)
    for name, conv in plan:
        kind = buf[pos]
        if kind == 116:  # 't': text, length-prefixed
            start = pos + 5
            # unsigned: a negative length becomes a huge one, which the same test catches
            pos = start + _U32(buf, pos + 1)[0]
            if pos > end_of_buf:
                raise ProtocolError("message truncated")
            if conv is None:
                row[name] = buf[start:pos].decode()
            elif conv is int:
                row[name] = int(buf[start:pos])  # int() reads the ASCII digits itself: no str in between
            else:
                row[name] = conv(buf[start:pos].decode())
        elif kind == 110:  # 'n': NULL
            row[name] = None
            pos += 1
        elif kind == 117:  # 'u': unchanged TOAST, not resent
            row[name] = UNCHANGED_TOAST
            toasted = True
            pos += 1
        elif kind == 98:  # 'b': binary (never asked for: we do not request binary mode)
            start = pos + 5
            pos = start + _U32(buf, pos + 1)[0]
            if pos > end_of_buf:
                raise ProtocolError("message truncated")
            row[name] = buf[start:pos]
        else:
            raise ProtocolError(f"unknown tuple column kind {chr(kind)!r}")
    return row, pos, toasted


try:
    from actors import _pgtuple
except ImportError:  # not built (no C compiler at install): the Python loops, same results
    _pgtuple = None  # type: ignore[assignment]
else:
    _pgtuple.bind(ProtocolError, UNCHANGED_TOAST)

#: True when the compiled decoder is built (and so in use, unless :func:`use_decoder` said otherwise)
COMPILED: bool = _pgtuple is not None


class PgOutputDecoder:
    """Stateful decoder: remembers Relation messages to name tuple columns."""

    def __init__(self, types: TypeCatalog | None = None) -> None:
        self.relations: dict[int, Relation] = {}
        # what the catalog adds to the built-in types (domains, arrays of user
        # types): the per-column converters of a Relation depend on it
        self.types: TypeCatalog = types or {}
        # relid -> (relation, [(column name, converter or None)]); rebuilt when
        # the relation object changes (a new Relation message)
        self._plans: dict[int, tuple[Relation, list[tuple[str, Any]]]] = {}

    def decode(self, data: bytes | memoryview) -> Message:
        """One pgoutput message (the payload of an XLogData) as a message object."""
        buf = data if type(data) is bytes else bytes(data)
        try:
            tag = buf[0]
            if tag == _TAG_I or tag == _TAG_U or tag == _TAG_D:
                kind, rel, new, old, _ = self.row_at(buf, 0)
                return RowChange(kind, rel, new, old)
            return self._decode_fast(buf)
        except (struct.error, IndexError):
            raise ProtocolError("message truncated") from None

    def _py_row_at(self, buf: bytes, pos: int) -> tuple[str, Relation, dict[str, Any] | None, dict[str, Any] | None, bool]:
        """The Insert, Update or Delete message starting at ``buf[pos]``, as a plain tuple
        (``row_at``: this method, or its compiled twin where the extension is built).

        ``(kind, relation, new, old, toasted)``: the fields of :class:`RowChange`,
        and whether the *new* tuple has a column the server did not resend
        (``UNCHANGED_TOAST``).  The reader's hot path: it takes the message inside
        the XLogData envelope without copying it out, and builds no RowChange
        for the common case.  Truncated input raises ``struct.error`` or
        ``IndexError`` here (:meth:`decode` and the reader turn them into
        :class:`ProtocolError`); the compiled twin raises that ProtocolError itself.
        """
        tag = buf[pos]
        relid = _U32(buf, pos + 1)[0]
        entry = self._plans.get(relid)
        if entry is None or entry[0] is not self.relations.get(relid):
            entry = self._plan(relid)
        rel, plan = entry
        marker = buf[pos + 5]
        pos += 6
        if tag == _TAG_I:
            if marker != _N:
                raise ProtocolError("insert without new tuple")
            new, _, toasted = _py_tuple(buf, pos, rel, plan)
            return "I", rel, new, None, toasted
        if tag == _TAG_U:
            old = None
            if marker == _K or marker == _O:
                old, pos, _ = _py_tuple(buf, pos, rel, plan)
                marker = buf[pos]
                pos += 1
            if marker != _N:
                raise ProtocolError("update without new tuple")
            new, _, toasted = _py_tuple(buf, pos, rel, plan)
            return "U", rel, new, old, toasted
        if tag == _TAG_D:
            if marker != _K and marker != _O:
                raise ProtocolError("delete without old tuple")
            old, _, _ = _py_tuple(buf, pos, rel, plan)
            return "D", rel, None, old, False
        raise ProtocolError(f"not a row change: {chr(tag)!r}")

    #: replaced by ``actors._pgtuple.row_at`` (the same steps, compiled) where the extension is built
    row_at = _py_row_at

    def _decode_fast(self, buf: bytes) -> Message:
        """Begin and commit without the generic reader (row changes: :meth:`row_at`)."""
        tag = buf[0]
        if tag == _TAG_B:
            final_lsn, ts, xid = _BEGIN(buf, 1)
            return Begin(final_lsn=final_lsn, commit_ts=ts, xid=xid)
        if tag == _TAG_C:
            _flags, commit_lsn, end_lsn, ts = _COMMIT(buf, 1)
            return Commit(commit_lsn=commit_lsn, end_lsn=end_lsn, commit_ts=ts)
        return self._decode_generic(buf)

    def _plan(self, relid: int) -> tuple[Relation, list[tuple[str, Any]]]:
        rel = self._relation(relid)
        entry = self._plans.get(relid)
        if entry is None or entry[0] is not rel:
            entry = (rel, [(c.name, converter_for(c.type_oid, self.types)) for c in rel.columns])
            self._plans[relid] = entry
        return entry

    def _decode_generic(self, data: bytes) -> Message:
        """The rarer messages: Relation, Truncate, and those we ignore."""
        r = _Reader(data)
        tag = r.byte()
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
        if tag == "T":
            nrels = r.int32()
            r.int8()  # options (cascade / restart identity)
            return Truncate([self._relation(r.uint32()) for _ in range(nrels)])
        if tag == "M":
            # no xid: it is sent only inside streamed transactions (proto_version 2+), never asked for here
            flags = r.int8()
            (lsn,) = r.take(">Q")
            prefix = r.cstring()
            size = r.int32()
            if size < 0 or r.pos + size > len(r.buf):
                raise ProtocolError("message truncated")
            content = r.buf[r.pos : r.pos + size]
            return LogicalMessage(bool(flags & 1), lsn, prefix, content)
        # 'O' origin, 'Y' type: nothing to apply
        return Ignored(tag)

    def _relation(self, relid: int) -> Relation:
        try:
            return self.relations[relid]
        except KeyError:
            raise ProtocolError(f"row for relation {relid} before its Relation message") from None


def use_decoder(name: str) -> None:
    """Decode row changes with ``"compiled"`` (``actors._pgtuple``) or ``"python"`` from now on, in
    this process: what the tests and ``bench cdc`` use to run both.  The compiled one is the
    default wherever it is built."""
    if name == "compiled":
        if _pgtuple is None:
            raise RuntimeError("actors._pgtuple is not built: reinstall with a C compiler (gcc) present")
        PgOutputDecoder.row_at = _pgtuple.row_at  # type: ignore[assignment]
    elif name == "python":
        PgOutputDecoder.row_at = PgOutputDecoder._py_row_at  # type: ignore[method-assign]
    else:
        raise ValueError(f"decoder is 'compiled' or 'python', not {name!r}")


def decoder_in_use() -> str:
    """``"compiled"`` or ``"python"``: which decoder of row changes :func:`use_decoder` chose."""
    return "python" if PgOutputDecoder.row_at is PgOutputDecoder._py_row_at else "compiled"


if COMPILED:
    use_decoder("compiled")


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


_XLOG = struct.Struct(">QQq").unpack_from


def parse_copy_message(data: bytes | memoryview) -> XLogData | Keepalive:
    """Split one CopyData message of the streaming protocol ('w' or 'k')."""
    buf = bytes(data)
    if not buf:
        raise ProtocolError("empty copy message")
    tag = buf[:1]
    if (tag == b"w" and len(buf) < 25) or (tag == b"k" and len(buf) < 18):
        raise ProtocolError("copy message truncated")
    if tag == b"w":
        start, end, _ts = _XLOG(buf, 1)
        return XLogData(start, end, buf[25:])
    if tag == b"k":
        end, _ts, reply = struct.unpack_from(">Qqb", buf, 1)
        return Keepalive(end, bool(reply))
    raise ProtocolError(f"unknown copy message {tag!r}")


def standby_status(written: int, flushed: int, applied: int, now_us: int, reply: bool = False) -> bytes:
    """Standby status update ('r'): tells the server what we durably flushed."""
    return b"r" + struct.pack(">QQQqb", written, flushed, applied, now_us, 1 if reply else 0)
