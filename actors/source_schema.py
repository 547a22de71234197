"""Inspection and validation of the PostgreSQL source before anything starts.

Everything a user can get wrong about the source is checked here, before Ray
or any actor starts, and reported as one line naming the problem and the fix
(``SourceError``).
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import re
import string
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from actors.pgvalues import (
    TypeCatalog,
    converter_for,
    is_known,
    is_numeric_type,
    numeric_for_format,
    render_value,
    renderer_for,
    resolve,
)
from actors.source_config import SourceConfig, TableConfig, qualified_name, split_qualified

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A problem with the source database; the message is one actionable line.

    Plain ``SourceError`` while running is transient: the coordinator replays
    from the slot (a restart of PostgreSQL, a dropped connection).
    """


class SourceFatal(SourceError):
    """A source problem that retrying cannot fix, found after start-up: the run ends.

    ``permanent`` (replaying from the slot cannot help) and ``fatal``: unlike a
    schema change, which halts the pipeline and keeps search serving until the
    config is fixed, nothing is left to serve for (no publication, no slot, the
    slot taken or dropped by someone else), so ``embedcluster run`` exits
    non-zero with this one line, which says what and how to fix it.
    """

    permanent = True
    fatal = True


class SourceBusy(SourceError):
    """Held by someone else right now: the slot streamed by another process, every WAL
    sender taken.  Our own previous process (or attempt) may be that someone, its
    walsender exiting a moment after its connection is gone, so the reader retries for
    a bounded time (``actors.cdc_reader.BUSY_WAIT_S``) and only then raises
    :class:`SourceFatal` with this message."""


class _BlankNone(string.Formatter):
    """Formats NULL columns as empty text instead of 'None'."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return "" if value is None else super().format_field(value, format_spec)


class _Cell:
    """A bare ``{column}`` of a template that is not plain: the value and how to print it."""

    __slots__ = ("value", "render", "numeric")

    def __init__(self, value: Any, render: Any, numeric: bool) -> None:
        self.value, self.render, self.numeric = value, render, numeric


class _PgFormatter(_BlankNone):
    """Templates that are not plain (format specs, conversions, names that are not Python
    identifiers): a column prints in PostgreSQL's text form, as in plain templates, unless a
    format spec is given; the spec then applies to the number (a numeric as a Decimal, so
    ``{price:.2f}`` works on the exact text), or else to the text form."""

    def __init__(self, renderers: dict[str, Any], numeric: frozenset[str]) -> None:
        self._renderers = renderers
        self._numeric = numeric

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> Any:
        obj, first = super().get_field(field_name, args, kwargs)
        if field_name == first:
            return _Cell(obj, self._renderers.get(first), first in self._numeric), first
        return obj, first

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if type(value) is _Cell and conversion is not None:
            value = value.value
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> str:
        if type(value) is _Cell:
            cell = value
            if cell.value is None or not format_spec:
                return render_value(cell.value, cell.render)
            if cell.numeric:
                value = numeric_for_format(cell.value)
            elif type(cell.value) in (int, float):
                value = cell.value
            else:  # bool, JSON, arrays, timestamps...: the spec applies to their text form
                value = render_value(cell.value, cell.render)
        return super().format_field(value, format_spec)


def _plain_fields(template: str) -> tuple[str, ...] | None:
    """Field names when every placeholder is a bare ``{column}`` (no spec, no conversion), else None.

    For such templates ``str.format`` with NULLs replaced by ``""`` gives
    exactly what ``_BlankNone`` does, at C speed (see :func:`_positional`).
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


def _positional(template: str, names: tuple[str, ...]) -> str:
    """A plain template with its ``{column}`` fields numbered (``{0}``, ``{1}``...) in ``names`` order.

    ``render`` then fills it from one ``itemgetter`` call: ``format(*values)`` prints
    each value exactly as ``format_map`` would (``format(value, "")``), with no dict
    of values built per row.  Literal braces stay escaped.
    """
    out: list[str] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is not None:
            out.append("{%d}" % names.index(name))
    return "".join(out)


def _one_value(name: str, row: dict[str, Any]) -> tuple[Any]:
    return (row[name],)


def _no_values(row: dict[str, Any]) -> tuple[()]:
    return ()


