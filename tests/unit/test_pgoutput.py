"""actors/pgoutput.py against hand-built protocol-v1 messages.

Layouts follow PostgreSQL 15, "53.9 Logical Replication Message Formats" and
"55.4 Streaming Replication Protocol" (XLogData / keepalive / standby status).
"""

from __future__ import annotations

import json
import math
import struct

import pytest

from actors import pgoutput
from actors.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Ignored,
    Keepalive,
    PgOutputDecoder,
    ProtocolError,
    Relation,
    RowChange,
    Truncate,
    XLogData,
    convert_text_value,
    parse_copy_message,
    standby_status,
)

BOOL, INT2, INT4, INT8, OID, TEXT, FLOAT4, FLOAT8, NUMERIC, JSON, JSONB, VARCHAR = (
    16, 21, 23, 20, 26, 25, 700, 701, 1700, 114, 3802, 1043,
)

# -- message builders (network byte order, as on the wire) ------------------------


def cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\0"


def begin(final_lsn: int, ts: int, xid: int) -> bytes:
    # Byte1('B') Int64 final LSN, Int64 commit timestamp, Int32 xid
    return b"B" + struct.pack(">QqI", final_lsn, ts, xid)


def commit(commit_lsn: int, end_lsn: int, ts: int, flags: int = 0) -> bytes:
    # Byte1('C') Int8 flags, Int64 commit LSN, Int64 end LSN, Int64 commit timestamp
    return b"C" + struct.pack(">bQQq", flags, commit_lsn, end_lsn, ts)


def relation(relid: int, namespace: str, name: str, identity: str, cols: list[tuple[int, str, int, int]]) -> bytes:
    # Byte1('R') Int32 relid, String namespace, String name, Int8 replica identity, Int16 ncols,
    # then per column: Int8 flags (1 = key), String name, Int32 type OID, Int32 typmod
    out = b"R" + struct.pack(">I", relid) + cstr(namespace) + cstr(name) + identity.encode() + struct.pack(">h", len(cols))
    for flags, cname, oid, typmod in cols:
        out += struct.pack(">b", flags) + cstr(cname) + struct.pack(">Ii", oid, typmod)
    return out


def tuple_data(values: list) -> bytes:
    # Int16 ncols, then per column Byte1 'n' | 'u' | 't' Int32 len ByteN | 'b' Int32 len ByteN
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(v, bytes):
            out += b"b" + struct.pack(">i", len(v)) + v
        else:
            raw = str(v).encode("utf-8", "surrogatepass")  # (lone surrogates: invalid UTF-8 on purpose)
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


def insert(relid: int, values: list) -> bytes:
    return b"I" + struct.pack(">I", relid) + b"N" + tuple_data(values)


def update(relid: int, new: list, old: list | None = None, old_kind: bytes = b"K") -> bytes:
    out = b"U" + struct.pack(">I", relid)
    if old is not None:
        out += old_kind + tuple_data(old)
    return out + b"N" + tuple_data(new)


def delete(relid: int, old: list, old_kind: bytes = b"K") -> bytes:
    return b"D" + struct.pack(">I", relid) + old_kind + tuple_data(old)


def truncate(relids: list[int], options: int = 0) -> bytes:
    # Byte1('T') Int32 nrels, Int8 options (1 cascade, 2 restart identity), Int32 relid * n
    return b"T" + struct.pack(">ib", len(relids), options) + b"".join(struct.pack(">I", r) for r in relids)


BOOKS_RELID = 16384
BOOKS_COLS = [
    (1, "id", INT4, -1),
    (0, "name", TEXT, -1),
    (0, "description", TEXT, -1),
    (0, "year", INT2, -1),
    (0, "price", NUMERIC, 655366),
    (0, "meta", JSONB, -1),
    (0, "active", BOOL, -1),
]


@pytest.fixture(autouse=True, params=["compiled", "python"])
def tuple_impl(request):
    """Every case runs through both decoders of row changes: the C extension and the Python fallback."""
    before = pgoutput.decoder_in_use()
    pgoutput.use_decoder(request.param)
    yield request.param
    pgoutput.use_decoder(before)


@pytest.fixture
def decoder() -> PgOutputDecoder:
    d = PgOutputDecoder()
    rel = d.decode(relation(BOOKS_RELID, "public", "books", "d", BOOKS_COLS))
    assert isinstance(rel, Relation)
    return d


