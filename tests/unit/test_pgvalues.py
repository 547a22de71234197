"""actors/pgvalues.py: PostgreSQL text forms -> exact JSON-native values -> text forms again."""

from __future__ import annotations

import json
import pickle

import pytest

from actors import pgvalues as pv
from actors.changes import point_id
from actors.pgvalues import convert_text_value as convert
from actors.pgvalues import renderer_for

BOOL, INT2, INT4, INT8, TEXT, FLOAT4, FLOAT8, NUMERIC, JSON, JSONB = 16, 21, 23, 20, 25, 700, 701, 1700, 114, 3802
UUID, BYTEA, DATE, TS, TSTZ, BPCHAR, INET, VARCHAR = 2950, 17, 1082, 1114, 1184, 1042, 869, 1043
BOOL_A, INT4_A, INT8_A, NUMERIC_A, TEXT_A, VARCHAR_A, JSONB_A, JSON_A = 1000, 1007, 1016, 1231, 1009, 1015, 3807, 199
TSTZ_A, BYTEA_A, UUID_A, FLOAT8_A, DATE_A, BPCHAR_A, BOX_A = 1185, 1001, 2951, 1022, 1182, 1014, 1020


def same(value, expected) -> None:
    """Equal and of the same types all the way down (True == 1 == 1.0 in Python)."""
    assert value == expected
    assert json.dumps(value) == json.dumps(expected)
    if isinstance(expected, list):
        for v, e in zip(value, expected):
            same(v, e)
    else:
        assert type(value) is type(expected)


# -- scalars ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (BOOL, "t", True), (BOOL, "f", False), (BOOL, "true", True), (BOOL, "false", False),
        (INT2, "-32768", -32768), (INT8, "9223372036854775807", 9223372036854775807),
        (NUMERIC, "12345678901234567890", 12345678901234567890),
        (NUMERIC, "-17", -17),
        (NUMERIC, "12345678901234567890.1234567891", "12345678901234567890.1234567891"),
        (NUMERIC, "0.10", "0.10"),  # the scale as stored
        (NUMERIC, "5.00", "5.00"),
        (NUMERIC, "-0.000001", "-0.000001"),
        (NUMERIC, "NaN", "NaN"), (NUMERIC, "Infinity", "Infinity"), (NUMERIC, "-Infinity", "-Infinity"),
        (FLOAT8, "1.5", 1.5), (FLOAT8, "1e+15", 1e15), (FLOAT8, "NaN", "NaN"), (FLOAT4, "-Infinity", "-Infinity"),
        (JSONB, '{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}), (JSON, '"s"', "s"), (JSONB, "null", None),
        (TSTZ, "2024-01-02 03:04:05.123456+00", "2024-01-02T03:04:05.123456+00:00"),
        (TSTZ, "2024-01-02 03:04:05+00", "2024-01-02T03:04:05+00:00"),
        (TSTZ, "2024-01-02 03:04:05+05:30", "2024-01-02T03:04:05+05:30"),
        (TSTZ, "1900-01-01 00:00:00-00:09:21", "1900-01-01T00:00:00-00:09:21"),
        (TSTZ, "infinity", "infinity"), (TSTZ, "-infinity", "-infinity"),
        (TSTZ, "0044-03-15 12:00:00+00 BC", "0044-03-15 12:00:00+00 BC"),
        (TS, "2024-01-02 03:04:05.5", "2024-01-02T03:04:05.5"), (TS, "infinity", "infinity"),
        (DATE, "2024-01-31", "2024-01-31"), (DATE, "-infinity", "-infinity"),
        (UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (BYTEA, "\\x0102ff", "AQL/"), (BYTEA, "\\x", ""),
        (BPCHAR, "ab  ", "ab"),  # what bpchar::text gives: the backfill's form
        (INET, "10.0.0.1/32", "10.0.0.1"), (INET, "10.0.0.0/8", "10.0.0.0/8"), (INET, "::1/128", "::1"),
        (TEXT, "t", "t"), (VARCHAR, "42", "42"), (TEXT, "", ""),
    ],
)
def test_scalar_values(oid, text, expected):
    same(convert(oid, text), expected)


@pytest.mark.parametrize("oid", [BOOL, INT4, NUMERIC, JSONB, TSTZ, BYTEA, TEXT, INT4_A, 424242])
def test_null_is_none(oid):
    assert convert(oid, None) is None


def test_numeric_keys_beyond_float_precision_stay_distinct():
    a, b = convert(NUMERIC, "12345678901234567890.1234567891"), convert(NUMERIC, "12345678901234567890.1234567892")
    assert a != b
    assert point_id("public.t", (a,)) != point_id("public.t", (b,))
    # integral numerics are ints, so the point id of an integer numeric key is what it always was
    assert point_id("public.t", (convert(NUMERIC, "42"),)) == point_id("public.t", (42,))


