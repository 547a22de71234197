"""actors/changes.py: deterministic point ids, LSN text form, ChangeBatch helpers."""

from __future__ import annotations

import datetime
import decimal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from actors.changes import (
    Change,
    ChangeBatch,
    canonical_key,
    format_lsn,
    parse_lsn,
    point_id,
    text_hash,
)


def test_point_id_is_a_uuid_string():
    pid = point_id("public.books", (1,))
    assert isinstance(pid, str)
    assert str(uuid.UUID(pid)) == pid
    assert uuid.UUID(pid).version == 5


def test_point_id_deterministic_within_process():
    assert point_id("public.books", (1,)) == point_id("public.books", (1,))
    assert point_id("public.books", (1,)) == point_id("public.books", [1])  # tuple or list


def test_point_id_deterministic_across_processes():
    code = "from actors.changes import point_id; print(point_id('public.books', (42, 'x')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == point_id("public.books", (42, "x"))


def test_point_id_pinned_value():
    """Changing the namespace or key encoding would orphan every stored vector."""
    expected = str(uuid.uuid5(uuid.UUID("6f1c0c47-58a9-4d0b-9a8e-2f5b1c3e7d11"), '["public.books",[1]]'))
    assert point_id("public.books", (1,)) == expected


@pytest.mark.parametrize(
    "key",
    [(1,), (-7, "x"), ("é", "日本"), (1.5,), (True, None), (2**70,), ("a\"b\\c",),
     (datetime.date(2024, 5, 1),), (decimal.Decimal("1.10"),), (uuid.UUID(int=5),), ("",)],
)
def test_point_id_is_rfc4122_uuid5_of_the_canonical_key(key):
    """The fast path must give exactly uuid5(namespace, canonical key) for every key type."""
    expected = str(uuid.uuid5(uuid.UUID("6f1c0c47-58a9-4d0b-9a8e-2f5b1c3e7d11"), canonical_key("s.t", key)))
    assert point_id("s.t", key) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("public.books", (1,)), ("public.books", (2,))),
        (("public.books", (1,)), ("public.authors", (1,))),
        (("public.books", (1,)), ("other.books", (1,))),
        (("public.books", (1,)), ("public.books", ("1",))),  # key type matters
        (("public.books", (1,)), ("public.books", (1.5,))),
        (("public.books", (True,)), ("public.books", ("true",))),
        (("public.books", (None,)), ("public.books", ("None",))),
        (("public.books", (1, 2)), ("public.books", (12,))),
        (("public.books", (1, 2)), ("public.books", (2, 1))),
        (("public.books", ("a", "b")), ("public.books", ("a,b",))),
        (("public.books", ("a,b",)), ("public.books", ("a", "b"))),
        (("public.a", ("b.c",)), ("public.a.b", ("c",))),
    ],
)
def test_point_id_distinct(a, b):
    assert point_id(*a) != point_id(*b)


def test_point_ids_distinct_for_many_keys():
    ids = {point_id(t, (k,)) for t in ("public.a", "public.b") for k in range(500)}
    ids |= {point_id("public.a", (str(k),)) for k in range(500)}
    assert len(ids) == 1500


def test_canonical_key_form():
    assert canonical_key("public.books", (1, "x")) == '["public.books",[1,"x"]]'
    assert canonical_key("public.books", ("é",)) == '["public.books",["é"]]'


def test_change_point_id_property():
    c = Change("upsert", "public.books", (3,), text="t")
    assert c.point_id == point_id("public.books", (3,))


def test_text_hash():
    assert text_hash("abc") == text_hash("abc")
    assert text_hash("abc") != text_hash("abd")
    assert len(text_hash("")) == 32
    int(text_hash("x"), 16)


@pytest.mark.parametrize(
    ("lsn", "text"),
    [(0, "0/0"), (0x16B3748, "0/16B3748"), (0x1_0000_0000, "1/0"), (0xAB_0000_00FF, "AB/FF"), (2**64 - 1, "FFFFFFFF/FFFFFFFF")],
)
def test_format_lsn(lsn, text):
    assert format_lsn(lsn) == text
    assert parse_lsn(text) == lsn


@pytest.mark.parametrize("lsn", [1, 255, 2**32 - 1, 2**32, 2**32 + 1, 0x1234_5678_9ABC_DEF0, 2**63])
def test_lsn_round_trip(lsn):
    assert parse_lsn(format_lsn(lsn)) == lsn


def test_lsn_none():
    assert format_lsn(None) == "-"
    assert parse_lsn(None) is None
    assert parse_lsn("") is None


def test_parse_lsn_lowercase():
    assert parse_lsn("ab/ff") == 0xAB_0000_00FF


def test_texts_to_embed_upserts_only_in_order():
    batch = ChangeBatch(
        seq=1,
        changes=[
            Change("upsert", "public.a", (1,), text="first"),
            Change("delete", "public.a", (2,)),
            Change("truncate", "public.b", ()),
            Change("upsert", "public.b", (3,), text=None),
            Change("upsert", "public.a", (4,), text="last"),
        ],
    )
    assert batch.texts_to_embed() == ["first", "", "last"]
    assert len(batch) == 5


def test_empty_batch_defaults():
    batch = ChangeBatch(seq=3)
    assert batch.texts_to_embed() == []
    assert len(batch) == 0
    assert batch.ack_lsn is None and batch.phase == "stream" and batch.snapshot_complete is False


def test_batches_do_not_share_change_lists():
    a, b = ChangeBatch(seq=1), ChangeBatch(seq=2)
    a.changes.append(Change("delete", "public.a", (1,)))
    assert b.changes == []