def _values_getter(names: tuple[str, ...]) -> Any:
    """``row -> tuple of row[name] for names`` in C where it can (``itemgetter`` of a single
    name returns the value itself, not a 1-tuple); picklable, as a TableSpec travels to Ray actors."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    return functools.partial(_one_value, names[0]) if names else _no_values


@dataclass(slots=True)
class TableSpec:
    """A configured table joined with what the catalog says about it."""

    config: TableConfig
    key_columns: list[str]
    column_types: dict[str, int]  # column name -> type OID
    needed_columns: list[str] = field(default_factory=list)
    #: the table's OID and its columns' numbers: a Relation message naming
    #: another table or column for them means a rename (see schema_change)
    oid: int = 0
    column_numbers: dict[str, int] = field(default_factory=dict)
    #: what the catalog adds to the built-in types for these columns (domains, arrays of
    #: user types: see actors.pgvalues.TypeCatalog); None until learn_types() asked it
    types: dict[int, tuple[int, int]] | None = None
    _plain: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)
    _payload_cols: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    # per column: text -> value, value -> template text (actors.pgvalues); rebuilt by set_types
    _converters: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _renderers: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _numeric: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    _template_columns: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    # a plain template numbered (see _positional), the getter of its columns' values, and their
    # renderers (None: str() is the text form) when any column has one
    _plain_positional: str = field(default="", init=False, repr=False, compare=False)
    _plain_get: Any = field(default=None, init=False, repr=False, compare=False)
    _plain_renderers: tuple[Any, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._plain = _plain_fields(self.config.text)
        self._payload_cols = tuple(dict.fromkeys(self.config.payload))  # the payload's keys, in order
        self._template_columns = tuple(self.config.text_columns)
        self._build_values()

    def _build_values(self) -> None:
        types = self.types or None
        self._converters = {c: converter_for(t, types) for c, t in self.column_types.items()}
        self._renderers = {c: renderer_for(t, types) for c, t in self.column_types.items()}
        self._numeric = frozenset(c for c, t in self.column_types.items() if is_numeric_type(t, types))
        plain = self._plain or ()
        if self._plain is not None:
            self._plain_positional = _positional(self.config.text, plain)
            self._plain_get = _values_getter(plain)
            renderers = tuple(self._renderers.get(c) for c in plain)
            self._plain_renderers = renderers if any(r is not None for r in renderers) else None

    @property
    def template_columns(self) -> tuple[str, ...]:
        """The columns the text template uses."""
        return self._template_columns

    @property
    def payload_columns(self) -> tuple[str, ...]:
        return self._payload_cols

    def payload_indexes(self) -> dict[str, str]:
        """``filterable`` column -> the payload index kind its type needs (``pgvalues.index_kind``)."""
        from actors.pgvalues import index_kind

        return {c: index_kind(self.column_types[c], self.types) for c in self.config.filterable
                if c in self.column_types}

    def set_types(self, types: TypeCatalog) -> None:
        """Adopt the catalog's answer for this table's column types (see :func:`learn_types`)."""
        self.types = dict(types)
        self._build_values()

    @property
    def name(self) -> str:
        return self.config.name

    def render(self, row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Text to embed and payload to store for one row (converted values)."""
        if self._plain is not None:
            # PostgreSQL's text form of each value (jsonb as JSON, 'true'/'false', numerics
            # as stored), not a Python repr: str() of text and integers is that form already.
            # The per-change hot path: one C call gets the values, one formats them.
            values = self._plain_get(row)
            renderers = self._plain_renderers
            if renderers is not None:
                values = ["" if v is None else v if r is None else r(v) for v, r in zip(values, renderers)]
            elif None in values:
                values = ["" if v is None else v for v in values]
            text = self._plain_positional.format(*values)
        else:
            text = _PgFormatter(self._renderers, self._numeric).vformat(self.config.text, (), row)
        get = row.get
        payload = {col: get(col) for col in self._payload_cols}
        return text, payload

    def key_of(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(map(row.get, self.key_columns))

    def convert(self, column: str, text: str | None) -> Any:
        """One column's text form as its key/payload value (actors.pgvalues)."""
        if text is None:
            return None
        convert = self._converters.get(column)
        return text if convert is None else convert(text)

    def key_texts(self, key: Sequence[Any]) -> list[str | None]:
        """PostgreSQL text forms of a converted key, in key column order: as untyped
        parameters the server reads them back as the columns' own types."""
        return [None if v is None else render_value(v, self._renderers.get(c)) for c, v in zip(self.key_columns, key)]

    def text_select_list(self) -> str:
        """SELECT list reading every needed column in its text form, in ``needed_columns``
        order (what :meth:`row_from_texts` takes): the backfill, the TOAST fetch and
        ``verify`` read rows this way, so a row converts the same as when streamed."""
        return ", ".join(f"{pg_ident(c)}::text AS v{i}" for i, c in enumerate(self.needed_columns))

    @property
    def quoted_table(self) -> str:
        """``"schema"."table"`` for SQL (quotes inside names doubled)."""
        return pg_ident(self.config.schema_name, self.config.table_name)

    @property
    def quoted_keys(self) -> str:
        """The key columns, quoted, comma-separated, in key order."""
        return ", ".join(pg_ident(c) for c in self.key_columns)

    def rows_by_keys_sql(self, conn: psycopg.Connection) -> str:
        """SELECT (:meth:`text_select_list`) of the rows of a list of keys: one ``text[]``
        parameter per key column, each cast to the column's type so the primary key's
        index finds the rows (the TOAST fetch and ``verify`` read rows this way)."""
        arrays = []
        for column in self.key_columns:
            typ = conn.execute("SELECT format_type(%s::oid, NULL)", (self.column_types[column],)).fetchone()[0]
            arrays.append(f"%s::text[]::{typ}[]")
        if len(arrays) == 1:
            where = f"{self.quoted_keys} = ANY({arrays[0]})"
        else:
            where = f"({self.quoted_keys}) IN (SELECT * FROM unnest({', '.join(arrays)}))"
        return f"SELECT {self.text_select_list()} FROM {self.quoted_table} WHERE {where}"

    def row_from_texts(self, texts: Sequence[str | None]) -> dict[str, Any]:
        """Converted row from the text values of :meth:`text_select_list`."""
        return {col: self.convert(col, texts[i]) for i, col in enumerate(self.needed_columns)}


#: fixed settings of every source session, the walsender's included (pgoutput prints values
#: with them): the text forms of timestamps, intervals, floats and bytea are then the ones
#: actors.pgvalues reads, identical in the backfill, the stream and every later read
SESSION_SETTINGS = {
    "DateStyle": "ISO",
    "TimeZone": "UTC",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}


def session_options(dsn: str, options: str | None = None) -> str:
    """libpq ``options`` for a source connection: the DSN's own (or ``PGOPTIONS``), then
    :data:`SESSION_SETTINGS`, which win over any earlier setting of the same name."""
    if options is None:
        try:
            options = conninfo_to_dict(dsn).get("options")
        except psycopg.ProgrammingError:
            options = None  # psycopg.connect reports the bad DSN
        if options is None:
            options = os.environ.get("PGOPTIONS", "")
    ours = " ".join(f"-c {name}={value}" for name, value in SESSION_SETTINGS.items())
    return f"{options} {ours}".strip()


def connect(dsn: str, masked: str, **kwargs: Any) -> psycopg.Connection:
    """Open a connection with :data:`SESSION_SETTINGS`, turning failures into one clear line."""
    kwargs["options"] = session_options(dsn, kwargs.get("options"))
    try:
        return psycopg.connect(dsn, connect_timeout=10, **kwargs)
    except psycopg.OperationalError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if "exceeds max_wal_senders" in str(exc):
            # (SQLSTATE 53300, not exposed by libpq for a failed connection: the text it is)
            limit = re.search(r"currently (\d+)", str(exc))
            raise SourceBusy(
                f"PostgreSQL at {masked} has no free WAL sender for the replication connection: all "
                f"max_wal_senders = {limit.group(1) if limit else '?'} are in use; close a replication connection "
                "no longer needed (SELECT pid, application_name FROM pg_stat_replication) or raise max_wal_senders "
                "(needs a restart of PostgreSQL)"
            ) from None
        if "password authentication failed" in str(exc) or "no password supplied" in str(exc):
            fix = "check the user and password in source.dsn (or EMBEDCLUSTER_SOURCE_DSN)"
        elif "does not exist" in str(exc):
            fix = "create the database or fix the database name in source.dsn"
        else:
            fix = "start PostgreSQL or fix host/port in source.dsn (or EMBEDCLUSTER_SOURCE_DSN)"
        raise SourceError(f"cannot connect to PostgreSQL at {masked}: {detail}; {fix}") from None


# Each type resolved through its domains to a base type; an array's element type
# (itself possibly a domain: resolved by the next round).
_TYPE_CHAIN_SQL = """
WITH RECURSIVE chain(oid, cur, depth) AS (
    SELECT t.oid, t.oid, 0 FROM pg_type t WHERE t.oid = ANY(%s::oid[])
  UNION ALL
    SELECT c.oid, t.typbasetype, c.depth + 1 FROM chain c JOIN pg_type t ON t.oid = c.cur
    WHERE t.typtype = 'd' AND c.depth < 32
)
SELECT c.oid, b.oid, CASE WHEN b.typcategory = 'A' AND b.typlen = -1 THEN b.typelem ELSE 0 END
FROM chain c JOIN pg_type b ON b.oid = c.cur
WHERE b.typtype <> 'd'
"""


def type_catalog(conn: psycopg.Connection, type_oids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """What the catalog says about types the built-in tables of actors.pgvalues do not
    cover: type OID -> (base type, array element type or 0), for domains, arrays of user
    types (enums, composites, extension types) and the element types of those arrays.
    Built-in types and those that stay text are left out."""
    out: dict[int, tuple[int, int]] = {}
    seen: set[int] = set()
    todo = sorted({int(o) for o in type_oids if not is_known(int(o))})
    while todo:
        seen.update(todo)
        elements = set()
        for oid, base, element in conn.execute(_TYPE_CHAIN_SQL, (todo,)).fetchall():
            oid, base, element = int(oid), int(base), int(element)
            if element:
                elements.add(element)
            if (base, element) != resolve(oid):
                out[oid] = (base, element)
        todo = sorted(e for e in elements if e not in seen and not is_known(e))
    return out


def learn_types(conn: psycopg.Connection, specs: Iterable[TableSpec]) -> None:
    """Give every spec not yet told (``types`` is None) the catalog's answer for its column
    types: one query for all of them (more only for arrays of domains)."""
    todo = [spec for spec in specs if spec.types is None]
    if not todo:
        return
    catalog = type_catalog(conn, {oid for spec in todo for oid in spec.column_types.values()})
    for spec in todo:
        spec.set_types(catalog)  # a few entries at most; the element types of its arrays included


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
        _check_partition_overlap(conn, tables, specs)
        learn_types(conn, specs.values())  # element types of arrays of user types, domains
        return specs


def _check_partition_overlap(conn: psycopg.Connection, tables: list[TableConfig], specs: dict[str, TableSpec]) -> None:
    """A partition and its partitioned table may not both be configured.

    Changes of a partitioned table are published under the partitioned table
    itself (publish_via_partition_root), so a configured partition of it would
    never receive its rows' changes, and the backfill would read them twice.
    """
    by_oid = {spec.oid: (index, spec.name) for index, spec in enumerate(specs.values())}
    for index, table in enumerate(tables):
        ancestors = conn.execute(
            "SELECT relid::oid FROM pg_partition_ancestors(%s::oid::regclass) WHERE relid <> %s::oid",
            (specs[table.name].oid, specs[table.name].oid),
        ).fetchall()
        for (ancestor,) in ancestors:
            if int(ancestor) in by_oid:
                other_index, other = by_oid[int(ancestor)]
                raise SourceError(
                    f"tables[{index}].name {table.name} is a partition of {other} (tables[{other_index}].name), "
                    "whose changes cover it; remove one of the two"
                )


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
        "SELECT attname, atttypid, attnum, attgenerated FROM pg_attribute "
        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (oid,),
    ).fetchall()
    column_types = {name: int(typ) for name, typ, _, _ in cols}
    column_numbers = {name: int(num) for name, _, num, _ in cols}
    generated = {name for name, _, _, gen in cols if gen == "s"}
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
    for column in needed:
        if column in generated:
            # pgoutput (PostgreSQL 15) does not send stored generated columns:
            # streamed rows would lack the value the backfill read.
            raise SourceError(
                f"column '{column}' of {table.name} (tables[{index}]) is a stored generated column, which logical "
                "replication does not send on PostgreSQL 15; use the columns it is computed from in the "
                "template/payload instead"
            )
    _check_replica_identity(conn, table, index, oid, key_columns)
    return TableSpec(table, key_columns, column_types, needed, oid=int(oid), column_numbers=column_numbers)


def _check_replica_identity(conn: psycopg.Connection, table: TableConfig, index: int, oid: int,
                            key_columns: list[str]) -> None:
    """Refuse a table whose updates and deletes would not identify their row.

    Checked before the publication is created or altered: adding a table with
    REPLICA IDENTITY NOTHING to a publication makes the application's own
    UPDATE and DELETE on it fail.  A partitioned table's partitions each have
    their own replica identity (their changes are published under the root),
    so every partition is checked too.
    """
    rows = conn.execute(
        "SELECT c.oid::regclass::text, c.relreplident, c.oid = %s::oid FROM pg_class c "
        "WHERE c.oid = %s::oid OR c.oid IN (SELECT relid FROM pg_partition_tree(%s::oid::regclass) WHERE isleaf) "
        "ORDER BY c.oid = %s::oid DESC, c.oid",
        (oid, oid, oid, oid),
    ).fetchall()
    for relname, identity, is_root in rows:
        what = table.name if is_root else f"partition {relname} of {table.name}"
        if identity == "n":
            raise SourceError(
                f"{what} (tables[{index}].name) has REPLICA IDENTITY NOTHING: its updates and deletes cannot be "
                f"replicated (and would fail once it is published); ALTER TABLE {relname} REPLICA IDENTITY DEFAULT"
            )
        if identity != "i":
            continue  # DEFAULT (the primary key, checked above) or FULL
        columns = [r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = %s::regclass AND i.indisreplident ORDER BY k.ord",
            (relname,),
        ).fetchall()]
        if sorted(columns) != sorted(key_columns):
            raise SourceError(
                f"{what} (tables[{index}].name) uses REPLICA IDENTITY USING INDEX on ({', '.join(columns)}), "
                f"which is not its primary key ({', '.join(key_columns)}): deletes would not name the row; "
                f"ALTER TABLE {relname} REPLICA IDENTITY DEFAULT"
            )