# -- Begin / Commit -------------------------------------------------------------


def test_begin():
    msg = PgOutputDecoder().decode(begin(0x1_6B37_48A0, 756_000_123_456, 0xFFFF_FFF0))
    assert msg == Begin(final_lsn=0x1_6B37_48A0, commit_ts=756_000_123_456, xid=0xFFFF_FFF0)


def test_begin_accepts_memoryview():
    data = memoryview(begin(42, -5, 7))
    assert PgOutputDecoder().decode(data) == Begin(42, -5, 7)


def test_commit():
    msg = PgOutputDecoder().decode(commit(0xAB_0000_0010, 0xAB_0000_0040, 1234567890123))
    assert msg == Commit(commit_lsn=0xAB_0000_0010, end_lsn=0xAB_0000_0040, commit_ts=1234567890123)


def test_lsn_above_int64_decodes_unsigned():
    lsn = 0xFFFF_FFFF_0000_0001
    assert PgOutputDecoder().decode(begin(lsn, 0, 1)).final_lsn == lsn
    assert PgOutputDecoder().decode(commit(lsn, lsn + 1, 0)).end_lsn == lsn + 1


# -- Relation -------------------------------------------------------------------


def test_relation_fields():
    d = PgOutputDecoder()
    rel = d.decode(relation(BOOKS_RELID, "public", "books", "d", BOOKS_COLS))
    assert rel.relid == BOOKS_RELID
    assert rel.namespace == "public" and rel.name == "books"
    assert rel.qualified_name == "public.books"
    assert rel.replica_identity == "d"
    assert [c.name for c in rel.columns] == ["id", "name", "description", "year", "price", "meta", "active"]
    assert [c.type_oid for c in rel.columns] == [INT4, TEXT, TEXT, INT2, NUMERIC, JSONB, BOOL]
    assert [c.is_key for c in rel.columns] == [True, False, False, False, False, False, False]
    assert d.relations[BOOKS_RELID] is rel


def test_relation_empty_namespace_is_pg_catalog():
    rel = PgOutputDecoder().decode(relation(11, "", "pg_thing", "n", [(0, "x", TEXT, -1)]))
    assert rel.namespace == "pg_catalog" and rel.qualified_name == "pg_catalog.pg_thing"


def test_relation_utf8_names_and_composite_key():
    cols = [(1, "régión", TEXT, -1), (1, "número", INT8, -1), (0, "データ", TEXT, -1)]
    rel = PgOutputDecoder().decode(relation(5, "ünï", "tåble", "f", cols))
    assert rel.qualified_name == "ünï.tåble"
    assert rel.replica_identity == "f"
    assert rel.columns == [Column("régión", TEXT, True), Column("número", INT8, True), Column("データ", TEXT, False)]


def test_relation_message_replaces_earlier_definition(decoder):
    decoder.decode(relation(BOOKS_RELID, "public", "books", "d", [(1, "id", INT4, -1), (0, "title", TEXT, -1)]))
    change = decoder.decode(insert(BOOKS_RELID, [1, "new"]))
    assert change.new == {"id": 1, "title": "new"}


# -- Insert / Update / Delete -----------------------------------------------------


def test_insert_every_field(decoder):
    row = [7, "Dune", "A desert planet", 1965, "12.50", '{"tags": ["sf"], "n": 1}', "t"]
    msg = decoder.decode(insert(BOOKS_RELID, row))
    assert isinstance(msg, RowChange)
    assert msg.kind == "I"
    assert msg.relation is decoder.relations[BOOKS_RELID]
    assert msg.old is None
    assert msg.new == {
        "id": 7,
        "name": "Dune",
        "description": "A desert planet",
        "year": 1965,
        "price": "12.50",  # numeric: the exact text, never a float
        "meta": {"tags": ["sf"], "n": 1},
        "active": True,
    }
    assert type(msg.new["id"]) is int and type(msg.new["year"]) is int


def test_insert_null_and_unchanged_toast(decoder):
    row = [8, None, UNCHANGED_TOAST, None, None, None, "f"]
    msg = decoder.decode(insert(BOOKS_RELID, row))
    assert msg.new["name"] is None
    assert msg.new["description"] is UNCHANGED_TOAST
    assert msg.new["year"] is None and msg.new["meta"] is None
    assert msg.new["active"] is False
    assert list(msg.new) == ["id", "name", "description", "year", "price", "meta", "active"]


