"""What a search request asks for, validated: ``q``, ``k``, ``table``, ``filter``, ``score_threshold``, ``mode``.

Shared by ``GET /search`` (query parameters; ``filter`` as JSON) and ``POST
/search`` (a JSON body).  Every refusal is a ValueError whose message is the
400's one line, naming the parameter or field at fault.

A ``filter`` is a JSON object of payload fields, each with one condition, all
of which must hold::

    {"author": "Herbert"}                  equality
    {"genre": {"in": ["sf", "fantasy"]}}   one of these values
    {"year": {"gte": 1950, "lt": 2000}}    a range (gt, gte, lt, lte; numbers)

Fields must be payload columns of the configured tables (of ``table`` when it
is given); the store applies the conditions (``actors.sinks.base.FieldFilter``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, NamedTuple, Sequence

from actors.sinks.base import SEARCH_MODES, FieldFilter

MAX_K = 100
#: longest query text accepted, in characters: the model reads a few hundred tokens of it at most, and
#: percent-encoded (up to 12 bytes a character) it still fits the 64 KiB request line HTTP servers accept
MAX_QUERY_CHARS = 5_000
#: most fields one filter may name, and values one "in" may list
MAX_FILTER_FIELDS = 16
MAX_IN_VALUES = 256
_RANGE_OPS = ("gt", "gte", "lt", "lte")
BODY_KEYS = ("q", "k", "table", "filter", "score_threshold", "mode")


class SearchRequest(NamedTuple):
    q: str
    k: int = 5
    table: str | None = None
    filters: tuple[FieldFilter, ...] = ()
    score_threshold: float | None = None
    mode: str = "dense"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value))


def parse_filter(value: Any, fields: Sequence[str] | None) -> tuple[FieldFilter, ...]:
    """``filter`` (already decoded from JSON) as FieldFilters; ``fields``: the payload fields
    that may be named (None: any)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError('filter must be a JSON object of payload fields, e.g. {"year": {"gte": 1950}}')
    if len(value) > MAX_FILTER_FIELDS:
        raise ValueError(f"filter names {len(value)} fields; at most {MAX_FILTER_FIELDS} are accepted")
    out = []
    for name, cond in value.items():
        if fields is not None and name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"filter field {_short(name)} is not in the payload (payload fields: {known[:200]})")
        if isinstance(cond, dict):
            keys = set(cond)
            if keys == {"in"}:
                values = cond["in"]
                if not isinstance(values, list) or not all(_scalar(v) for v in values):
                    raise ValueError(f"filter field {_short(name)}: 'in' takes a list of strings, numbers or booleans")
                if len(values) > MAX_IN_VALUES:
                    raise ValueError(f"filter field {_short(name)}: 'in' lists {len(values)} values; "
                                     f"at most {MAX_IN_VALUES}")
                out.append(FieldFilter(name, any_of=tuple(values)))
                continue
            if not keys or not keys <= set(_RANGE_OPS):
                raise ValueError(f"filter field {_short(name)}: a condition is a value, {{\"in\": [...]}} or a "
                                 "range of gt, gte, lt, lte")
            bounds = []
            for op in _RANGE_OPS:
                if op in cond:
                    bound = cond[op]
                    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
                        raise ValueError(f"filter field {_short(name)}: {op} must be a number, not {_short(bound)}")
                    bounds.append((op, bound))
            out.append(FieldFilter(name, range=tuple(bounds)))
        elif _scalar(cond):
            out.append(FieldFilter(name, equals=cond))
        else:
            raise ValueError(f"filter field {_short(name)}: a condition is a string, number or boolean, "
                             '{"in": [...]} or a range such as {"gte": 1950, "lt": 2000}, not ' + _short(cond))
    return tuple(out)


def _fields(table: str | None, payload_fields: Mapping[str, Sequence[str]] | None) -> Sequence[str] | None:
    if payload_fields is None:
        return None
    if table is not None:
        return list(payload_fields.get(table, ()))
    return sorted({f for fields in payload_fields.values() for f in fields})