def ensure_publication(conn: psycopg.Connection, publication: str, tables: list[str]) -> None:
    """Create the publication for exactly the configured tables (or re-point it).

    ``publish_via_partition_root``: changes of a partitioned table's partitions
    are published under the partitioned table (the configured name), and a
    partition attached later is covered at once, without a restart.  (Without
    it pgoutput names each partition, and those changes would not match any
    configured table.)  What it does not publish: a TRUNCATE or DETACH of a
    single partition (README, "What is replicated").
    """
    quoted = ", ".join(_quote_table(t) for t in tables)
    row = conn.execute(
        "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = %s", (publication,)
    ).fetchone()
    if row is None:
        create = f'CREATE PUBLICATION "{publication}" FOR TABLE {quoted} WITH (publish_via_partition_root = true)'
        _publication_ddl(conn, create, f"cannot create publication {publication}", "the owner of the tables")
        log.info("created publication %s for %s", publication, ", ".join(tables))
        return
    if not row[1]:
        _publication_ddl(conn, f'ALTER PUBLICATION "{publication}" SET (publish_via_partition_root = true)',
                         f"cannot change publication {publication}", "its owner")
        log.info("publication %s now publishes partitions under their partitioned table", publication)
    current = {
        qualified_name(s, t)
        for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
        ).fetchall()
    }
    if row[0] or current != set(tables):
        _publication_ddl(conn, f'ALTER PUBLICATION "{publication}" SET TABLE {quoted}',
                         f"cannot point publication {publication} at the configured tables", "its owner")
        log.info("publication %s now covers %s", publication, ", ".join(tables))