def test_insert_utf8_text_and_empty_string(decoder):
    msg = decoder.decode(insert(BOOKS_RELID, [9, "", "naïve café ☕ 日本語", 2000, "0", "[]", "t"]))
    assert msg.new["name"] == ""
    assert msg.new["description"] == "naïve café ☕ 日本語"
    assert msg.new["price"] == 0 and msg.new["meta"] == []


def test_insert_binary_column(decoder):
    msg = decoder.decode(insert(BOOKS_RELID, [1, b"\x00\x01\xff"]))
    assert msg.new == {"id": 1, "name": b"\x00\x01\xff"}


def test_update_without_old_tuple(decoder):
    row = [7, "Dune", UNCHANGED_TOAST, 1966, "9", "null", "t"]
    msg = decoder.decode(update(BOOKS_RELID, row))
    assert msg.kind == "U"
    assert msg.old is None
    assert msg.new["year"] == 1966
    assert msg.new["description"] is UNCHANGED_TOAST
    assert msg.new["price"] == 9 and type(msg.new["price"]) is int
    assert msg.new["meta"] is None  # JSON null


def test_update_with_old_key_tuple(decoder):
    # key changed: 'K' tuple carries only the replica identity columns, others null
    old = [7, None, None, None, None, None, None]
    new = [70, "Dune", "desc", 1965, "1", "{}", "t"]
    msg = decoder.decode(update(BOOKS_RELID, new, old=old, old_kind=b"K"))
    assert msg.kind == "U"
    assert msg.old == {"id": 7, "name": None, "description": None, "year": None, "price": None, "meta": None, "active": None}
    assert msg.new["id"] == 70 and msg.new["meta"] == {}


def test_update_with_full_old_tuple(decoder):
    old = [7, "Old", "old desc", 1965, "1.5", '{"a": 1}', "f"]
    new = [7, "New", "new desc", 1965, "1.5", '{"a": 2}', "t"]
    msg = decoder.decode(update(BOOKS_RELID, new, old=old, old_kind=b"O"))
    assert msg.old["name"] == "Old" and msg.old["meta"] == {"a": 1} and msg.old["active"] is False
    assert msg.new["name"] == "New" and msg.new["meta"] == {"a": 2} and msg.new["active"] is True


def test_delete_key_tuple(decoder):
    msg = decoder.decode(delete(BOOKS_RELID, [7, None, None, None, None, None, None]))
    assert msg.kind == "D"
    assert msg.new is None
    assert msg.old["id"] == 7
    assert msg.relation.qualified_name == "public.books"


def test_delete_full_old_tuple(decoder):
    msg = decoder.decode(delete(BOOKS_RELID, [7, "Dune", "d", 1, "2", "3", "t"], old_kind=b"O"))
    assert msg.old == {"id": 7, "name": "Dune", "description": "d", "year": 1, "price": 2, "meta": 3, "active": True}


def test_composite_key_and_int8_beyond_int32():
    d = PgOutputDecoder()
    d.decode(relation(77, "s", "t", "d", [(1, "tenant", TEXT, -1), (1, "id", INT8, -1), (0, "body", TEXT, -1)]))
    msg = d.decode(insert(77, ["acme", 2**40 + 3, "hello"]))
    assert msg.new == {"tenant": "acme", "id": 2**40 + 3, "body": "hello"}
    assert [c.name for c in msg.relation.columns if c.is_key] == ["tenant", "id"]


def test_rows_for_two_relations_are_kept_apart():
    d = PgOutputDecoder()
    d.decode(relation(1, "public", "a", "d", [(1, "id", INT4, -1)]))
    d.decode(relation(2, "other", "b", "d", [(1, "code", TEXT, -1)]))
    assert d.decode(insert(2, ["x"])).relation.qualified_name == "other.b"
    assert d.decode(insert(1, ["5"])).new == {"id": 5}


# -- Truncate ---------------------------------------------------------------------


