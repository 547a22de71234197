"""``embedcluster search``: ask a running search app over HTTP and print the hits as a table.

Filters are written the way people type them and sent as the JSON filter of
``POST /search`` (``serve_apps/query.py``)::

    --filter 'year>=1950' --filter 'year<2000'     a range (>, >=, <, <=), bounds of one field merge
    --filter 'author=H.G. Wells'                   equality ('==' too); a number or true/false is typed
    --filter 'author in Wells,Verne'               one of these values
    --filter '{"year": {"gte": 1950}}'             the JSON filter itself

Several ``--filter`` options all hold.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any, Sequence

_EXPR = re.compile(r"^\s*(?P<field>[^<>=!]+?)\s*(?P<op>>=|<=|==|=|>|<)\s*(?P<value>.*?)\s*$", re.S)
_IN = re.compile(r"^\s*(?P<field>.+?)\s+in\s+(?P<values>.+?)\s*$", re.S | re.I)
_RANGE = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


def _typed(text: str) -> Any:
    """A filter value as typed: quoted -> that string; true/false; an int or a float; else the text."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_filters(expressions: Sequence[str]) -> dict[str, Any] | None:
    """``--filter`` expressions as the JSON filter (None for none); ValueError names the bad one."""
    out: dict[str, Any] = {}
    for expr in expressions:
        if expr.strip().startswith("{"):
            try:
                value = json.loads(expr)
            except ValueError:
                raise ValueError(f"--filter {expr!r} is not valid JSON") from None
            if not isinstance(value, dict):
                raise ValueError(f"--filter {expr!r}: a JSON filter is an object of fields")
            out.update(value)
            continue
        m = _IN.match(expr)
        if m and not _EXPR.match(expr):
            out[m["field"]] = {"in": [_typed(v) for v in m["values"].split(",")]}
            continue
        m = _EXPR.match(expr)
        if not m or not m["value"]:
            raise ValueError(f"--filter {expr!r}: write FIELD=VALUE, FIELD>=NUMBER (>, <, <=), "
                             "'FIELD in A,B' or a JSON filter")
        field, op, value = m["field"].strip(), m["op"], _typed(m["value"])
        if op in _RANGE:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"--filter {expr!r}: {op} needs a number")
            previous = out.get(field)
            bounds = previous if isinstance(previous, dict) and "in" not in previous else {}
            out[field] = {**bounds, _RANGE[op]: value}
        else:
            out[field] = value
    return out or None


def search(url: str, q: str, k: int, filters: dict[str, Any] | None, mode: str, table: str | None,
           api_key: str | None, timeout: float = 30.0) -> dict[str, Any]:
    """``POST {url}/search``; the answer, or RuntimeError with the app's one-line error."""
    body: dict[str, Any] = {"q": q, "k": k, "mode": mode}
    if filters:
        body["filter"] = filters
    if table:
        body["table"] = table
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url.rstrip("/") + "/search", data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            message = exc.reason
        raise RuntimeError(f"{url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeError(f"cannot reach the search app at {url} ({reason}): is `embedcluster run` up? "
                           "(--url, or --config for its [serve] address)") from None


def hits_table(answer: dict[str, Any]) -> Any:
    """The hits as a rich Table: rank, score, table, id, then the payload's fields."""
    from rich.table import Table

    results = answer.get("results") or []
    fields: list[str] = []
    for r in results:
        for name in (r.get("payload") or {}):
            if name not in fields:
                fields.append(name)
    table = Table(title=f"{len(results)} hit(s) for {answer.get('query')!r} ({answer.get('mode', 'dense')}, "
                        f"{answer.get('took_ms', 0):.1f} ms)")
    for name in ("#", "score", "table", "id", *fields):
        table.add_column(name, overflow="fold", max_width=60 if name not in ("#", "score") else None)
    for i, r in enumerate(results, 1):
        payload = r.get("payload") or {}
        cells = [str(i), f"{r.get('score', 0):.4f}", str(r.get("table", "")), json.dumps(r.get("id"))]
        cells += ["" if payload.get(f) is None else str(payload.get(f)) for f in fields]
        table.add_row(*cells)
    return table
