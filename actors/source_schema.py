"""Inspection and validation of the PostgreSQL source before anything starts.

Everything a user can get wrong about the source is checked here, before Ray
or any actor starts, and reported as one line naming the problem and the fix
(``SourceError``).
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass, field
from typing import Any

import psycopg

from actors.pgoutput import convert_text_value
from actors.source_config import SourceConfig, TableConfig

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A problem with the source database; the message is one actionable line."""


class _BlankNone(string.Formatter):
    """Formats NULL columns as empty text instead of 'None'."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return "" if value is None else super().format_field(value, format_spec)


_FORMATTER = _BlankNone()


def _plain_fields(template: str) -> tuple[str, ...] | None:
    """Field names when every placeholder is a bare ``{column}`` (no spec, no conversion), else None.

    For such templates ``str.format_map`` with NULLs replaced by ``""`` gives
    exactly what ``_BlankNone`` does, at C speed.
    """
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            return None
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass(slots=True)
class TableSpec:
    """A configured table joined with what the catalog says about it."""

    config: TableConfig
    key_columns: list[str]
    column_types: dict[str, int]  # column name -> type OID
    needed_columns: list[str] = field(default_factory=list)
    _plain: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _payload_cols: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._plain = _plain_fields(self.config.text)
        self._payload_cols = tuple(self.config.payload)

    @property
    def name(self) -> str:
        return self.config.name

    def render(self, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Text to embed and payload to store for one row (converted values)."""
        if self._plain is not None:
            values = {}
            for col in self._plain:
                v = row[col]
                values[col] = "" if v is None else v
            text = self.config.text.format_map(values)
        else:
            text = _FORMATTER.vformat(self.config.text, (), row)
        get = row.get
        payload = {col: get(col) for col in self._payload_cols}
        return text, payload

    def key_of(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(map(row.get, self.key_columns))

    def convert(self, column: str, text: str | None) -> Any:
        return convert_text_value(self.column_types.get(column, 25), text)


def connect(dsn: str, masked: str, **kwargs: Any) -> psycopg.Connection:
    """Open a connection, turning failures into one clear line."""
    try:
        return psycopg.connect(dsn, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "password authentication failed" in str(exc) or "no password supplied" in str(exc):
            fix = "check the user and password in source.dsn (or EMBEDCLUSTER_SOURCE_DSN)"
        elif "does not exist" in str(exc):
            fix = "create the database or fix the database name in source.dsn"
        else:
            fix = "start PostgreSQL or fix host/port in source.dsn (or EMBEDCLUSTER_SOURCE_DSN)"
        raise SourceError(f"cannot connect to PostgreSQL at {masked}: {detail}; {fix}") from None


def inspect_source(source: SourceConfig, tables: list[TableConfig]) -> dict[str, TableSpec]:
    """Validate the source for logical replication and describe each table.

    Checks, in the order a user would fix them: reachable, ``wal_level``,
    replication privilege, table exists, has a primary key, template and
    payload columns exist.
    """
    with connect(source.dsn_value, source.dsn_masked, autocommit=True) as conn:
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]
        if wal_level != "logical":
            raise SourceError(
                f"wal_level is '{wal_level}' on {source.dsn_masked}, logical replication needs 'logical'; "
                "set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL"
            )
        can_replicate = conn.execute(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()[0]
        if not can_replicate:
            user = conn.execute("SELECT current_user").fetchone()[0]
            raise SourceError(
                f"user {user} may not use replication; run ALTER ROLE {user} WITH REPLICATION as a superuser"
            )
        specs: dict[str, TableSpec] = {}
        for index, table in enumerate(tables):
            specs[table.name] = _inspect_table(conn, table, index)
        return specs


def _inspect_table(conn: psycopg.Connection, table: TableConfig, index: int) -> TableSpec:
    rel = conn.execute(
        "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (table.schema_name, table.table_name),
    ).fetchone()
    if rel is None:
        raise SourceError(
            f"table {table.name} (tables[{index}].name) does not exist in the source database; "
            "create it or fix the name"
        )
    if rel[1] not in ("r", "p"):
        raise SourceError(f"{table.name} (tables[{index}].name) is not a table; only tables can be replicated")
    oid = rel[0]
    cols = conn.execute(
        "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum",
        (oid,),
    ).fetchall()
    column_types = {name: int(typ) for name, typ in cols}
    key = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
        (oid,),
    ).fetchall()
    if not key:
        raise SourceError(
            f"table {table.name} (tables[{index}].name) has no primary key; deletes and updates cannot be "
            f"matched to vectors without one: ALTER TABLE {table.name} ADD PRIMARY KEY (<column>)"
        )
    key_columns = [k[0] for k in key]
    available = ", ".join(column_types)
    for column in table.text_columns:
        if column not in column_types:
            raise SourceError(
                f"tables[{index}].text refers to column '{column}' which {table.name} does not have "
                f"(columns: {available}); fix the template"
            )
    for column in table.payload:
        if column not in column_types:
            raise SourceError(
                f"tables[{index}].payload lists column '{column}' which {table.name} does not have "
                f"(columns: {available}); fix the payload list"
            )
    needed: list[str] = []
    for column in [*key_columns, *table.text_columns, *table.payload]:
        if column not in needed:
            needed.append(column)
    return TableSpec(table, key_columns, column_types, needed)


def ensure_publication(conn: psycopg.Connection, publication: str, tables: list[str]) -> None:
    """Create the publication for exactly the configured tables (or re-point it)."""
    quoted = ", ".join(_quote_table(t) for t in tables)
    row = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    if row is None:
        conn.execute(f'CREATE PUBLICATION "{publication}" FOR TABLE {quoted}')
        log.info("created publication %s for %s", publication, ", ".join(tables))
        return
    current = {
        f"{s}.{t}"
        for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
        ).fetchall()
    }
    if row[0] or current != set(tables):
        conn.execute(f'ALTER PUBLICATION "{publication}" SET TABLE {quoted}')
        log.info("publication %s now covers %s", publication, ", ".join(tables))


def drop_publication(conn: psycopg.Connection, publication: str) -> bool:
    """Drop ``publication`` if it exists; False if there was none."""
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    if exists:
        conn.execute(f'DROP PUBLICATION "{publication}"')
    return exists is not None


def _quote_table(name: str) -> str:
    schema, table = name.split(".")
    return f'"{schema}"."{table}"'


def drop_slot(conn: psycopg.Connection, slot: str) -> bool:
    """Drop ``slot`` if it exists; False if there was none.

    Refuses (SourceError) while a walsender uses it: dropping it from under a
    running pipeline would lose that pipeline's position.
    """
    row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return False
    if row[0] is not None:
        raise SourceError(
            f"replication slot {slot} is in use by process {row[0]}; stop the embedcluster run using it, "
            "or choose another source.slot"
        )
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True


@dataclass(slots=True)
class SlotInfo:
    slot: str
    exists: bool
    confirmed_lsn: int | None
    current_lsn: int
    active: bool

    @property
    def lag_bytes(self) -> int | None:
        if self.confirmed_lsn is None:
            return None
        return max(0, self.current_lsn - self.confirmed_lsn)


def slot_info(conn: psycopg.Connection, slot: str) -> SlotInfo:
    """Where the slot stands: confirmed position and lag behind the server."""
    from actors.changes import parse_lsn

    current = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]) or 0
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    if row is None:
        return SlotInfo(slot, False, None, current, False)
    return SlotInfo(slot, True, parse_lsn(row[0]), current, bool(row[1]))
