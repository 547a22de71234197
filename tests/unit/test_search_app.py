"""serve_apps/search.py: query validation and result JSON (no Ray started)."""

from __future__ import annotations

import pytest

from actors.sinks.base import SearchHit
from serve_apps.search import MAX_K, hit_json, parse_query


def test_default_k():
    assert parse_query({"q": "sand planet"}) == ("sand planet", 5)


def test_query_is_stripped_and_k_parsed():
    assert parse_query({"q": "  dune  ", "k": "7"}) == ("dune", 7)


@pytest.mark.parametrize("k", ["1", "100", " 3"])
def test_k_bounds_accepted(k):
    assert parse_query({"q": "x", "k": k})[1] == int(k)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({}, "missing query"),
        ({"q": ""}, "missing query"),
        ({"q": "   \t\n"}, "missing query"),
        ({"k": "5"}, "missing query"),
        ({"q": "x", "k": "abc"}, "integer"),
        ({"q": "x", "k": "2.5"}, "integer"),
        ({"q": "x", "k": ""}, "integer"),
        ({"q": "x", "k": "0"}, "from 1 to 100"),
        ({"q": "x", "k": "-1"}, "from 1 to 100"),
        ({"q": "x", "k": "101"}, "from 1 to 100"),
    ],
)
def test_bad_params(params, needle):
    with pytest.raises(ValueError) as info:
        parse_query(params)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_max_k_is_100():
    assert MAX_K == 100


def test_k_error_shows_value():
    with pytest.raises(ValueError, match="101"):
        parse_query({"q": "x", "k": "101"})
    with pytest.raises(ValueError, match="'abc'"):
        parse_query({"q": "x", "k": "abc"})


def test_hit_json_single_column_key_is_scalar():
    hit = SearchHit(table="public.books", key=[7], score=0.875, payload={"name": "Dune"})
    assert hit_json(hit) == {"table": "public.books", "id": 7, "score": 0.875, "payload": {"name": "Dune"}}


def test_hit_json_single_text_key_is_scalar():
    assert hit_json(SearchHit("public.t", ["abc"], 0.5, {}))["id"] == "abc"


def test_hit_json_composite_key_is_list():
    hit = SearchHit(table="public.t", key=["acme", 7], score=0.5, payload={})
    out = hit_json(hit)
    assert out["id"] == ["acme", 7]
    assert isinstance(out["id"], list)
    assert out["table"] == "public.t" and out["score"] == 0.5 and out["payload"] == {}


def test_hit_json_is_json_serialisable():
    import json

    out = json.loads(json.dumps(hit_json(SearchHit("public.t", [1, "x"], 0.25, {"a": [1, None]}))))
    assert out == {"table": "public.t", "id": [1, "x"], "score": 0.25, "payload": {"a": [1, None]}}

