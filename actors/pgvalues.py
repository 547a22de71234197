"""PostgreSQL values, exactly: text form -> JSON-native value -> text form again.

Pure functions, no connection.  Both ways a row reaches the reader give the
*text* form of each column: pgoutput sends it, and the backfill (and the TOAST
fetch, and ``verify``) read ``col::text``.  :func:`converter_for` turns that
text into the value stored as key or payload, :func:`renderer_for` turns the
value back into PostgreSQL's text form for the text template.  The two reads
differ only where ``::text`` is a cast function rather than the type's output
function (bool 'true' vs 't', bpchar without its padding, inet with a /32),
and the converters accept both, so a row is identical from either path.

The source connections fix ``DateStyle=ISO``, ``TimeZone=UTC``,
``IntervalStyle=postgres``, ``extra_float_digits=1`` and ``bytea_output=hex``
(``actors.source_schema.connect``), so every text form below is the one
these functions expect, in the walsender too.

Values:

* integers -> ``int``; ``numeric`` -> ``int`` when integral (no fraction
  printed), else the exact decimal text as PostgreSQL prints it ('1.50',
  'NaN', 'Infinity'): never a float.  ``float4``/``float8`` -> ``float``
  (NaN/Infinity stay text, strict JSON has no such numbers).
* ``bool`` -> ``bool`` ('t'/'f' and 'true'/'false').
* ``json``/``jsonb`` -> parsed JSON.
* arrays (any element type, nested, NULLs) -> lists, each element converted
  by the element type.  Array OID -> element OID: :data:`ARRAY_ELEMENTS` for
  the built-in types, the catalog (``types``, see :func:`converter_for`) for
  the rest.
* ``timestamptz`` -> ISO 8601 with offset ('2024-01-02T03:04:05.123456+00:00'),
  ``timestamp`` -> ISO 8601 without; 'infinity', '-infinity' and BC dates stay
  text.  ``date`` and everything else (text, uuid, interval, enums, ...) ->
  the text itself.
* ``bytea`` -> base64 of the bytes.  NULL -> ``None`` (callers pass None on).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Callable, Mapping

Converter = Callable[[str], Any]
Renderer = Callable[[Any], str]
#: catalog knowledge the built-in tables lack: type OID -> (base type OID, array element OID or 0).
#: A domain maps to its base type; an array type not in ARRAY_ELEMENTS to its element (itself resolved).
TypeCatalog = Mapping[int, "tuple[int, int]"]

# -- type OIDs (pg_type.dat) -------------------------------------------------------

BOOL = 16
BYTEA = 17
INT8, INT2, INT4, OID = 20, 21, 23, 26
TEXT = 25
JSON = 114
FLOAT4, FLOAT8 = 700, 701
BOX = 603
INET = 869
BPCHAR = 1042
VARCHAR = 1043
DATE = 1082
TIMESTAMP = 1114
TIMESTAMPTZ = 1184
NUMERIC = 1700
UUID = 2950
JSONB = 3802
INTS = frozenset({INT8, INT2, INT4, OID})
FLOATS = frozenset({FLOAT4, FLOAT8})
JSONS = frozenset({JSON, JSONB})

#: built-in array type OID -> element type OID (pg_type.dat; int2vector/oidvector are not
#: written as arrays and stay text)
ARRAY_ELEMENTS: dict[int, int] = {
    143: 142,  # xml
    199: JSON,
    271: 5069,  # xid8
    629: 628,  # line
    651: 650,  # cidr
    719: 718,  # circle
    775: 774,  # macaddr8
    791: 790,  # money
    1000: BOOL,
    1001: BYTEA,
    1002: 18,  # "char"
    1003: 19,  # name
    1005: INT2,
    1007: INT4,
    1009: TEXT,
    1011: 28,  # xid
    1014: BPCHAR,
    1015: VARCHAR,
    1016: INT8,
    1017: 600,  # point
    1018: 601,  # lseg
    1019: 602,  # path
    1020: BOX,
    1021: FLOAT4,
    1022: FLOAT8,
    1027: 604,  # polygon
    1028: OID,
    1040: 829,  # macaddr
    1041: INET,
    1115: TIMESTAMP,
    1182: DATE,
    1183: 1083,  # time
    1185: TIMESTAMPTZ,
    1187: 1186,  # interval
    1231: NUMERIC,
    1270: 1266,  # timetz
    1561: 1560,  # bit
    1563: 1562,  # varbit
    2201: 1790,  # refcursor
    2951: UUID,
    3221: 3220,  # pg_lsn
    3643: 3614,  # tsvector
    3645: 3615,  # tsquery
    3807: JSONB,
    3905: 3904,  # int4range
    3907: 3906,  # numrange
    3909: 3908,  # tsrange
    3911: 3910,  # tstzrange
    3913: 3912,  # daterange
    3927: 3926,  # int8range
    4073: 4072,  # jsonpath
    6150: 4451,  # int4multirange
    6151: 4532,  # nummultirange
    6152: 4533,  # tsmultirange
    6153: 4534,  # tstzmultirange
    6155: 4535,  # datemultirange
    6157: 4536,  # int8multirange
}

#: element types whose array text form separates elements with ';' (typdelim)
_SEMICOLON_DELIMITED = frozenset({BOX})


# -- text -> value -----------------------------------------------------------------


def to_bool(text: str) -> bool:
    """'t'/'f' (output function, pgoutput) and 'true'/'false' (``bool::text``)."""
    return text == "t" or text == "true"


def to_float(text: str) -> float | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text  # NaN/Infinity are not JSON


def to_numeric(text: str) -> int | str:
    """Integral numerics as ``int`` (point ids of integer keys stay what they were), the
    rest as the exact text PostgreSQL printed: never a float, which would merge keys that
    differ beyond its 17 digits and change the payload's digits."""
    digits = text[1:] if text[:1] == "-" else text
    if digits.isdigit() and digits.isascii():
        try:
            return int(text)
        except ValueError:  # longer than Python's int/str conversion limit: keep it exact as text
            return text
    return text


