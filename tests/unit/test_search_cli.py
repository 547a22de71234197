"""``embedcluster search``: filter expressions and the hits table (the HTTP path is in tests/integration)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from rich.console import Console

from cluster.cli import main
from cluster.search import hits_table, parse_filters


def test_expressions_become_the_json_filter():
    assert parse_filters([]) is None
    assert parse_filters(["year>=1950", "year<2000", "author=H.G. Wells", "ok==true", "genre in sf, fantasy,3"]) == {
        "year": {"gte": 1950, "lt": 2000}, "author": "H.G. Wells", "ok": True, "genre": {"in": ["sf", "fantasy", 3]}}
    assert parse_filters(["price > 2.5", "code='1950'", "title=in the dark"]) == {
        "price": {"gt": 2.5}, "code": "1950", "title": "in the dark"}
    assert parse_filters(['{"year": {"lte": 1900}}']) == {"year": {"lte": 1900}}


@pytest.mark.parametrize(("expr", "needle"), [
    ("year", "write FIELD=VALUE"), ("year>=", "write FIELD=VALUE"), ("year>=soon", "needs a number"),
    ("{nope", "not valid JSON"), ("[1]", "write FIELD=VALUE"),
])
def test_bad_expressions_name_themselves(expr, needle):
    with pytest.raises(ValueError) as info:
        parse_filters([expr])
    assert needle in str(info.value) and repr(expr) in str(info.value)


def test_hits_table_lists_payload_fields():
    console = Console(width=160, record=True)
    console.print(hits_table({"query": "space", "mode": "dense", "took_ms": 12.5, "results": [
        {"table": "public.books", "id": 7, "score": 0.61234, "payload": {"name": "The War of the Worlds", "year": 1898}},
        {"table": "public.books", "id": 9, "score": 0.5, "payload": {"name": "Dune", "author": "Herbert"}}]}))
    out = console.export_text()
    assert "2 hit(s) for 'space'" in out and "0.6123" in out and "The War of the Worlds" in out
    header = next(line for line in out.splitlines() if "score" in line)
    assert [c in header for c in ("name", "year", "author")] == [True, True, True]


def test_an_unreachable_app_is_one_line():
    result = CliRunner().invoke(main, ["search", "space", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "cannot reach the search app at http://127.0.0.1:9" in result.output and result.output.count("\n") == 1
    bad = CliRunner().invoke(main, ["search", "space", "--filter", "year>=soon", "--url", "http://127.0.0.1:9"])
    assert bad.exit_code == 2 and "needs a number" in bad.output