def _check(q: Any, k: Any, table: Any, filter_: Any, threshold: Any, mode: Any,
           payload_fields: Mapping[str, Sequence[str]] | None) -> SearchRequest:
    if q is not None and not isinstance(q, str):
        raise ValueError("q must be a string")
    q = (q or "").strip()
    if not q:
        raise ValueError("missing query: pass ?q=<text to search for> (or {\"q\": ...} as the body)")
    if len(q) > MAX_QUERY_CHARS:
        raise ValueError(f"q is {len(q)} characters long; at most {MAX_QUERY_CHARS} are accepted")
    if any("\ud800" <= c <= "\udfff" for c in q):  # JSON can escape one; it is no text (and no UTF-8)
        raise ValueError("q holds an unpaired surrogate (\\ud800-\\udfff); send text")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {_short(k)}")
    if table is not None:
        if not isinstance(table, str):
            raise ValueError("table must be a string such as 'public.books'")
        if payload_fields is not None and table not in payload_fields:
            raise ValueError(f"table {_short(table)} is not indexed (tables: {', '.join(sorted(payload_fields))[:200]})")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
            raise ValueError(f"score_threshold must be a number from -1 to 1, got {_short(threshold)}")
        threshold = float(threshold)
    if mode is None:
        mode = "dense"
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {_short(mode)}")
    if threshold is not None and mode != "dense":
        raise ValueError("score_threshold applies to mode 'dense' only (hybrid and keyword scores are ranks)")
    filters = parse_filter(filter_, _fields(table, payload_fields))
    return SearchRequest(q, k, table, filters, threshold, mode)


def parse_params(params: Mapping[str, str], payload_fields: Mapping[str, Sequence[str]] | None = None) -> SearchRequest:
    """``GET /search`` query parameters: ``q``, ``k``, ``table``, ``filter`` (JSON), ``score_threshold``, ``mode``."""
    unknown = sorted(set(params) - set(BODY_KEYS))
    if unknown:
        raise ValueError(f"unknown parameter {_short(unknown[0])}; /search takes {', '.join(BODY_KEYS)}")
    raw_k = params.get("k", "5")
    try:
        k: Any = int(raw_k)
    except ValueError:
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {_short(raw_k)}") from None
    filter_: Any = None
    if params.get("filter"):
        try:
            filter_ = json.loads(params["filter"])
        except (ValueError, RecursionError):
            raise ValueError('filter must be JSON, e.g. filter={"year":{"gte":1950}}') from None
    threshold: Any = None
    if params.get("score_threshold"):
        try:
            threshold = float(params["score_threshold"])
        except ValueError:
            raise ValueError(f"score_threshold must be a number from -1 to 1, got {_short(params['score_threshold'])}") from None
        if not math.isfinite(threshold):
            raise ValueError("score_threshold must be a number from -1 to 1")
    return _check(params.get("q"), k, params.get("table") or None, filter_, threshold, params.get("mode"), payload_fields)


def parse_json_body(body: bytes, payload_fields: Mapping[str, Sequence[str]] | None = None) -> SearchRequest:
    """A ``POST /search`` body: ``{"q": TEXT, "k": 5, "table": ..., "filter": {...}, "score_threshold": ..., "mode": ...}``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; RecursionError: [[[[...
        raise ValueError('the body must be JSON: {"q": "<text to search for>", "k": 5}') from None
    if not isinstance(data, dict):
        raise ValueError('the body must be a JSON object: {"q": "<text to search for>", "k": 5}')
    unknown = sorted(set(data) - set(BODY_KEYS))
    if unknown:
        raise ValueError(f"unknown key {_short(unknown[0])} in the body; it takes {', '.join(BODY_KEYS)}")
    return _check(data.get("q"), data.get("k", 5), data.get("table"), data.get("filter"),
                  data.get("score_threshold"), data.get("mode"), payload_fields)