def to_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is_special_datetime(text: str) -> bool:
    """'infinity', '-infinity', and BC dates: no ISO 8601 form, kept as PostgreSQL's text."""
    return text[-1:] == "y" or text[-3:] == " BC"


def to_timestamptz(text: str) -> str:
    """'2024-01-02 03:04:05.123456+00' -> '2024-01-02T03:04:05.123456+00:00' (ISO 8601)."""
    if _is_special_datetime(text):
        return text
    day, sep, rest = text.partition(" ")
    if not sep:
        return text
    cut = max(rest.rfind("+"), rest.rfind("-"))
    if cut < 0:
        return f"{day}T{rest}"
    offset = rest[cut:]
    if len(offset) == 3:  # '+HH': whole hours are printed without minutes
        offset += ":00"
    return f"{day}T{rest[:cut]}{offset}"


def to_timestamp(text: str) -> str:
    """'2024-01-02 03:04:05' -> '2024-01-02T03:04:05' (ISO 8601, no offset)."""
    if _is_special_datetime(text):
        return text
    return text.replace(" ", "T", 1)


def to_base64(text: str) -> str:
    """bytea's hex text form '\\x0102' -> base64 of the bytes ('AQI=')."""
    if text[:2] != "\\x":
        return text  # not the hex form (bytea_output is fixed to hex on our connections)
    try:
        return base64.b64encode(bytes.fromhex(text[2:])).decode("ascii")
    except ValueError:
        return text


def to_bpchar(text: str) -> str:
    """char(n) without its padding: what ``bpchar::text`` returns (the output function pads)."""
    return text.rstrip(" ")


def to_inet(text: str) -> str:
    """inet as its output function prints it: ``inet::text`` adds the host mask (/32, /128)."""
    if text.endswith("/32") and ":" not in text:
        return text[:-3]
    if text.endswith("/128") and ":" in text:
        return text[:-4]
    return text


_SCALAR_CONVERTERS: dict[int, Converter] = {
    BOOL: to_bool,
    **{oid: int for oid in INTS},
    **{oid: to_float for oid in FLOATS},
    NUMERIC: to_numeric,
    **{oid: to_json for oid in JSONS},
    TIMESTAMPTZ: to_timestamptz,
    TIMESTAMP: to_timestamp,
    BYTEA: to_base64,
    BPCHAR: to_bpchar,
    INET: to_inet,
}

# -- arrays -------------------------------------------------------------------------

_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_BACKSLASHED = re.compile(r"\\(.)", re.S)


def _element(token: str, convert: Converter | None) -> Any:
    return token if convert is None else convert(token)


def parse_array(text: str, convert: Converter | None = None, delim: str = ",") -> Any:
    """PostgreSQL's array text form as (nested) lists, each element through ``convert``.

    Handles NULL elements, quoted elements (with escaped quotes and backslashes),
    nesting, '{}' and the '[lower:upper]=' prefix of arrays not based at 1 (the
    bounds are dropped).  Anything that is not an array literal stays text.
    """
    body = text
    if body[:1] == "[":
        eq = body.find("=")
        if eq < 0:
            return text
        body = body[eq + 1 :]
    if body[:1] != "{" or body[-1:] != "}":
        return text
    if '"' not in body and "\\" not in body and "{" not in body[1:]:
        # one dimension, nothing quoted: the common case
        inner = body[1:-1]
        if not inner:
            return []
        return [None if t == "NULL" else _element(t, convert) for t in inner.split(delim)]
    try:
        value, end = _parse_dimension(body, 0, convert, delim)
    except (IndexError, ValueError):
        return text
    return value if end == len(body) else text