def test_truncate_one_and_many():
    d = PgOutputDecoder()
    a = d.decode(relation(1, "public", "a", "d", [(1, "id", INT4, -1)]))
    b = d.decode(relation(2, "public", "b", "d", [(1, "id", INT4, -1)]))
    msg = d.decode(truncate([1]))
    assert isinstance(msg, Truncate) and msg.relations == [a]
    msg = d.decode(truncate([2, 1], options=3))
    assert [r.qualified_name for r in msg.relations] == ["public.b", "public.a"]
    assert msg.relations[0] is b


def test_truncate_unknown_relation_raises():
    with pytest.raises(ProtocolError):
        PgOutputDecoder().decode(truncate([99]))


# -- other tags -------------------------------------------------------------------


@pytest.mark.parametrize("tag", [b"O", b"Y"])
def test_other_messages_are_ignored(tag):
    msg = PgOutputDecoder().decode(tag + b"\x00" * 12)
    assert msg == Ignored(tag.decode())


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: insert(12345, [1]),
        lambda: update(12345, [1]),
        lambda: delete(12345, [1]),
    ],
)
def test_row_for_unknown_relation_raises(build):
    with pytest.raises(ProtocolError, match="12345"):
        PgOutputDecoder().decode(build())


def _full_messages():
    return [
        begin(100, 200, 300),
        commit(1, 2, 3),
        relation(BOOKS_RELID, "public", "books", "d", BOOKS_COLS),
        insert(BOOKS_RELID, [7, "Dune", "A desert planet", 1965, "12.50", "{}", "t"]),
        update(BOOKS_RELID, [7, "Dune", "x", 1, "1", "{}", "t"], old=[7, None, None, None, None, None, None]),
        delete(BOOKS_RELID, [7, None, None, None, None, None, None]),
        truncate([BOOKS_RELID]),
    ]


@pytest.mark.parametrize("index", range(7))
def test_every_truncation_raises_protocol_error(decoder, index):
    data = _full_messages()[index]
    for cut in range(1, len(data)):
        with pytest.raises(ProtocolError):
            decoder.decode(data[:cut])


def test_empty_message_raises_protocol_error():
    with pytest.raises(ProtocolError):
        PgOutputDecoder().decode(b"")


def test_tuple_with_more_columns_than_relation(decoder):
    with pytest.raises(ProtocolError):
        decoder.decode(insert(BOOKS_RELID, list(range(len(BOOKS_COLS) + 1))))


def test_unknown_tuple_column_kind(decoder):
    bad = b"I" + struct.pack(">I", BOOKS_RELID) + b"N" + struct.pack(">h", 1) + b"x"
    with pytest.raises(ProtocolError):
        decoder.decode(bad)


def test_insert_without_new_marker(decoder):
    bad = b"I" + struct.pack(">I", BOOKS_RELID) + b"K" + tuple_data([1])
    with pytest.raises(ProtocolError):
        decoder.decode(bad)


def test_delete_without_old_marker(decoder):
    bad = b"D" + struct.pack(">I", BOOKS_RELID) + b"N" + tuple_data([1])
    with pytest.raises(ProtocolError):
        decoder.decode(bad)


def test_update_old_without_new(decoder):
    bad = b"U" + struct.pack(">I", BOOKS_RELID) + b"K" + tuple_data([1]) + b"K" + tuple_data([1])
    with pytest.raises(ProtocolError):
        decoder.decode(bad)


def test_protocol_error_is_value_error():
    assert issubclass(ProtocolError, ValueError)


