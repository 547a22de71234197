"""Assertions shared by the pipeline tests: the index equals the table."""

from __future__ import annotations

from typing import Any

import psycopg

from actors.changes import point_id
from actors.sinks.base import open_sink
from cluster.config import config_from_dict
from tests.support.harness import wait_for


def table_rows(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, name, description, author, year FROM books ORDER BY id").fetchall()
    return {r[0]: {"name": r[1], "description": r[2], "author": r[3], "year": r[4]} for r in rows}


def sink_points(sink_settings: dict[str, Any]) -> dict[str, Any]:
    """Every stored point by id (waits until a stopped pipeline has released the store)."""
    # through the config loader, so secrets come from the environment as in `run`
    config = config_from_dict({"source": {"dsn": "unused"}, "tables": [{"name": "books"}], "sink": sink_settings}).sink
    sink = wait_for(lambda: open_sink(config), 60, "the sink to be released by the stopped pipeline", interval=0.5)
    try:
        return {p.id: p for p in sink.iter_points(with_vectors=True)}
    finally:
        sink.close()


def assert_index_equals_table(dsn: str, sink_settings: dict[str, Any]) -> None:
    """Same keys, same text, same payload; one unit vector per row; nothing extra."""
    rows = table_rows(dsn)
    points = sink_points(sink_settings)
    expected_ids = {point_id("public.books", (key,)): key for key in rows}
    missing = sorted(expected_ids[i] for i in set(expected_ids) - set(points))
    extra = sorted(points[i].key for i in set(points) - set(expected_ids))
    assert not missing, f"rows missing from the index: {missing[:20]} ({len(missing)} in all)"
    assert not extra, f"points in the index whose rows are gone: {extra[:20]} ({len(extra)} in all)"
    for pid, key in expected_ids.items():
        point, row = points[pid], rows[key]
        assert point.table == "public.books" and point.key == [key]
        assert point.text == (row["description"] or ""), f"text of row {key}"
        assert point.payload == row, f"payload of row {key}"
        assert point.vector is not None and abs(float((point.vector ** 2).sum()) - 1.0) < 1e-3


def expected_points(config: Any) -> dict[str, tuple[str, list[Any], str, dict[str, Any]]]:
    """What the index must hold for ``config``'s tables, read from the source the way the
    pipeline reads it: point id -> (table, key, text, payload)."""
    from actors.source_schema import connect, inspect_source

    specs = inspect_source(config.source, config.tables)
    out: dict[str, tuple[str, list[Any], str, dict[str, Any]]] = {}
    with connect(config.source.dsn_value, config.source.dsn_masked, autocommit=True) as conn:
        for spec in specs.values():
            for texts in conn.execute(f"SELECT {spec.text_select_list()} FROM {spec.quoted_table}").fetchall():
                row = spec.row_from_texts(texts)
                text, payload = spec.render(row)
                key = list(spec.key_of(row))
                out[point_id(spec.name, key)] = (spec.name, key, text, payload)
    return out


def assert_index_matches_source(config: Any) -> None:
    """Every configured table's rows are points with their text and payload, nothing else is."""
    expected = expected_points(config)
    sink = wait_for(lambda: open_sink(config.sink), 60, "the sink to be released by the stopped pipeline", interval=0.5)
    try:
        stored = {p.id: p for p in sink.iter_points(with_vectors=True)}
    finally:
        sink.close()
    missing = sorted(str(expected[i][:2]) for i in set(expected) - set(stored))
    extra = sorted(str((stored[i].table, stored[i].key)) for i in set(stored) - set(expected))
    assert not missing, f"rows missing from the index: {missing[:20]} ({len(missing)} in all)"
    assert not extra, f"points in the index whose rows are gone: {extra[:20]} ({len(extra)} in all)"
    for pid, (table, key, text, payload) in expected.items():
        point = stored[pid]
        assert (point.table, point.key, point.text, point.payload) == (table, key, text, payload), pid
        assert point.vector is not None and abs(float((point.vector ** 2).sum()) - 1.0) < 1e-3