def _parse_dimension(s: str, i: int, convert: Converter | None, delim: str) -> tuple[list[Any], int]:
    """Parse the '{...}' starting at ``s[i]``; returns (elements, index after its '}')."""
    out: list[Any] = []
    i += 1
    if s[i] == "}":
        return out, i + 1
    while True:
        c = s[i]
        if c == "{":
            sub, i = _parse_dimension(s, i, convert, delim)
            out.append(sub)
        elif c == '"':
            m = _QUOTED.match(s, i)
            if m is None:
                raise ValueError("unterminated quoted array element")
            raw = m.group(1)
            out.append(_element(_BACKSLASHED.sub(r"\1", raw) if "\\" in raw else raw, convert))
            i = m.end()
        else:
            j = i
            while s[j] != delim and s[j] != "}":
                j += 2 if s[j] == "\\" else 1
            token = s[i:j].strip()
            if token.upper() == "NULL":
                out.append(None)
            else:
                out.append(_element(_BACKSLASHED.sub(r"\1", token) if "\\" in token else token, convert))
            i = j
        c = s[i]
        if c == delim:
            i += 1
        elif c == "}":
            return out, i + 1
        else:
            raise ValueError(f"unexpected {c!r} in array literal")


# -- type resolution ------------------------------------------------------------------


def resolve(type_oid: int, types: TypeCatalog | None = None) -> tuple[int, int]:
    """(base type, array element type or 0) of ``type_oid``: the catalog first, then the built-ins."""
    if types:
        known = types.get(type_oid)
        if known is not None:
            return known
    return type_oid, ARRAY_ELEMENTS.get(type_oid, 0)


def converter_for(type_oid: int, types: TypeCatalog | None = None) -> Converter | None:
    """Text -> value function for one column type; None when the text is the value.

    The decoder calls it once per column of a Relation, so the per-row work is
    one call (or none for text-like columns; ``int`` itself for integers).
    """
    base, element = resolve(type_oid, types)
    if element:
        delim = ";" if resolve(element, types)[0] in _SEMICOLON_DELIMITED else ","
        return partial(parse_array, convert=converter_for(element, types), delim=delim)
    return _SCALAR_CONVERTERS.get(base)


def convert_text_value(type_oid: int, text: str | None, types: TypeCatalog | None = None) -> Any:
    """One column's text form as its JSON-native value (None for NULL)."""
    if text is None:
        return None
    convert = converter_for(type_oid, types)
    return text if convert is None else convert(text)


def is_known(type_oid: int) -> bool:
    """True when the built-in tables say all there is to know about ``type_oid``
    (only other types need a catalog look-up: domains, enums, extension types, their arrays)."""
    return type_oid < 10000 and (type_oid in _SCALAR_CONVERTERS or type_oid in ARRAY_ELEMENTS or type_oid in _PLAIN_TEXT)


#: built-in scalar types whose text form is kept as is
_PLAIN_TEXT = frozenset({18, 19, TEXT, 142, 600, 601, 602, 603, 604, 628, 650, 718, 774, 790, 829, VARCHAR,
                         DATE, 1083, 1186, 1266, 1560, 1562, UUID, 3220, 3614, 3615, 3904, 3906, 3908, 3910,
                         3912, 3926, 4072})


# -- value -> text (the text template) ---------------------------------------------------


def bool_text(value: Any) -> str:
    """``bool::text``: 'true' / 'false'."""
    if type(value) is bool:
        return "true" if value else "false"
    return str(value)


def _bool_element_text(value: Any) -> str:
    """A bool inside an array prints as 't' / 'f' (array_out uses the output function)."""
    if type(value) is bool:
        return "t" if value else "f"
    return str(value)