# -- convert_text_value -------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (BOOL, "t", True),
        (BOOL, "f", False),
        (INT2, "-32768", -32768),
        (INT4, "42", 42),
        (INT8, "9223372036854775807", 9223372036854775807),
        (OID, "4294967295", 4294967295),
        (FLOAT4, "1.5", 1.5),
        (FLOAT8, "-2.25e-10", -2.25e-10),
        (FLOAT8, "NaN", "NaN"),
        (FLOAT8, "Infinity", "Infinity"),
        (FLOAT8, "-Infinity", "-Infinity"),
        (NUMERIC, "12345678901234567890", 12345678901234567890),
        (NUMERIC, "-17", -17),
        (NUMERIC, "3.14", "3.14"),  # exact decimal text, never a float
        (NUMERIC, "-0.5", "-0.5"),
        (NUMERIC, "NaN", "NaN"),
        (JSON, '{"a": [1, 2, null]}', {"a": [1, 2, None]}),
        (JSONB, '"str"', "str"),
        (JSONB, "true", True),
        (JSON, "{not json", "{not json"),
        (TEXT, "plain", "plain"),
        (TEXT, "42", "42"),
        (VARCHAR, "t", "t"),
        (TEXT, "", ""),
        (1082, "2024-01-31", "2024-01-31"),  # date: kept as text
    ],
)
def test_convert_text_value(oid, text, expected):
    value = convert_text_value(oid, text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("oid", [BOOL, INT4, FLOAT8, NUMERIC, JSONB, TEXT])
def test_convert_null(oid):
    assert convert_text_value(oid, None) is None


@pytest.mark.parametrize(
    ("oid", "text"),
    [(FLOAT4, "NaN"), (FLOAT8, "Infinity"), (FLOAT8, "-Infinity"), (NUMERIC, "NaN"), (NUMERIC, "Infinity"), (NUMERIC, "-Infinity")],
)
def test_non_finite_values_are_json_safe(oid, text):
    """NaN / +-Infinity must not become floats that strict JSON cannot carry (float4/8 keep the text)."""
    value = convert_text_value(oid, text)
    assert not (isinstance(value, float) and not math.isfinite(value))
    json.dumps(value, allow_nan=False)


def test_convert_is_shared_by_decoder(decoder):
    msg = decoder.decode(insert(BOOKS_RELID, [1, None, None, None, "NaN", "not json", "f"]))
    assert msg.new["price"] == "NaN"
    assert msg.new["meta"] == "not json"


# -- streaming envelope ---------------------------------------------------------------


def test_parse_xlogdata():
    payload = insert(BOOKS_RELID, [1])
    data = b"w" + struct.pack(">QQq", 0x10_0000_0028, 0x10_0000_0100, 123456) + payload
    msg = parse_copy_message(data)
    assert msg == XLogData(data_start=0x10_0000_0028, wal_end=0x10_0000_0100, payload=payload)
    assert isinstance(msg.payload, bytes)


def test_parse_xlogdata_memoryview_and_empty_payload():
    data = memoryview(b"w" + struct.pack(">QQq", 1, 2, 3))
    assert parse_copy_message(data) == XLogData(1, 2, b"")


@pytest.mark.parametrize("reply", [0, 1])
def test_parse_keepalive(reply):
    data = b"k" + struct.pack(">Qqb", 0xFFFF_FFFF_FFFF_FFF0, 99, reply)
    assert parse_copy_message(data) == Keepalive(wal_end=0xFFFF_FFFF_FFFF_FFF0, reply_requested=bool(reply))


@pytest.mark.parametrize("data", [b"", b"x123", b"r" + b"\0" * 33], ids=["empty", "x", "r"])
def test_parse_copy_message_rejects_unknown(data):
    with pytest.raises(ProtocolError):
        parse_copy_message(data)


@pytest.mark.parametrize(
    "data",
    [b"w" + struct.pack(">QQq", 1, 2, 3)[:cut] for cut in (0, 8, 23)] + [b"k" + struct.pack(">Qqb", 1, 2, 0)[:cut] for cut in (0, 8, 16)],
    ids=["w-0", "w-8", "w-23", "k-0", "k-8", "k-16"],
)
def test_parse_copy_message_truncated_raises_protocol_error(data):
    with pytest.raises(ProtocolError):
        parse_copy_message(data)


@pytest.mark.parametrize("reply", [False, True])
def test_standby_status_layout(reply):
    out = standby_status(0x1_0000_0010, 0x1_0000_0008, 0x1_0000_0004, 7_000_000_123, reply=reply)
    # Byte1('r') Int64 written, Int64 flushed, Int64 applied, Int64 clock (us since 2000-01-01), Byte1 reply
    assert len(out) == 1 + 8 * 4 + 1
    assert out[:1] == b"r"
    written, flushed, applied, clock, flag = struct.unpack(">QQQqB", out[1:])
    assert (written, flushed, applied, clock) == (0x1_0000_0010, 0x1_0000_0008, 0x1_0000_0004, 7_000_000_123)
    assert flag == (1 if reply else 0)


def logical_message(prefix: str, content: bytes, lsn: int = 0x16B3748, transactional: bool = True) -> bytes:
    return (b"M" + struct.pack(">bQ", 1 if transactional else 0, lsn) + cstr(prefix)
            + struct.pack(">i", len(content)) + content)


def test_logical_message_carries_prefix_content_and_lsn(decoder):
    from actors.pgoutput import LogicalMessage

    msg = decoder.decode(logical_message("embedcluster.watermark", b'{"kind":"low"}\x00tail'))
    assert msg == LogicalMessage(True, 0x16B3748, "embedcluster.watermark", b'{"kind":"low"}\x00tail')
    assert decoder.decode(logical_message("other", b"", transactional=False)).transactional is False
    with pytest.raises(ProtocolError):
        decoder.decode(logical_message("p", b"abc")[:-1])  # the content cut short


# -- row_at: the reader's hot path (a row change inside its XLogData envelope) ------------------


def _envelope(payload: bytes) -> bytes:
    return b"w" + struct.pack(">QQq", 0x10, 0x20, 0) + payload


ROW = [7, "Dune", "A desert planet", -1965, "12.50", '{"a": 1}', "t"]


@pytest.mark.parametrize(
    "message",
    [
        insert(BOOKS_RELID, ROW),
        insert(BOOKS_RELID, [7, None, "ü ✓ 日本", 0, None, None, "f"]),
        update(BOOKS_RELID, ROW),
        update(BOOKS_RELID, ROW, old=[6, None, None, None, None, None, None]),
        update(BOOKS_RELID, ROW, old=[6, "x", "y", 1, "2", "{}", "t"], old_kind=b"O"),
        update(BOOKS_RELID, [7, "Dune", UNCHANGED_TOAST, 1965, "1", "{}", "t"]),
        delete(BOOKS_RELID, [7, None, None, None, None, None, None]),
    ],
    ids=["insert", "insert-nulls-utf8", "update", "update-key", "update-full", "update-toast", "delete"],
)
def test_row_at_inside_the_envelope_equals_decode(decoder, message):
    """row_at reads the message where it lies in the CopyData (offset 25) and gives exactly
    what decode() gives for the payload alone, plus whether the new tuple lacks a TOAST value."""
    want = decoder.decode(message)
    kind, rel, new, old, toasted = decoder.row_at(_envelope(message), 25)
    assert RowChange(kind, rel, new, old) == want
    assert rel is want.relation
    assert toasted == (new is not None and UNCHANGED_TOAST in new.values())
    if new is not None:  # the values' types too, not just equality (1 == 1.0 == True)
        assert [type(v) for v in new.values()] == [type(v) for v in want.new.values()]


def test_row_at_converts_integers_from_the_bytes(decoder):
    big = 2**63 - 1
    d = PgOutputDecoder()
    d.decode(relation(5, "public", "n", "d", [(1, "a", INT8, -1), (0, "b", INT2, -1), (0, "c", INT4, -1)]))
    _, _, new, _, _ = d.row_at(insert(5, [big, -32768, 0]), 0)
    assert new == {"a": big, "b": -32768, "c": 0} and all(type(v) is int for v in new.values())
    with pytest.raises(ValueError):  # not a number: as int(str) would
        d.row_at(insert(5, ["x1", 1, 1]), 0)


def test_row_at_follows_a_new_relation_message(decoder):
    """A Relation message for the same relid (ALTER TABLE) replaces the column plan at once."""
    assert decoder.row_at(insert(BOOKS_RELID, ROW), 0)[2]["id"] == 7
    decoder.decode(relation(BOOKS_RELID, "public", "books", "d", [(1, "id", TEXT, -1), (0, "extra", INT4, -1)]))
    _, _, new, _, _ = decoder.row_at(insert(BOOKS_RELID, ["7", "8"]), 0)
    assert new == {"id": "7", "extra": 8}


def test_row_at_rejects_other_messages_and_unknown_relations(decoder):
    with pytest.raises(ProtocolError):
        decoder.row_at(begin(1, 2, 3), 0)
    with pytest.raises(ProtocolError):
        decoder.row_at(insert(99, [1]), 0)


@pytest.mark.parametrize("length", [-1, 1_000_000])
def test_a_column_length_past_the_message_is_truncation(decoder, length):
    message = bytearray(insert(BOOKS_RELID, ROW))
    struct.pack_into(">i", message, 1 + 4 + 1 + 2 + 1, length)  # the first column's length
    with pytest.raises(ProtocolError):
        decoder.decode(bytes(message))
