"""Schema changes while streaming: which ones the pipeline follows, which ones stop it.

pgoutput sends a Relation message before the first change of a table in each
stream, and again after every change to the table's definition.  Each one is
compared with the table's spec (what the catalog said at start-up):

* a new column: nothing to do (rows are decoded by column name);
* a column the key, the text template or the payload uses is dropped, renamed
  or changes type, or the primary key changes: the pipeline stops on purpose
  (:class:`SchemaChanged`), because applying further changes would index empty
  texts or ``None`` keys;
* the table is renamed or dropped (found from the catalog: a rename or a drop
  sends no Relation message until the next change, a drop never): the same stop.

Stopping is safe for guarantee 1: everything read before the change is written
and acknowledged first, nothing after it is, so the slot sits right before the
change.  Once the config matches the new schema, ``embedcluster run`` resumes
there, and the first Relation message it reads is the new definition.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from actors.pgoutput import Relation
from actors.source_config import qualified_name
from actors.source_schema import SourceError, TableSpec

#: seconds between catalog checks for renamed or dropped tables while streaming
CATALOG_CHECK_S = 5.0


class SchemaChanged(SourceError):
    """A configured table's schema changed so that its changes cannot be applied.

    ``permanent``: retrying cannot help; the coordinator stops (state ``halted``)
    instead of replaying, and the message says how to fix it.
    """

    permanent = True


def _fix(spec: TableSpec, index: int) -> str:
    return f"update tables[{index}] of the config to the new schema and restart embedcluster run"


class SchemaWatch:
    """Compares Relation messages and the catalog with the configured tables' specs."""

    def __init__(self, specs: dict[str, TableSpec]) -> None:
        self.specs = specs
        self._index = {name: i for i, name in enumerate(specs)}
        self.by_oid = {spec.oid: spec for spec in specs.values() if spec.oid}
        self._checked_at = time.monotonic()

    def spec_for(self, rel: Relation) -> TableSpec | None:
        """The configured table a Relation message is about (by OID: the name in the
        stream is the one the table had when the change was made)."""
        return self.by_oid.get(rel.relid) or self.specs.get(rel.qualified_name)

    def check_relation(self, rel: Relation, conn: psycopg.Connection) -> None:
        """Raise :class:`SchemaChanged` when ``rel`` no longer fits its table's spec."""
        spec = self.spec_for(rel)
        if spec is None:
            return
        index = self._index[spec.name]
        if spec.oid and rel.relid != spec.oid:
            raise SchemaChanged(
                f"table {spec.name} was dropped and created again while streaming (its points may describe rows "
                f"of the old table); {_fix(spec, index)}, then run embedcluster verify --repair"
            )
        columns = {c.name: c for c in rel.columns}
        for column in spec.needed_columns:
            use = self._use(spec, column, index)
            if column not in columns:
                raise SchemaChanged(
                    f"column '{column}' of {spec.name} ({use}) {self._what_happened(spec, column, conn)}; "
                    f"{_fix(spec, index)}"
                )
            expected = spec.column_types.get(column)
            if expected is not None and columns[column].type_oid != expected:
                raise SchemaChanged(
                    f"column '{column}' of {spec.name} ({use}) changed type from {_type_name(conn, expected)} to "
                    f"{_type_name(conn, columns[column].type_oid)}; {_fix(spec, index)}"
                )
        if rel.replica_identity != "f":
            key = [c.name for c in rel.columns if c.is_key]
            if key and sorted(key) != sorted(spec.key_columns):
                raise SchemaChanged(
                    f"the primary key of {spec.name} changed from ({', '.join(spec.key_columns)}) to "
                    f"({', '.join(key)}): point ids are derived from it; {_fix(spec, index)}"
                )

    def due(self) -> bool:
        return time.monotonic() - self._checked_at >= CATALOG_CHECK_S

    def check_catalog(self, conn: psycopg.Connection) -> None:
        """Raise :class:`SchemaChanged` when a configured table was renamed or dropped."""
        self._checked_at = time.monotonic()
        if not self.by_oid:
            return
        current = {
            int(oid): qualified_name(schema, table)
            for oid, schema, table in conn.execute(
                "SELECT c.oid::int8, n.nspname, c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s::oid[])",
                (list(self.by_oid),),
            ).fetchall()
        }
        for oid, spec in self.by_oid.items():
            index = self._index[spec.name]
            if oid not in current:
                raise SchemaChanged(
                    f"table {spec.name} (tables[{index}].name) was dropped; its points stay in the store until "
                    f"removed on purpose; remove it from the config (or create it again) and restart embedcluster run "
                    f"(embedcluster forget --table {spec.name} --yes deletes its points)"
                )
            if current[oid] != spec.name:
                raise SchemaChanged(
                    f"table {spec.name} (tables[{index}].name) was renamed to {current[oid]}; "
                    f"set tables[{index}].name = {json.dumps(current[oid], ensure_ascii=False)} and restart embedcluster run"
                )

    @staticmethod
    def _use(spec: TableSpec, column: str, index: int) -> str:
        if column in spec.key_columns:
            return f"its primary key, tables[{index}]"
        if column in spec.config.text_columns:
            return f"used by tables[{index}].text"
        return f"listed in tables[{index}].payload"

    @staticmethod
    def _what_happened(spec: TableSpec, column: str, conn: psycopg.Connection) -> str:
        number = spec.column_numbers.get(column)
        row: Any = None
        if number is not None:
            row = conn.execute(
                "SELECT attname, attisdropped FROM pg_attribute WHERE attrelid = %s::oid AND attnum = %s",
                (spec.oid, number),
            ).fetchone()
        if row is None or row[1]:
            return "was dropped"
        if row[0] != column:
            return f"was renamed to '{row[0]}'"
        return "is no longer sent"


def _type_name(conn: psycopg.Connection, type_oid: int) -> str:
    row = conn.execute("SELECT format_type(%s::oid, NULL)", (type_oid,)).fetchone()
    return row[0] if row and row[0] else f"type {type_oid}"