def float_text(value: Any, float4: bool = False) -> str:
    """A float as PostgreSQL prints it with extra_float_digits=1: the shortest digits that
    read back exactly (what Python's repr picks too), in fixed notation for decimal exponents
    -4 <= e < 15 (float4: < 6), otherwise as '1.5e+20' / '1e-05'."""
    if type(value) is not float:
        return str(value)  # NaN/Infinity arrive as their text
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    point = len(digits) + int(exponent)  # digits before the decimal point
    exp10 = point - 1
    minus = "-" if sign else ""
    if -4 <= exp10 < (6 if float4 else 15):
        if point <= 0:
            return f"{minus}0.{'0' * -point}{text}"
        if point >= len(text):
            return f"{minus}{text}{'0' * (point - len(text))}"
        return f"{minus}{text[:point]}.{text[point:]}"
    mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
    return f"{minus}{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"


def json_text(value: Any) -> str:
    """JSON text the way jsonb prints it (', ' and ': ' separators, no ASCII escaping)."""
    return json.dumps(value, ensure_ascii=False)


def timestamptz_text(value: Any) -> str:
    """ISO 8601 back to PostgreSQL's form: '2024-01-02 03:04:05+00' (offset minutes only when not zero)."""
    if type(value) is not str or "T" not in value:
        return str(value)
    text = value.replace("T", " ", 1)
    if len(text) > 6 and text[-6] in "+-" and text[-3:] == ":00":
        text = text[:-3]
    return text


def timestamp_text(value: Any) -> str:
    return value.replace("T", " ", 1) if type(value) is str else str(value)


def bytea_text(value: Any) -> str:
    """base64 back to bytea's hex form '\\x0102'."""
    if type(value) is not str:
        return str(value)
    try:
        return "\\x" + base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value


_ARRAY_QUOTE = re.compile(r'[{}"\\ \t\n\r\v\f]')


def array_text(value: Any, render: Renderer | None = None, delim: str = ",", json_elements: bool = False) -> str:
    """(Nested) lists back to PostgreSQL's array text form '{a,"b c",NULL}'.

    With ``json_elements`` a list is an element (a JSON array), not a dimension:
    json[]/jsonb[] are written as one-dimensional.
    """
    if type(value) is not list:
        return str(value)
    parts = []
    for item in value:
        if item is None:
            parts.append("NULL")
            continue
        if type(item) is list and not json_elements:
            parts.append(array_text(item, render, delim, json_elements))
            continue
        text = item if render is None and type(item) is str else (render(item) if render else str(item))
        if not text or text.upper() == "NULL" or delim in text or _ARRAY_QUOTE.search(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(text)
    return "{" + delim.join(parts) + "}"


_SCALAR_RENDERERS: dict[int, Renderer] = {
    BOOL: bool_text,
    FLOAT4: partial(float_text, float4=True),
    FLOAT8: float_text,
    **{oid: json_text for oid in JSONS},
    TIMESTAMPTZ: timestamptz_text,
    TIMESTAMP: timestamp_text,
    BYTEA: bytea_text,
}


def renderer_for(type_oid: int, types: TypeCatalog | None = None) -> Renderer | None:
    """Value -> PostgreSQL text form for one column type; None when ``str(value)`` is
    that form already (text-like types, integers, numerics)."""
    base, element = resolve(type_oid, types)
    if element:
        element_base = resolve(element, types)[0]
        render = _bool_element_text if element_base == BOOL else renderer_for(element, types)
        return partial(array_text, render=render, delim=";" if element_base in _SEMICOLON_DELIMITED else ",",
                       json_elements=element_base in JSONS)
    return _SCALAR_RENDERERS.get(base)


def render_value(value: Any, render: Renderer | None) -> str:
    """One value in the text template: '' for NULL."""
    if value is None:
        return ""
    return render(value) if render is not None else str(value)


def is_numeric_type(type_oid: int, types: TypeCatalog | None = None) -> bool:
    return resolve(type_oid, types) == (NUMERIC, 0)


def numeric_for_format(value: Any) -> Any:
    """A numeric's exact text as a Decimal, so format specs like ``{price:.2f}`` apply to it."""
    if type(value) is str:
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value


def index_kind(type_oid: int, types: TypeCatalog | None = None) -> str:
    """The payload index a column's values need (``actors.sinks.base.PAYLOAD_INDEX_KINDS``).

    Integers -> ``integer``, ``float4``/``float8``/``numeric`` -> ``float``
    (a fractional numeric is stored as its exact text, which no range matches:
    filter it by equality), ``bool`` -> ``bool``, everything else (text,
    dates as ISO text, uuids, enums...) -> ``keyword``.  An array column takes
    its element's kind (a filter matches any element).
    """
    base, element = resolve(type_oid, types)
    kind = element or base
    if element:
        kind = resolve(element, types)[0]
    if kind in INTS:
        return "integer"
    if kind in FLOATS or kind == NUMERIC:
        return "float"
    if kind == BOOL:
        return "bool"
    return "keyword"