def _publication_ddl(conn: psycopg.Connection, statement: str, what: str, who: str) -> None:
    """Run ``statement``; a refusal for lack of privilege is :class:`SourceFatal`.

    Retrying cannot grant a privilege: the line names the statement to run once
    as someone who may (after that the pipeline's user needs no such right).
    """
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        detail = (exc.diag.message_primary or str(exc)).strip()
        user = conn.execute("SELECT current_user").fetchone()[0]
        raise SourceFatal(
            f"{what}: {detail} (user {user}); run it once as {who} or a superuser: {statement}"
        ) from None


def drop_publication(conn: psycopg.Connection, publication: str) -> bool:
    """Drop ``publication`` if it exists; False if there was none."""
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    if exists:
        conn.execute(f'DROP PUBLICATION "{publication}"')
    return exists is not None


def _quote_table(name: str) -> str:
    return pg_ident(*split_qualified(name))


def pg_ident(*parts: str) -> str:
    """A PostgreSQL identifier, quoted (``"a"."b"``; a quote inside a name is doubled).

    Every schema, table and column name read from the config or the catalog
    goes into SQL through this (psycopg's ``sql.Identifier``), never pasted.
    """
    return sql.Identifier(*parts).as_string(None)


def drop_slot(conn: psycopg.Connection, slot: str) -> bool:
    """Drop ``slot`` if it exists; False if there was none.

    Refuses (SourceError) while a walsender uses it: dropping it from under a
    running pipeline would lose that pipeline's position.
    """
    row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return False
    if row[0] is not None:
        raise SourceBusy(
            f"replication slot {slot} is in use by process {row[0]}{slot_holder(conn, row[0])}; stop the "
            "embedcluster run (or other client) using it, or choose another source.slot"
        )
    try:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    except psycopg.errors.ObjectInUse as exc:  # taken between the two statements
        raise SourceBusy(f"replication slot {slot} is in use: {exc.diag.message_primary}; stop the client "
                         "using it, or choose another source.slot") from None
    return True


