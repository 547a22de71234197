"""What both Qdrant sinks store and how they address it: one layout for a server and the embedded store.

Each point's payload holds ``table``, ``key``, ``text``, ``text_hash``,
``payload`` (the row's columns) and ``generation``.  Qdrant keeps payload
numbers as 64-bit integers or doubles, so an integer outside
``-2**63 .. 2**64 - 1`` (an integral ``numeric`` key or column, see
``actors/pgvalues.py``) would come back as a rounded float.  A point that holds
one also carries ``exact``: its ``key`` and ``payload`` as JSON text, which
reads prefer; the native fields stay (rounded) so that filters still see them.
Points without such a value carry no ``exact`` key.  State documents are
``{"name", "value"}`` (plus ``exact`` the same way) in a collection of their own.

Search filters (:class:`~actors.sinks.base.FieldFilter`) address row fields
as ``payload."<field>"`` (quoted unless the name is plain), so a field name
may hold dots, spaces or brackets.  Qdrant's JSON path has no escape inside quotes, so a name with a
double quote or a backslash is refused (:func:`field_path`).

Request sizes are upper bounds of the REST JSON body, computed per point
before anything is sent (see :func:`point_bytes`).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from actors.sinks.base import PAYLOAD_INDEX_KINDS, SEARCH_MODES, FieldFilter, StoredPoint, VectorPoint

#: the integers Qdrant stores exactly (an i64 or a u64 payload number)
_EXACT_INTS = (-(2**63), 2**64 - 1)

# Upper bounds of a REST request body, in bytes.
#: one vector component as JSON: at most 24 characters ("-2.2250738585072014e-308") and a comma
FLOAT_BYTES = 25
#: one point id in a list: the id's characters, two quotes and a comma
ID_QUOTES = 3
#: a point's or payload operation's own JSON around its id, vector and payload
POINT_OVERHEAD = 96
#: the request's JSON around its list of points or ids
REQUEST_OVERHEAD = 512
#: one sparse vector entry: an index (a u32: 10 digits) and a value (a float), commas included
SPARSE_ENTRY_BYTES = 11 + FLOAT_BYTES
#: a sparse vector's own JSON ({"indices":[],"values":[]}) and its name in the vector map
SPARSE_OVERHEAD = 64


def stored_payload(p: VectorPoint) -> dict[str, Any]:
    """The payload a point is stored with (the inverse of :func:`stored_point`)."""
    stored: dict[str, Any] = {"table": p.table, "key": list(p.key), "text": p.text, "text_hash": p.text_hash,
                              "payload": p.payload, "generation": int(p.generation)}
    if not (fits(p.key) and fits(p.payload)):
        stored["exact"] = _dumps({"key": list(p.key), "payload": p.payload})
    return stored


def stored_point(point_id: str, stored: dict[str, Any] | None, vector: Any = None) -> StoredPoint:
    """A stored payload read back as a :class:`StoredPoint` (``vector`` already converted)."""
    stored = stored or {}
    key, payload = stored.get("key", []), stored.get("payload") or {}
    if "exact" in stored:
        exact = json.loads(stored["exact"])
        key, payload = exact["key"], exact["payload"]
    return StoredPoint(
        id=point_id,
        table=stored.get("table", ""),
        key=list(key),
        text=stored.get("text", ""),
        text_hash=stored.get("text_hash", ""),
        payload=dict(payload),
        vector=vector,
        generation=int(stored.get("generation") or 0),
    )


def hit_fields(stored: dict[str, Any] | None) -> tuple[str, list[Any], dict[str, Any]]:
    """(table, key, row payload) of a search hit's stored payload."""
    point = stored_point("", stored)
    return point.table, point.key, point.payload


#: the stored fields a search hit needs (the text stays in the store)
HIT_FIELDS = ["table", "key", "payload", "exact"]


def state_payload(name: str, value: dict[str, Any]) -> dict[str, Any]:
    stored: dict[str, Any] = {"name": name, "value": value}
    if not fits(value):
        stored["exact"] = _dumps(value)
    return stored


def state_value(stored: dict[str, Any] | None) -> dict[str, Any]:
    stored = stored or {}
    if "exact" in stored:
        return dict(json.loads(stored["exact"]))
    return dict(stored.get("value") or {})


