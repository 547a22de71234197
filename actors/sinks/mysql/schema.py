"""The vector table's schema: creating the tables, reading back an existing vector column.

:func:`classify_vector_column` tells from ``information_schema`` which dialect
wrote a vector column and its dimension; :class:`SchemaMixin` creates the
vector and state tables, checks an existing table against the model and runs
schema changes (dropping a Cloud SQL vector index first).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pymysql.err

from actors.sinks.base import SinkError
from actors.sinks.mysql.dialects import MAX_DIMENSION, VECTOR_COLUMN, SqlDialect
from actors.sinks.mysql.dsn import MySQLDsn
from actors.sinks.mysql.server import Dialect, ServerInfo, _log_once

log = logging.getLogger(__name__)


def _as_str(value: Any) -> str:
    """information_schema values arrive as bytes on some server versions."""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def classify_vector_column(
    data_type: str, column_type: str, octet_length: int | None, comment: str = "", check_clauses: str = ""
) -> tuple[str | None, int | None]:
    """What kind of vector column this is, and its dimension.

    Kinds: ``"vector"`` (native VECTOR type: MariaDB 11.7+, MySQL 9), ``"cloudsql"``
    (Cloud SQL 8.x vector: VARBINARY tagged with a vector COMMENT/CONSTRAINT),
    ``"binary"`` (plain VARBINARY: the portable format), ``None`` (unreadable).
    """
    dt = (data_type or "").lower()
    ct = (column_type or "").lower()
    if dt == "vector" or ct.startswith("vector"):
        m = re.search(r"\((\d+)\)", ct)
        return "vector", int(m.group(1)) if m else None
    if dt == "varbinary":
        tagged = "vector" in (comment or "").lower() or "vector" in (check_clauses or "").lower()
        if tagged:
            m = re.search(r"\((\d+)\)", comment or "")
            if m:
                return "cloudsql", int(m.group(1))
            return "cloudsql", (octet_length // 4) if octet_length else None
        if octet_length and octet_length % 4 == 0:
            return "binary", octet_length // 4
        return None, None
    return None, None


_KIND_DIALECT = {"vector": "mariadb", "cloudsql": "cloudsql", "binary": "portable"}


class SchemaMixin:
    """Table creation and inspection for :class:`~actors.sinks.mysql.sink.MySQLSink`.

    Uses the sink's ``_run``/``_execute_statements`` (:class:`ConnectionMixin`)
    and its index bookkeeping (:class:`IndexMixin`).
    """

    sql: SqlDialect
    dialect: Dialect
    server: ServerInfo
    _dsn: MySQLDsn
    _dimension: int | None
    _state_table_ready: bool
    _index_exists: bool | None

    def _table_exists(self, cur: Any, name: str) -> bool:
        cur.execute(
            "SELECT 1 FROM information_schema.TABLES WHERE `TABLE_SCHEMA` = %s AND `TABLE_NAME` = %s",
            (self._dsn.database, name),
        )
        return cur.fetchone() is not None

    def _inspect_vector_column(self, cur: Any) -> tuple[dict[str, str], str | None, int | None, str]:
        sql, params = self.sql.columns_sql()
        cur.execute(sql, params)
        columns = {_as_str(r[0]): (_as_str(r[1]), _as_str(r[2]), r[3], _as_str(r[4])) for r in cur.fetchall()}
        types = {name: r[1] for name, r in columns.items()}
        if VECTOR_COLUMN not in columns:
            return types, None, None, ""
        data_type, column_type, octet, comment = columns[VECTOR_COLUMN]
        checks = ""
        if data_type.lower() == "varbinary" and not self.server.is_mariadb:
            try:
                sql, params = self.sql.check_constraints_sql()
                cur.execute(sql, params)
                checks = " ".join(f"{_as_str(r[0])} {_as_str(r[1])}" for r in cur.fetchall())
            except pymysql.err.MySQLError:
                checks = ""  # MySQL 5.7 has no CHECK_CONSTRAINTS view
        octets = int(octet) if octet is not None else None
        kind, dim = classify_vector_column(data_type, column_type, octets, comment, checks)
        return types, kind, dim, column_type

    def ensure_ready(self, dimension: int) -> None:
        """Create the vector and state tables if missing; check an existing table's vector column.

        Raises :class:`SinkError` for a dimension mismatch, a vector column this
        dialect cannot read, or a table that is not an embedcluster table.
        """
        if not isinstance(dimension, (int, np.integer)) or not 1 <= int(dimension) <= MAX_DIMENSION:
            raise SinkError(
                f"vector dimension {dimension!r} is outside 1..{MAX_DIMENSION:,} "
                "(Cloud SQL's limit, applied to every dialect)"
            )
        dimension = int(dimension)
        qualified = f"`{self._dsn.database}`.{self.sql.q_table}"

        def setup(cur: Any) -> tuple[bool, dict[str, str], str | None, int | None, str]:
            existed = self._table_exists(cur, self.sql.table)
            cur.execute(self.sql.create_table_sql(dimension))
            cur.execute(self.sql.create_state_table_sql())
            types, kind, dim, column_type = self._inspect_vector_column(cur)
            return existed, types, kind, dim, column_type

        existed, types, kind, dim, column_type = self._run(f"creating {qualified}", setup)
        self._state_table_ready = True
        required = {"id", "source_table", "source_key", "text", "text_hash", "payload", VECTOR_COLUMN}
        missing = sorted(required - set(types))
        if missing:
            raise SinkError(
                f"table {qualified} exists but is not an embedcluster vector table (missing column "
                f"{', '.join(missing)}): choose another sink.table or drop that table"
            )
        if existed and not self.sql.reads_column(kind):
            self._unreadable_column(kind, column_type, qualified)
        # A Cloud SQL column's dimension is inferred (COMMENT / VARBINARY length),
        # so it is only held against the model for tables that existed before.
        if dim is not None and dim != dimension and (existed or kind in ("binary", "vector")):
            raise SinkError(
                f"table {qualified} stores {dim}-dimensional vectors but the embedding model produces {dimension}: "
                f"drop the table (and {self.sql.q_state}) or set sink.table to a new name"
            )
        self._dimension = dimension
        if "content_hash" not in types:
            self._schema_change([self.sql.add_content_hash_column_sql()], "adding column content_hash")
        if "generation" not in types:
            self._schema_change([self.sql.add_generation_column_sql()], "adding column generation")
        if self.sql.has_ann and not self.sql.size_managed_index and not self._index_present():
            # MariaDB: the table normally carries its index from CREATE TABLE; add it if not.
            self._execute_statements(
                self.sql.create_index_sql(), f"creating vector index {self.sql.index_name}", autocommit=True
            )
        if self.sql.size_managed_index:
            self.maintain_index()

    def _unreadable_column(self, kind: str | None, column_type: str, qualified: str) -> None:
        """Raise for a vector column this dialect cannot read (only warn if it probably can)."""
        if self.sql.tolerates_column(kind):
            _log_once(
                (qualified, "tolerated-column"),
                "MySQL sink: %s.`%s` is %s without a visible Cloud SQL vector tag; assuming it is a Cloud SQL "
                "vector column (if the portable dialect wrote it, set sink.dialect = 'portable')",
                qualified, VECTOR_COLUMN, column_type,
            )
            return
        writer = _KIND_DIALECT.get(kind or "")
        hint = f"set sink.dialect = '{writer}'" if writer else "it was not written by embedcluster"
        raise SinkError(
            f"vector column {qualified}.`{VECTOR_COLUMN}` has type {column_type}, which sink.dialect = "
            f"'{self.dialect}' cannot read ({hint}): choose another sink.table or drop that table"
        )

    def _table_ready(self) -> bool:
        """Whether the vector table exists (reads of a missing table return nothing)."""
        if self._dimension is not None:
            return True
        return self._run("looking for the table", lambda cur: self._table_exists(cur, self.sql.table))

    def _require_dimension(self) -> int:
        if self._dimension is not None:
            return self._dimension

        def inspect(cur: Any) -> tuple[bool, str | None, int | None, str]:
            if not self._table_exists(cur, self.sql.table):
                return False, None, None, ""
            _, kind, dim, column_type = self._inspect_vector_column(cur)
            return True, kind, dim, column_type

        exists, kind, dim, column_type = self._run("reading the table definition", inspect)
        qualified = f"`{self._dsn.database}`.{self.sql.q_table}"
        if not exists:
            raise SinkError(
                f"MySQL sink table {qualified} does not exist yet: "
                "call ensure_ready(dimension) first (the writer does this on start)"
            )
        if not self.sql.reads_column(kind):
            self._unreadable_column(kind, column_type, qualified)
        if dim is None:
            raise SinkError(
                f"cannot tell the vector dimension of {qualified}.`{VECTOR_COLUMN}` ({column_type}): "
                "call ensure_ready(dimension) first"
            )
        self._dimension = dim
        return dim

    def _schema_change(self, statements: list[str], what: str) -> None:
        """Run DDL on the vector table; Cloud SQL allows none while a vector index exists."""
        had_index = self.sql.size_managed_index and self._index_present()
        if had_index:
            log.info("MySQL sink: dropping vector index %s for a schema change (%s)", self.sql.index_name, what)
            self._execute_statements(self.sql.drop_index_sql(), f"dropping vector index for {what}", autocommit=True)
            self._index_exists = False
            self._write_index_state(None)
        self._execute_statements([(s, ()) for s in statements], what, autocommit=True)
        if had_index:
            self.maintain_index()