def test_numeric_beyond_the_int_conversion_limit_stays_exact_text():
    digits = "9" * 5000
    assert convert(NUMERIC, digits) == digits


def test_both_bool_forms_read_the_same():
    assert convert(BOOL, "t") is convert(BOOL, "true") is True
    assert convert(BOOL, "f") is convert(BOOL, "false") is False


# -- arrays -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "text", "expected"),
    [
        (INT4_A, "{1,2,3}", [1, 2, 3]),
        (INT4_A, "{}", []),
        (INT4_A, "{1,NULL,3}", [1, None, 3]),
        (INT4_A, "{{1,2},{3,NULL}}", [[1, 2], [3, None]]),
        (INT4_A, "{{{1},{2}},{{3},{4}}}", [[[1], [2]], [[3], [4]]]),
        (INT4_A, "[0:2]={7,8,9}", [7, 8, 9]),  # lower bound not 1: bounds dropped
        (INT8_A, "{9223372036854775807}", [9223372036854775807]),
        (BOOL_A, "{t,f,NULL}", [True, False, None]),
        (NUMERIC_A, "{1,12345678901234567890.1234567891,NaN}", [1, "12345678901234567890.1234567891", "NaN"]),
        (FLOAT8_A, "{1.5,-Infinity}", [1.5, "-Infinity"]),
        (TEXT_A, "{a,b}", ["a", "b"]),
        (TEXT_A, '{"a b","c,d","e\\"f","g\\\\h","","NULL",NULL,"{x}"}', ["a b", "c,d", 'e"f', "g\\h", "", "NULL", None, "{x}"]),
        (TEXT_A, '{{a,"b}"},{"",NULL}}', [["a", "b}"], ["", None]]),
        (TEXT_A, '{"zweite Zeile ✓","東京"}', ["zweite Zeile ✓", "東京"]),
        (VARCHAR_A, '{"x\\\\"}', ["x\\"]),
        (JSONB_A, '{"{\\"a\\": 1}","[1, 2]",NULL,"\\"s\\""}', [{"a": 1}, [1, 2], None, "s"]),
        (JSON_A, '{"{\\"k\\":\\"v,w\\"}"}', [{"k": "v,w"}]),
        (TSTZ_A, '{"2024-01-02 03:04:05+00",infinity}', ["2024-01-02T03:04:05+00:00", "infinity"]),
        (DATE_A, "{2024-01-31,NULL}", ["2024-01-31", None]),
        (BYTEA_A, '{"\\\\x0102","\\\\x"}', ["AQI=", ""]),
        (UUID_A, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        (BPCHAR_A, '{"ab  ",cd}', ["ab", "cd"]),
        (BOX_A, "{(3,4),(1,2);(6,6),(5,5)}", ["(3,4),(1,2)", "(6,6),(5,5)"]),  # box arrays use ';'
    ],
)
def test_arrays(oid, text, expected):
    same(convert(oid, text), expected)


def test_int2vector_is_not_an_array_literal():
    assert convert(22, "1 2") == "1 2"


def test_a_malformed_array_stays_text():
    assert convert(INT4_A, "{1,2") == "{1,2"
    assert convert(TEXT_A, '{"unterminated}') == '{"unterminated}'


def test_arrays_of_catalog_types():
    """An enum array (element type from the catalog) and a domain over int, and an array of it."""
    enum, enum_array, posint, posint_array = 16390, 16391, 16400, 16401
    types = {enum_array: (enum_array, enum), posint: (INT4, 0), posint_array: (posint_array, posint)}
    same(convert(enum_array, "{happy,sad}", types), ["happy", "sad"])
    same(convert(posint, "5", types), 5)
    same(convert(posint_array, "{1,NULL}", types), [1, None])
    assert convert(enum_array, "{happy,sad}") == "{happy,sad}"  # unknown without the catalog: text


def test_converters_pickle():
    """TableSpec keeps converters and renderers; Ray ships it to the reader actor."""
    for oid in (BOOL, INT4, NUMERIC, TSTZ, INT4_A, JSONB_A, BOX_A, FLOAT4):
        for fn in (pv.converter_for(oid), renderer_for(oid)):
            if fn is not None:
                pickle.loads(pickle.dumps(fn))