def fits(value: Any) -> bool:
    """Whether Qdrant stores ``value`` exactly (no integer beyond its 64-bit range, anywhere inside)."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return True
    if isinstance(value, int):
        return _EXACT_INTS[0] <= value <= _EXACT_INTS[1]
    if isinstance(value, dict):
        return all(fits(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(fits(v) for v in value)
    return True


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def json_bytes(value: Any) -> int:
    """Length in bytes of ``value`` as compact JSON, as a request body carries it (UTF-8, not escaped)."""
    text = _dumps(value)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def point_bytes(point_id: str, payload: dict[str, Any], dimension: int, sparse_entries: int = -1) -> int:
    """Upper bound of one point's bytes in a request: its id, payload, ``dimension`` vector
    components and, when ``sparse_entries >= 0``, a sparse vector of that many entries."""
    size = POINT_OVERHEAD + len(point_id) + json_bytes(payload) + FLOAT_BYTES * dimension
    if sparse_entries >= 0:
        size += SPARSE_OVERHEAD + SPARSE_ENTRY_BYTES * sparse_entries
    return size


def id_bytes(point_id: str) -> int:
    return len(point_id) + ID_QUOTES


def chunks(items: Sequence[Any], sizes: Sequence[int], budget: int, max_items: int = 0) -> list[list[Any]]:
    """``items`` in consecutive runs whose ``sizes`` sum to at most ``budget`` (each size must
    fit on its own), and at most ``max_items`` each when given."""
    out: list[list[Any]] = []
    chunk: list[Any] = []
    used = 0
    for item, size in zip(items, sizes):
        if chunk and (used + size > budget or (max_items and len(chunk) >= max_items)):
            out.append(chunk)
            chunk, used = [], 0
        chunk.append(item)
        used += size
    if chunk:
        out.append(chunk)
    return out


# -- search -----------------------------------------------------------------------------------


def field_path(field: str) -> str:
    """The payload path of row field ``field``: ``payload.<field>``, quoted as ``payload."<field>"``
    unless it is letters, digits, ``_`` and ``-`` only.

    Quoted, dots, spaces and brackets are plain characters of one key;
    Qdrant's quoted keys cannot contain a double quote or a backslash, so
    those names are refused rather than addressing another field.
    """
    if not isinstance(field, str) or not field:
        raise ValueError(f"filter field {field!r}: give the name of a payload column (tables[].payload)")
    if '"' in field or "\\" in field:
        raise ValueError(
            f"filter field {field!r}: a Qdrant payload path cannot address a name holding a double quote or a "
            "backslash; rename that column in the payload (tables[].payload) to filter on it"
        )
    if all(c.isalnum() or c in "_-" for c in field):
        return f"payload.{field}"  # how Qdrant itself prints a key that needs no quotes (index names)
    return f'payload."{field}"'


def check_search(vector: Any, k: int, text: str, mode: str, score_threshold: float | None) -> None:
    """The arguments every Qdrant search checks the same way (ValueError, one line)."""
    if mode not in SEARCH_MODES:
        raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(SEARCH_MODES)}")
    if mode in ("dense", "hybrid") and vector is None:
        raise ValueError(f"search mode {mode!r} needs a query vector")
    if mode in ("hybrid", "keyword") and not (text or "").strip():
        raise ValueError(f"search mode {mode!r} needs the query text")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer, not {k!r}")
    if score_threshold is not None and (isinstance(score_threshold, bool)
                                        or not isinstance(score_threshold, (int, float))):
        raise ValueError(f"score_threshold must be a number, not {score_threshold!r}")


def check_index_kinds(fields: dict[str, str]) -> None:
    for field, kind in fields.items():
        field_path(field)
        if kind not in PAYLOAD_INDEX_KINDS:
            raise ValueError(f"payload index on {field!r}: unknown kind {kind!r} (use {', '.join(PAYLOAD_INDEX_KINDS)})")


class ConditionFactory:
    """Builds one store's filter conditions; :func:`conditions` drives it (one plan, two clients)."""

    def match(self, key: str, value: str | int | bool) -> Any:
        raise NotImplementedError

    def match_any(self, key: str, values: list[str] | list[int]) -> Any:
        raise NotImplementedError

    def range(self, key: str, bounds: dict[str, float]) -> Any:
        raise NotImplementedError

    def either(self, conditions: list[Any]) -> Any:
        """At least one of ``conditions`` holds."""
        raise NotImplementedError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _equals(f: ConditionFactory, key: str, value: Any) -> Any:
    # Strings, booleans and integers (in Qdrant's exact range) match exactly; a float
    # (or an integer past 64 bits, stored as a double) matches numerically, as a
    # [value, value] range: Qdrant's exact match has no floats.
    if isinstance(value, bool) or isinstance(value, str):
        return f.match(key, value)
    if _is_int(value) and -(2**63) <= value < 2**63:
        return f.match(key, value)
    if isinstance(value, (int, float)):
        return f.range(key, {"gte": float(value), "lte": float(value)})
    raise ValueError(f"filter on {key!r}: {value!r} is not a string, number or boolean")


def conditions(filters: Sequence[FieldFilter], table: str | None, f: ConditionFactory) -> list[Any]:
    """The conditions (all must hold) of a search's ``table`` and ``filters``."""
    out = []
    if table is not None:
        out.append(f.match("table", table))
    for flt in filters:
        if not isinstance(flt, FieldFilter):
            raise ValueError(f"filters must be FieldFilter conditions, not {type(flt).__name__}")
        key = field_path(flt.field)
        if flt.equals is not None:
            out.append(_equals(f, key, flt.equals))
        elif flt.any_of is not None:
            values = list(flt.any_of)
            if values and all(isinstance(v, str) for v in values):
                out.append(f.match_any(key, values))
            elif values and all(_is_int(v) and -(2**63) <= v < 2**63 for v in values):
                out.append(f.match_any(key, values))
            elif not values:
                out.append(f.match_any(key, []))  # one of nothing: matches no point
            else:  # mixed kinds (or floats, booleans): one exact condition per value
                out.append(f.either([_equals(f, key, v) for v in values]))
        else:
            out.append(f.range(key, flt.bounds))
    return out

