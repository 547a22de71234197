"""actors/source_schema.py: TableSpec rendering of text and payload."""

from __future__ import annotations

import pytest

from actors.source_schema import TableSpec
from actors.source_config import TableConfig


def spec(text: str = "{description}", payload: list[str] | None = None, key: list[str] | None = None) -> TableSpec:
    config = TableConfig(name="public.books", text=text, payload=payload or [])
    return TableSpec(config, key or ["id"], {"id": 23, "name": 25, "description": 25, "year": 21, "price": 1700})


def test_render_basic():
    text, payload = spec("{name}: {description}", ["name", "year"]).render(
        {"id": 1, "name": "Dune", "description": "Sand.", "year": 1965, "price": 9}
    )
    assert text == "Dune: Sand."
    assert payload == {"name": "Dune", "year": 1965}


def test_null_column_renders_empty_text():
    text, payload = spec("{description}", ["description"]).render({"id": 1, "description": None})
    assert text == ""
    assert payload == {"description": None}


def test_null_inside_template():
    text, _ = spec("{name} by {author}").render({"name": None, "author": "Herbert"})
    assert text == " by Herbert"
    assert "None" not in text


def test_non_string_values_are_formatted():
    text, _ = spec("{name} ({year}) {price}").render({"name": "Dune", "year": 1965, "price": 12.5})
    assert text == "Dune (1965) 12.5"


def test_format_spec_applies_to_non_null_and_null():
    s = spec("[{name:>6}]")
    assert s.render({"name": "ab"})[0] == "[    ab]"
    assert s.render({"name": None})[0] == "[]"


def test_payload_picks_only_configured_columns_in_order():
    s = spec("{description}", ["year", "name", "missing"])
    _, payload = s.render({"id": 1, "name": "Dune", "description": "d", "year": 1965, "extra": "x"})
    assert payload == {"year": 1965, "name": "Dune", "missing": None}
    assert list(payload) == ["year", "name", "missing"]
    assert "description" not in payload and "extra" not in payload and "id" not in payload


def test_empty_payload():
    assert spec("{description}").render({"description": "d"})[1] == {}


def test_escaped_braces_kept_literal():
    assert spec("{{x}} {description}").render({"description": "d"})[0] == "{x} d"


def test_key_of_and_name():
    s = spec(key=["tenant", "id"])
    assert s.name == "public.books"
    assert s.key_of({"id": 5, "tenant": "acme", "name": "n"}) == ("acme", 5)


@pytest.mark.parametrize(
    ("column", "text", "expected"),
    [("id", "5", 5), ("price", "1.5", 1.5), ("name", "5", "5"), ("unknown", "5", "5"), ("id", None, None)],
)
def test_convert_uses_column_type(column, text, expected):
    value = spec().convert(column, text)
    assert value == expected and type(value) is type(expected)
