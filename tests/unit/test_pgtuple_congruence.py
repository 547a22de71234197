"""The compiled TupleData decoder (``actors._pgtuple.tuple_at``) against the Python one
(``actors.pgoutput._py_tuple``): on any input, valid, cut short or corrupted, both give
the same row, position and TOAST flag, or fail the same way.

The Python loop reports a buffer cut short as ``struct.error`` / ``IndexError`` (its
callers turn those into ``ProtocolError("message truncated")``); the compiled one raises
that ``ProtocolError`` itself, so outcomes are compared after the same translation.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import pgoutput
from actors.pgoutput import UNCHANGED_TOAST, ProtocolError
from tests.unit.test_pgoutput import tuple_data  # the wire form of a tuple (str, int, None, TOAST, bytes)


class _Rel:
    qualified_name = "public.t"


REL = _Rel()


def test_the_extension_is_built_and_in_use() -> None:
    # make install compiles it (setup.py); without gcc the install falls back silently,
    # which this test is here to notice in CI
    assert pgoutput.COMPILED, "actors._pgtuple is not built: run `make install` with gcc present"
    assert pgoutput.decoder_in_use() == "compiled" and pgoutput.PgOutputDecoder.row_at is pgoutput._pgtuple.row_at


def test_use_decoder_switches_row_at_and_refuses_other_names() -> None:
    try:
        pgoutput.use_decoder("python")
        assert pgoutput.decoder_in_use() == "python"
        assert pgoutput.PgOutputDecoder.row_at is pgoutput.PgOutputDecoder._py_row_at
        with pytest.raises(ValueError, match="'compiled' or 'python'"):
            pgoutput.use_decoder("fast")
        assert pgoutput.decoder_in_use() == "python"
    finally:
        pgoutput.use_decoder("compiled")


def _outcome(fn: Any, buf: bytes, pos: int, plan: list[tuple[str, Any]]) -> tuple[str, Any]:
    try:
        return "ok", fn(buf, pos, REL, plan)
    except (struct.error, IndexError):
        return "error", (ProtocolError, "message truncated")
    except Exception as exc:  # noqa: BLE001 - the comparison is the point: type and message
        return "error", (type(exc), str(exc))


def _same(buf: bytes, pos: int, plan: list[tuple[str, Any]]) -> tuple[str, Any]:
    py = _outcome(pgoutput._py_tuple, buf, pos, plan)
    c = _outcome(pgoutput._pgtuple.tuple_at, buf, pos, plan)
    assert c == py or repr(c) == repr(py), (buf, pos, plan)  # repr: float("nan") != float("nan")
    return py


def _float(text: str) -> float:
    return float(text)


# one column: (converter, value on the wire); the value is what tuple_data writes
_text = st.text(max_size=40)
_ints = st.integers(min_value=-(10**30), max_value=10**30).map(str)
_int_like = st.one_of(
    st.sampled_from(["", "-", "+5", " 7", "1_000", "0x10", "007", "-0", "12a", "1:", "/1", "٣", "9" * 19, "-" + "9" * 18]),
    # digits mixed with the characters next to them in ASCII, signs, spaces and underscores
    st.text(alphabet="0123456789-+/: _a", max_size=20),
)
_column = st.one_of(
    st.tuples(st.just(None), st.one_of(_text, st.none(), st.just(UNCHANGED_TOAST))),
    st.tuples(st.just(int), st.one_of(_ints, _int_like, st.none(), st.just(UNCHANGED_TOAST))),
    st.tuples(st.just(_float), st.one_of(st.floats(allow_nan=False).map(repr), _text)),
    st.tuples(st.sampled_from([None, int]), st.binary(max_size=12)),  # 'b': binary, kept as bytes
)


@settings(max_examples=300, deadline=None)
@given(columns=st.lists(_column, max_size=8), prefix=st.binary(max_size=3), extra_plan=st.integers(0, 2))
def test_valid_tuples_decode_the_same(columns: list[tuple[Any, Any]], prefix: bytes, extra_plan: int) -> None:
    plan = [(f"c{i}", conv) for i, (conv, _) in enumerate(columns)]
    # a relation may have more columns than an old tuple carries (plan cut to the tuple)
    plan += [(f"x{i}", None) for i in range(extra_plan)]
    buf = prefix + tuple_data([v for _, v in columns]) + b"tail"
    _same(buf, len(prefix), plan)


@settings(max_examples=150, deadline=None)
@given(columns=st.lists(_column, min_size=1, max_size=6), data=st.data())
def test_cut_short_or_corrupted_tuples_fail_the_same(columns: list[tuple[Any, Any]], data: st.DataObject) -> None:
    plan = [(f"c{i}", conv) for i, (conv, _) in enumerate(columns)]
    wire = tuple_data([v for _, v in columns])
    for cut in range(len(wire)):
        assert _same(wire[:cut], 0, plan)[0] == "error"
    at = data.draw(st.integers(0, len(wire) - 1))
    byte = data.draw(st.integers(0, 255))
    _same(wire[:at] + bytes([byte]) + wire[at + 1 :], 0, plan)


def test_column_counts_that_do_not_fit_fail_the_same() -> None:
    plan = [("a", None), ("b", int)]
    for n in (3, -1, -32768, 32767):
        kind, (exc, message) = _same(struct.pack(">h", n) + b"n" * 4, 0, plan)
        assert kind == "error" and exc is ProtocolError and "columns" in message


def test_integers_of_every_length_and_sign() -> None:
    for digits in range(1, 25):
        for text in ("9" * digits, "-" + "9" * digits, "1" + "0" * (digits - 1)):
            kind, (row, _, _) = _same(tuple_data([text]), 0, [("v", int)])
            assert kind == "ok" and row["v"] == int(text)


# -- row_at: a whole Insert / Update / Delete message, through the decoder's relation cache --------

RELID = 16385


def _decoder(columns: list[tuple[Any, Any]]) -> pgoutput.PgOutputDecoder:
    from actors.pgoutput import Column, Relation

    d = pgoutput.PgOutputDecoder()
    # the plan's converters are what converter_for gives each type: text and int4 cover both C branches
    cols = [Column(f"c{i}", 23 if conv is int else 25, i == 0) for i, (conv, _) in enumerate(columns)]
    d.relations[RELID] = Relation(RELID, "public", "t", "d", cols)
    return d


def _row_outcome(fn: Any, d: pgoutput.PgOutputDecoder, buf: bytes, pos: int) -> tuple[str, Any]:
    try:
        return "ok", fn(d, buf, pos)
    except (struct.error, IndexError):
        return "error", (ProtocolError, "message truncated")
    except Exception as exc:  # noqa: BLE001 - type and message are compared
        return "error", (type(exc), str(exc))


def _same_row(d: pgoutput.PgOutputDecoder, buf: bytes, pos: int) -> tuple[str, Any]:
    py = _row_outcome(pgoutput.PgOutputDecoder._py_row_at, d, buf, pos)
    c = _row_outcome(pgoutput._pgtuple.row_at, d, buf, pos)
    assert c == py or repr(c) == repr(py), (buf, pos)
    return py


_text_or_int = st.one_of(
    st.tuples(st.just(None), st.one_of(_text, st.none(), st.just(UNCHANGED_TOAST))),
    st.tuples(st.just(int), st.one_of(_ints, _int_like, st.none())),
)
_shape = st.sampled_from([b"IN", b"UN", b"UKN", b"UON", b"DK", b"DO", b"IK", b"UK", b"DN", b"BN", b"UKX"])


@settings(max_examples=200, deadline=None)
@given(columns=st.lists(_text_or_int, min_size=1, max_size=6), shape=_shape, relid=st.sampled_from([RELID, 7]),
       envelope=st.booleans(), data=st.data())
def test_row_messages_decode_and_fail_the_same(columns: list[tuple[Any, Any]], shape: bytes, relid: int,
                                               envelope: bool, data: st.DataObject) -> None:
    d = _decoder(columns)
    tup = tuple_data([v for _, v in columns])
    body = shape[:1] + struct.pack(">I", relid) + shape[1:2] + tup
    if len(shape) == 3:  # an update with an old tuple: old, then the new tuple's marker and tuple
        body += shape[2:3] + tup
    prefix = b"w" + bytes(24) if envelope else b""  # inside its XLogData envelope, as the reader reads it
    buf = prefix + body
    _same_row(d, buf, len(prefix))
    for cut in range(len(prefix), len(buf)):
        assert _same_row(d, buf[:cut], len(prefix))[0] == "error"
    at = data.draw(st.integers(len(prefix), len(buf) - 1))
    _same_row(d, buf[:at] + bytes([data.draw(st.integers(0, 255))]) + buf[at + 1 :], len(prefix))


def test_row_at_rebuilds_its_plan_after_a_new_relation_message_in_both() -> None:
    from actors.pgoutput import Column, Relation

    d = _decoder([(int, "1"), (None, "a")])
    message = b"I" + struct.pack(">I", RELID) + b"N" + tuple_data(["1", "a"])
    assert _same_row(d, message, 0)[1][2] == {"c0": 1, "c1": "a"}
    # the table's second column became an integer: a new Relation object, a new plan
    d.relations[RELID] = Relation(RELID, "public", "t", "d", [Column("c0", 25, True), Column("c1", 23, False)])
    kind, result = _same_row(d, b"I" + struct.pack(">I", RELID) + b"N" + tuple_data(["1", "2"]), 0)
    assert kind == "ok" and result[2] == {"c0": "1", "c1": 2}
