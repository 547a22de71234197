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
    [("id", "5", 5), ("price", "1.5", "1.5"), ("price", "7", 7), ("name", "5", "5"), ("unknown", "5", "5"), ("id", None, None)],
)
def test_convert_uses_column_type(column, text, expected):
    value = spec().convert(column, text)
    assert value == expected and type(value) is type(expected)


def typed_spec(text: str, payload: list[str] | None = None) -> TableSpec:
    config = TableConfig(name="public.items", text=text, payload=payload or [])
    types = {"id": 23, "flag": 16, "meta": 3802, "amount": 1700, "tags": 1009, "at": 1184, "raw": 17, "f": 701}
    return TableSpec(config, ["id"], types)


def test_render_prints_postgres_text_forms_not_python_reprs():
    s = typed_spec("{flag}|{meta}|{amount}|{tags}|{at}|{raw}|{f}")
    row = {c: s.convert(c, t) for c, t in {
        "flag": "t", "meta": '{"b": 1, "a": [true, null]}', "amount": "12345678901234567890.1234567891",
        "tags": '{a,"b c"}', "at": "2024-01-02 03:04:05+00", "raw": "\\x00ff", "f": "1e+15"}.items()}
    text, _ = s.render(row)
    assert text == ('true|{"b": 1, "a": [true, null]}|12345678901234567890.1234567891|{a,"b c"}|'
                    "2024-01-02 03:04:05+00|\\x00ff|1e+15")


def test_non_plain_template_applies_specs_to_exact_values():
    s = typed_spec("{amount:>8.2f} {flag!s} {flag} {meta} [{tags:>10}] {amount} {f:.1f} {flag:>5}")
    row = {"amount": s.convert("amount", "3.14159"), "flag": True, "meta": {"a": 7}, "tags": ["x"], "f": 2.25}
    text, _ = s.render(row)
    assert text == '    3.14 True true {"a": 7} [       {x}] 3.14159 2.2  true'
    assert s.render({**row, "amount": None})[0].startswith(" True")


def test_key_texts_read_back_as_the_column_types():
    s = TableSpec(TableConfig(name="public.k", text="{id}", payload=[]), ["id", "raw", "flag"],
                  {"id": 1700, "raw": 17, "flag": 16})
    key = (s.convert("id", "1.50"), s.convert("raw", "\\x0a"), s.convert("flag", "t"))
    assert s.key_texts(key) == ["1.50", "\\x0a", "true"]


def test_a_spec_pickles_with_its_converters():
    """Ray ships specs to the reader actor: converters, renderers and catalog types travel too."""
    import pickle

    s = typed_spec("{flag} {tags}", ["amount", "tags"])
    s.set_types({16400: (16400, 16390)})
    copy = pickle.loads(pickle.dumps(s))
    row = {"flag": copy.convert("flag", "t"), "tags": copy.convert("tags", "{a,NULL}"), "amount": copy.convert("amount", "1.50")}
    assert copy.render(row) == s.render(row) == ("true {a,NULL}", {"amount": "1.50", "tags": ["a", None]})
    assert copy.types == {16400: (16400, 16390)}


@pytest.mark.parametrize(
    "template",
    ["{name}", "{name} {name}", "{{{name}}} {{ }} {year}", "{description}: {name} ({year})", "{year}{name}{year}"],
)
def test_plain_templates_render_as_format_map_with_nulls_blank(template):
    """render fills a numbered copy of a plain template; the text must be what format_map of
    the values (NULL as "") gives, for repeated fields and escaped braces too."""
    s = spec(template, ["name"])
    for row in ({"name": "Dune", "description": "Sand.", "year": 1965},
                {"name": None, "description": "x", "year": None},
                {"name": "{0}", "description": "{name}", "year": 0}):
        blank = {k: "" if v is None else v for k, v in row.items()}
        assert s.render(row) == (template.format_map(blank), {"name": row["name"]})


def test_plain_template_with_renderers_and_nulls():
    s = typed_spec("{flag} {meta} {id}", ["flag"])
    assert s.render({"flag": False, "meta": None, "id": 3}) == ("false  3", {"flag": False})
    assert s.render({"flag": None, "meta": [1, "a"], "id": None}) == (' [1, "a"] ', {"flag": None})


def test_render_of_a_row_without_a_template_column_raises_key_error():
    with pytest.raises(KeyError):
        spec("{name} {description}").render({"name": "x"})


@pytest.mark.parametrize("template", ["{name}", "{name} {year}"])
def test_a_spec_pickles_with_its_compiled_template(template):
    import pickle

    s = spec(template, ["year"])
    row = {"name": "Dune", "year": 1965}
    assert pickle.loads(pickle.dumps(s)).render(row) == s.render(row)