def slot_holder(conn: psycopg.Connection, pid: int) -> str:
    """`` (application_name, client address)`` of backend ``pid`` for a message, or ``""``."""
    try:
        row = conn.execute(
            "SELECT application_name, client_addr::text FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    except psycopg.Error:
        return ""
    if row is None:
        return ""
    parts = [p for p in (row[0], row[1]) if p]
    return f" ({', '.join(parts)})" if parts else ""


@dataclass(slots=True)
class SlotInfo:
    slot: str
    exists: bool
    confirmed_lsn: int | None
    current_lsn: int
    active: bool
    #: pg_replication_slots.wal_status (reserved, extended, unreserved, lost) and
    #: safe_wal_size: bytes of WAL left before max_slot_wal_keep_size invalidates the
    #: slot (None when unlimited)
    wal_status: str | None = None
    safe_wal_size: int | None = None

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
        "SELECT confirmed_flush_lsn::text, active, wal_status, safe_wal_size FROM pg_replication_slots "
        "WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return SlotInfo(slot, False, None, current, False)
    return SlotInfo(slot, True, parse_lsn(row[0]), current, bool(row[1]), row[2],
                    None if row[3] is None else int(row[3]))


def format_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``: sizes of WAL for people."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def lag_warning(info: SlotInfo, max_lag_bytes: int) -> str | None:
    """One line when the slot holds more unconfirmed WAL than ``source.max_lag_bytes``
    (0: never), else None; ``embedcluster status`` and ``/stats`` show it.

    PostgreSQL keeps every WAL segment from the slot's restart position on, so a
    slot that stops advancing (pipeline down, stalled or far behind) fills the
    source's disk, or, with ``max_slot_wal_keep_size`` set, gets invalidated
    once past it, and the pipeline then has to index everything again.
    """
    if info.wal_status == "lost":
        return (f"slot {info.slot} was invalidated by PostgreSQL (it fell more than max_slot_wal_keep_size behind): "
                "the pipeline must index the tables again (embedcluster drop --config FILE --yes, then run)")
    lag = info.lag_bytes
    if not max_lag_bytes or lag is None or lag <= max_lag_bytes:
        return None
    line = (f"slot {info.slot} is {format_bytes(lag)} behind the server, above source.max_lag_bytes = "
            f"{format_bytes(max_lag_bytes)}: PostgreSQL keeps that WAL on disk until the pipeline confirms it; "
            "check that embedcluster run is running and keeping up")
    if info.safe_wal_size is not None:
        line += (f"; {format_bytes(max(0, info.safe_wal_size))} more and max_slot_wal_keep_size invalidates the "
                 "slot (then everything is indexed again)")
    return line