# -- value -> text (the template) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "text", "rendered"),
    [
        (BOOL, "t", "true"), (BOOL, "false", "false"),
        (NUMERIC, "12345678901234567890.1234567891", "12345678901234567890.1234567891"),
        (NUMERIC, "5.00", "5.00"), (NUMERIC, "42", "42"), (NUMERIC, "NaN", "NaN"),
        (INT8, "-9", "-9"),
        (JSONB, '{"a": [1, 2], "b": {"c": "ü"}}', '{"a": [1, 2], "b": {"c": "ü"}}'),  # jsonb's own layout
        (JSON, '{"a":1}', '{"a": 1}'),
        (TSTZ, "2024-01-02 03:04:05.123456+00", "2024-01-02 03:04:05.123456+00"),
        (TSTZ, "2024-01-02 03:04:05+05:30", "2024-01-02 03:04:05+05:30"),
        (TSTZ, "infinity", "infinity"),
        (TS, "2024-01-02 03:04:05", "2024-01-02 03:04:05"),
        (DATE, "2024-01-31", "2024-01-31"),
        (BYTEA, "\\x0102ff", "\\x0102ff"),
        (UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        (TEXT, "plain", "plain"),
        (FLOAT8, "1.5", "1.5"), (FLOAT8, "1e+15", "1e+15"), (FLOAT8, "123456789012345", "123456789012345"),
        (FLOAT8, "1e-05", "1e-05"), (FLOAT8, "0.0001", "0.0001"), (FLOAT8, "-2.5e-100", "-2.5e-100"),
        (FLOAT8, "0.1", "0.1"), (FLOAT8, "-0", "-0"), (FLOAT8, "NaN", "NaN"), (FLOAT8, "1.7976931348623157e+308", "1.7976931348623157e+308"),
        (FLOAT4, "1e+06", "1e+06"), (FLOAT4, "123456", "123456"), (FLOAT4, "3.4028235e+38", "3.4028235e+38"),
        (INT4_A, "{{1,2},{3,NULL}}", "{{1,2},{3,NULL}}"),
        (BOOL_A, "{t,f,NULL}", "{t,f,NULL}"),
        (TEXT_A, '{"a b","c,d","e\\"f","g\\\\h","","NULL",NULL,"{x}"}', '{"a b","c,d","e\\"f","g\\\\h","","NULL",NULL,"{x}"}'),
        (TEXT_A, "{}", "{}"),
        (NUMERIC_A, "{1,1.50}", "{1,1.50}"),
        (JSONB_A, '{"{\\"a\\": 1}","[1, 2]"}', '{"{\\"a\\": 1}","[1, 2]"}'),
        (TSTZ_A, '{"2024-01-02 03:04:05+00"}', '{"2024-01-02 03:04:05+00"}'),
        (BYTEA_A, '{"\\\\x0102"}', '{"\\\\x0102"}'),
        (BOX_A, "{(3,4),(1,2);(6,6),(5,5)}", "{(3,4),(1,2);(6,6),(5,5)}"),
    ],
)
def test_render_gives_postgres_text_form(oid, text, rendered):
    assert pv.render_value(convert(oid, text), renderer_for(oid)) == rendered


def test_render_null_is_empty():
    assert pv.render_value(None, renderer_for(JSONB)) == ""
    assert pv.render_value(None, None) == ""


def test_render_is_the_same_from_either_text_form():
    """Backfill reads 'true' and 'ab' (casts), pgoutput sends 't' and 'ab  ': one text either way."""
    for oid, streamed, backfilled in [(BOOL, "t", "true"), (BPCHAR, "ab  ", "ab"), (INET, "1.2.3.4", "1.2.3.4/32")]:
        a, b = convert(oid, streamed), convert(oid, backfilled)
        same(a, b)
        assert pv.render_value(a, renderer_for(oid)) == pv.render_value(b, renderer_for(oid))


def test_array_round_trip_of_awkward_elements():
    values = ["", "NULL", "null", "a,b", "{", "}", '"', "\\", " lead", "trail ", "tab\there", "new\nline", "ü", None]
    text = pv.array_text(values)
    assert pv.parse_array(text) == values


def test_index_kind_follows_the_column_type():
    from actors.pgvalues import index_kind

    # int2, int4, int8 | float4, float8, numeric | bool | text, varchar, date, timestamptz, uuid | int4[], text[]
    assert [index_kind(t) for t in (21, 23, 20)] == ["integer"] * 3
    assert [index_kind(t) for t in (700, 701, 1700)] == ["float"] * 3
    assert index_kind(16) == "bool"
    assert [index_kind(t) for t in (25, 1043, 1082, 1184, 2950)] == ["keyword"] * 5
    assert index_kind(1007) == "integer" and index_kind(1009) == "keyword"
    # a domain over int8 (the catalog resolves it to its base type)
    assert index_kind(90001, {90001: (20, 0)}) == "integer"
