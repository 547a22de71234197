"""The SQL of each dialect, as pure functions of (table, database): no server needed.

``tests/unit/test_mysql_sql.py`` pins these statements one by one, each against
the documentation section it follows.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from actors.config import identifier_error
from actors.sinks.base import FieldFilter, SinkError
from actors.sinks.mysql.dsn import _DB_NAME
from actors.sinks.mysql.encoding import parse_vector_text, vector_to_bytes, vector_to_text
from actors.sinks.mysql.server import Dialect

#: Cloud SQL's limit on vector dimensions; applied to every dialect so that a
#: table can move between them.
MAX_DIMENSION = 16_000

#: The table's one vector column.
VECTOR_COLUMN = "embedding"

#: What the ``text`` column (MEDIUMTEXT) holds at most, in bytes.
MAX_TEXT_BYTES = (1 << 24) - 1

Statement = tuple[str, tuple[Any, ...]]

#: a FieldFilter range bound as SQL
_RANGE_SQL = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def json_member_path(field: str) -> str:
    """The JSON path of one member of the payload object, quoted (any name: dots, spaces, quotes)."""
    return "$." + json.dumps(field, ensure_ascii=False)


def quote_ident(name: str) -> str:
    """Backtick-quote a validated identifier (letters, digits, '_'; at most 64 chars)."""
    if identifier_error(name, "store") is not None:
        raise SinkError(
            f"invalid SQL identifier {name!r}: use 1-64 letters, digits and '_', not starting with a digit"
        )
    return f"`{name}`"


class SqlDialect:
    """SQL for one dialect, as pure functions of (table, database) -- no server needed.

    Subclasses override the vector-specific parts.  Every method returns either a
    SQL string with ``%s`` placeholders or ``(sql, params)`` statements.
    """

    name: Dialect = "portable"
    #: Statements take the vector as text ``[..]`` (vs. float32 bytes).
    vector_as_text = True
    #: Cloud SQL: the sink creates/rebuilds the index as the table grows.
    size_managed_index = False
    #: Whether the dialect has an ANN index at all.
    has_ann = False

    def __init__(self, table: str, database: str) -> None:
        self.table = table
        self.database = database
        self.q_table = quote_ident(table)
        self.q_state = quote_ident(f"{table}_state")
        self.index_name = f"{table}_vidx"
        self.q_index = quote_ident(self.index_name)
        self.q_source_index = quote_ident(f"{table}_source_table")
        self.q_vec = quote_ident(VECTOR_COLUMN)
        if not _DB_NAME.fullmatch(database):
            raise SinkError(f"invalid database name {database!r}")

    # ---- DDL
    def vector_column_type(self, dimension: int) -> str:
        return f"VARBINARY({4 * dimension})"

    def table_extra_ddl(self) -> list[str]:
        """Extra clauses inside CREATE TABLE (MariaDB declares its vector index there)."""
        return []

    def create_table_sql(self, dimension: int) -> str:
        """CREATE TABLE IF NOT EXISTS for the vector table."""
        cols = [
            "`id` CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL",
            "`source_table` VARCHAR(255) NOT NULL",
            "`source_key` JSON NOT NULL",
            "`text` MEDIUMTEXT NOT NULL",
            "`text_hash` VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL",
            "`payload` JSON NOT NULL",
            "`content_hash` CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL",
            "`generation` BIGINT NOT NULL DEFAULT 0",
            f"{self.q_vec} {self.vector_column_type(dimension)} NOT NULL",
            "PRIMARY KEY (`id`)",
            f"KEY {self.q_source_index} (`source_table`)",
            *self.table_extra_ddl(),
        ]
        body = ",\n  ".join(cols)
        return (
            f"CREATE TABLE IF NOT EXISTS {self.q_table} (\n  {body}\n) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )

    def create_state_table_sql(self) -> str:
        """CREATE TABLE IF NOT EXISTS for ``<table>_state`` (name -> JSON document)."""
        return (
            f"CREATE TABLE IF NOT EXISTS {self.q_state} (\n"
            "  `name` VARCHAR(191) NOT NULL,\n"
            "  `value` JSON NOT NULL,\n"
            "  PRIMARY KEY (`name`)\n"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )

    def add_content_hash_column_sql(self) -> str:
        """Migration for tables created before ``content_hash`` existed (a schema change)."""
        return (
            f"ALTER TABLE {self.q_table} ADD COLUMN `content_hash` CHAR(32) CHARACTER SET ascii "
            "COLLATE ascii_bin NOT NULL DEFAULT ''"
        )

    def add_generation_column_sql(self) -> str:
        """Migration for tables created before ``generation`` existed (their rows get 0: "none")."""
        return f"ALTER TABLE {self.q_table} ADD COLUMN `generation` BIGINT NOT NULL DEFAULT 0"

    def columns_sql(self) -> Statement:
        """Column metadata of the vector table (used for dimension/type checks)."""
        return (
            "SELECT `COLUMN_NAME`, `DATA_TYPE`, `COLUMN_TYPE`, `CHARACTER_OCTET_LENGTH`, `COLUMN_COMMENT` "
            "FROM information_schema.COLUMNS WHERE `TABLE_SCHEMA` = %s AND `TABLE_NAME` = %s",
            (self.database, self.table),
        )

    def check_constraints_sql(self) -> Statement:
        """CHECK constraints on the vector table (Cloud SQL tags vector columns with one)."""
        return (
            "SELECT `CONSTRAINT_NAME`, `CHECK_CLAUSE` FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE `CONSTRAINT_SCHEMA` = %s AND `TABLE_NAME` = %s",
            (self.database, self.table),
        )

    # ---- writes
    @property
    def vector_placeholder(self) -> str:
        """How a bound vector parameter appears in statements."""
        return "%s"

    def encode_vector(self, vector: np.ndarray) -> str | bytes:
        return vector_to_text(vector) if self.vector_as_text else vector_to_bytes(vector)

    _UPSERT_COLUMNS = ("id", "source_table", "source_key", "text", "text_hash", "payload", "content_hash", "generation")

    def upsert_prefix(self) -> str:
        cols = ", ".join(f"`{c}`" for c in (*self._UPSERT_COLUMNS, VECTOR_COLUMN))
        return f"INSERT INTO {self.q_table} ({cols}) VALUES "

    def upsert_row(self) -> str:
        return "(" + ", ".join(["%s"] * len(self._UPSERT_COLUMNS) + [self.vector_placeholder]) + ")"

    def upsert_suffix(self) -> str:
        # VALUES(col) rather than a row alias: MariaDB has no "AS new" alias, and
        # MySQL 8.x still accepts VALUES() (deprecated, not removed).
        sets = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in (*self._UPSERT_COLUMNS[1:], VECTOR_COLUMN))
        return f" ON DUPLICATE KEY UPDATE {sets}"

    def upsert_sql(self, rows: int = 1) -> str:
        """Multi-row INSERT ... ON DUPLICATE KEY UPDATE (replays overwrite, never duplicate)."""
        return self.upsert_prefix() + ", ".join([self.upsert_row()] * rows) + self.upsert_suffix()

    def delete_sql(self, n: int) -> str:
        return f"DELETE FROM {self.q_table} WHERE `id` IN ({', '.join(['%s'] * n)})"

    def table_ids_sql(self, except_generation: bool) -> str:
        """The next chunk of a source table's ids, in id order (delete_table and
        delete_table_except_generation); params: (source_table, after_id, [generation,] limit)."""
        stale = " AND `generation` <> %s" if except_generation else ""
        return (
            f"SELECT `id` FROM {self.q_table} WHERE `source_table` = %s AND `id` > %s{stale} "
            "ORDER BY `id` LIMIT %s"
        )

    def update_payload_sql(self) -> str:
        """Overwrite everything but the vector of one existing row."""
        return (
            f"UPDATE {self.q_table} SET `source_table` = %s, `source_key` = %s, `text` = %s, `text_hash` = %s, "
            "`payload` = %s, `content_hash` = %s, `generation` = %s WHERE `id` = %s"
        )

    def lock_ids_sql(self, n: int) -> str:
        """Which of ``n`` ids exist, locking those rows until the transaction ends."""
        return f"SELECT `id` FROM {self.q_table} WHERE `id` IN ({', '.join(['%s'] * n)}) FOR UPDATE"

    # ---- reads
    def vector_select(self) -> str:
        """Expression that reads the vector column back (bytes or ``[..]`` text)."""
        return self.q_vec

    def decode_vector(self, value: Any) -> np.ndarray:
        if self.vector_as_text:
            return parse_vector_text(value)
        return np.frombuffer(bytes(value), dtype="<f4").astype(np.float32)

    def count_sql(self) -> str:
        return f"SELECT COUNT(*) FROM {self.q_table}"

    def text_hashes_sql(self, n: int) -> str:
        return f"SELECT `id`, `text_hash` FROM {self.q_table} WHERE `id` IN ({', '.join(['%s'] * n)})"

    def hits_sql(self, n: int) -> str:
        """Stored fields of the rows a search selected."""
        return (
            f"SELECT `id`, `source_table`, `source_key`, `payload` FROM {self.q_table} "
            f"WHERE `id` IN ({', '.join(['%s'] * n)})"
        )

    def _point_columns(self, with_vectors: bool) -> str:
        cols = "`id`, `source_table`, `source_key`, `text`, `text_hash`, `payload`, `generation`"
        return f"{cols}, {self.vector_select()}" if with_vectors else cols

    def iter_sql(self, with_vectors: bool, filtered: bool) -> str:
        """One keyset page of iter_points; params: ([source_table,] after_id, limit)."""
        where = "`source_table` = %s AND `id` > %s" if filtered else "`id` > %s"
        return f"SELECT {self._point_columns(with_vectors)} FROM {self.q_table} WHERE {where} ORDER BY `id` LIMIT %s"

    def points_sql(self, n: int) -> str:
        """Stored fields (no vector) of ``n`` points by id (get_points)."""
        return f"SELECT {self._point_columns(False)} FROM {self.q_table} WHERE `id` IN ({', '.join(['%s'] * n)})"

    def scan_sql(self, filtered: bool, where: str = "") -> str:
        """One keyset page of (id, vector) for the exact in-process search; ``where``: more
        conditions (their parameters go before the table's)."""
        cond = "`source_table` = %s AND `id` > %s" if filtered else "`id` > %s"
        if where:
            cond = f"{where} AND {cond}"
        return f"SELECT `id`, {self.vector_select()} FROM {self.q_table} WHERE {cond} ORDER BY `id` LIMIT %s"

    def _search_select(self) -> str:
        return f"SELECT `id`, `source_table`, `source_key`, `payload`, {self.vector_select()} FROM {self.q_table}"

    def knn_query(self, vector_text: str, k: int, source_table: str | None = None,
                  where: Statement | None = None) -> Statement:
        """Exact KNN in SQL (vector dialects only); ``where``: more conditions (:meth:`filter_where`)."""
        raise NotImplementedError(f"the {self.name} dialect searches outside SQL")

    def ann_query(self, vector_text: str, k: int, source_table: str | None = None,
                  where: Statement | None = None) -> Statement:
        """ANN search through the vector index (vector dialects only)."""
        raise NotImplementedError(f"the {self.name} dialect has no vector index")

    def filter_where(self, filters: Sequence[FieldFilter]) -> Statement | None:
        """The SQL conditions (ANDed, no ``WHERE``) and their parameters for payload filters; None for none.

        Each field is read from the ``payload`` JSON column by a quoted member
        path (``$."year"``), passed as a parameter like every value, so no name
        or value ever becomes SQL text.  Equality is ``JSON_CONTAINS`` (type
        and value, as in Qdrant: on a JSON array, any element); a range holds
        only for JSON numbers.
        """
        if not filters:
            return None
        parts: list[str] = []
        params: list[Any] = []
        for f in filters:
            path = json_member_path(f.field)
            if f.range is not None:
                value = "JSON_EXTRACT(`payload`, %s)"
                cond = [f"JSON_TYPE({value}) IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL')"]
                params.append(path)
                for op, bound in f.range:
                    cond.append(f"CAST(JSON_UNQUOTE({value}) AS DOUBLE) {_RANGE_SQL[op]} %s")
                    params += [path, float(bound)]
                parts.append("(" + " AND ".join(cond) + ")")
                continue
            values = [f.equals] if f.any_of is None else list(f.any_of)
            if not values:
                parts.append("FALSE")  # "in" an empty list matches nothing
                continue
            parts.append("(" + " OR ".join(["JSON_CONTAINS(`payload`, %s, %s)"] * len(values)) + ")")
            for v in values:
                params += [json.dumps(v), path]
        return " AND ".join(parts), tuple(params)

    @staticmethod
    def _conditions(source_table: str | None, where: Statement | None) -> Statement:
        """``source_table = %s`` and ``where`` ANDed: ("", ()) for neither."""
        parts: list[str] = []
        params: list[Any] = []
        if source_table is not None:
            parts.append("`source_table` = %s")
            params.append(source_table)
        if where is not None:
            parts.append(where[0])
            params += list(where[1])
        return " AND ".join(parts), tuple(params)

    # ---- state
    def state_get_sql(self) -> str:
        return f"SELECT `value` FROM {self.q_state} WHERE `name` = %s"

    def state_set_sql(self) -> str:
        return (
            f"INSERT INTO {self.q_state} (`name`, `value`) VALUES (%s, %s) "
            "ON DUPLICATE KEY UPDATE `value` = VALUES(`value`)"
        )

    def state_delete_sql(self) -> str:
        return f"DELETE FROM {self.q_state} WHERE `name` = %s"

    def state_list_sql(self) -> str:
        """Names and documents whose name starts with a prefix (params: its length, the prefix)."""
        return f"SELECT `name`, `value` FROM {self.q_state} WHERE LEFT(`name`, %s) = %s ORDER BY `name`"

    # ---- vector index
    def index_lookup_sql(self) -> list[Statement]:
        """Queries whose non-empty result means the vector index exists."""
        return []

    def create_index_sql(self, index_type: str | None = None) -> list[Statement]:
        return []

    def rebuild_index_sql(self, index_type: str | None = None) -> list[Statement]:
        return []

    def drop_index_sql(self) -> list[Statement]:
        return []

    def reads_column(self, kind: str | None) -> bool:
        """Whether this dialect can read a vector column of the given kind (see classify_vector_column)."""
        return kind == "binary"

    def tolerates_column(self, kind: str | None) -> bool:
        """A column this dialect probably reads although the tag it expects was not seen."""
        return False


class PortableSQL(SqlDialect):
    """Any MySQL >= 5.7 / MariaDB >= 10.3: float32 bytes in VARBINARY, exact search in numpy."""

    name: Dialect = "portable"
    vector_as_text = False


class MariaDBSQL(SqlDialect):
    """MariaDB >= 11.7 native vectors (HNSW index kept up to date by the server)."""

    name: Dialect = "mariadb"
    has_ann = True

    def vector_column_type(self, dimension: int) -> str:
        # MariaDB docs, "CREATE TABLE with Vectors": VECTOR(N), NOT NULL for an indexed column.
        return f"VECTOR({dimension})"

    def table_extra_ddl(self) -> list[str]:
        # "CREATE TABLE with Vectors": VECTOR INDEX (col) [M=..] DISTANCE=cosine.
        return [f"VECTOR INDEX {self.q_index} ({self.q_vec}) DISTANCE=cosine"]

    @property
    def vector_placeholder(self) -> str:
        return "VEC_FromText(%s)"

    def vector_select(self) -> str:
        return f"VEC_ToText({self.q_vec})"

    def _order(self) -> str:
        # The index is used for ORDER BY VEC_DISTANCE_COSINE(col, const) LIMIT k.
        return f"ORDER BY VEC_DISTANCE_COSINE({self.q_vec}, VEC_FromText(%s)) LIMIT %s"

    def ann_query(self, vector_text: str, k: int, source_table: str | None = None,
                  where: Statement | None = None) -> Statement:
        cond, params = self._conditions(source_table, where)
        if not cond:
            return (f"{self._search_select()} {self._order()}", (vector_text, k))
        return (f"{self._search_select()} WHERE {cond} {self._order()}", (*params, vector_text, k))

    def knn_query(self, vector_text: str, k: int, source_table: str | None = None,
                  where: Statement | None = None) -> Statement:
        # Without a vector index the same statement is an exact scan.
        return self.ann_query(vector_text, k, source_table, where)

    def index_lookup_sql(self) -> list[Statement]:
        return [
            (
                "SELECT `INDEX_NAME` FROM information_schema.STATISTICS "
                "WHERE `TABLE_SCHEMA` = %s AND `TABLE_NAME` = %s AND `INDEX_NAME` = %s",
                (self.database, self.table, self.index_name),
            )
        ]

    def create_index_sql(self, index_type: str | None = None) -> list[Statement]:
        # Documented form: ALTER TABLE t ADD VECTOR INDEX (col) (MariaDB error 4206 page).
        return [(f"ALTER TABLE {self.q_table} ADD VECTOR INDEX {self.q_index} ({self.q_vec}) DISTANCE=cosine", ())]

    def rebuild_index_sql(self, index_type: str | None = None) -> list[Statement]:
        return [
            (
                f"ALTER TABLE {self.q_table} DROP INDEX {self.q_index}, "
                f"ADD VECTOR INDEX {self.q_index} ({self.q_vec}) DISTANCE=cosine",
                (),
            )
        ]

    def drop_index_sql(self) -> list[Statement]:
        return [(f"ALTER TABLE {self.q_table} DROP INDEX {self.q_index}", ())]

    def reads_column(self, kind: str | None) -> bool:
        return kind == "vector"


class CloudSQLSQL(SqlDialect):
    """Cloud SQL for MySQL, generally available vector syntax (ScaNN index)."""

    name: Dialect = "cloudsql"
    size_managed_index = True
    has_ann = True
    #: distance option for approx_distance; must match the index's DISTANCE_MEASURE.
    ANN_OPTIONS = "distance_measure=cosine"

    def __init__(self, table: str, database: str, mysql_major: int = 8) -> None:
        super().__init__(table, database)
        self.mysql_major = mysql_major

    def vector_column_type(self, dimension: int) -> str:
        # "Generate and manage vector embeddings": MySQL 8.0/8.4 use
        # VECTOR(N) USING VARBINARY; 9.x has a native VECTOR(N) type.
        if self.mysql_major >= 9:
            return f"VECTOR({dimension})"
        return f"VECTOR({dimension}) USING VARBINARY"

    @property
    def vector_placeholder(self) -> str:
        return "string_to_vector(%s)"

    def vector_select(self) -> str:
        return f"vector_to_string({self.q_vec})"

    def knn_query(self, vector_text: str, k: int, source_table: str | None = None,
                  where: Statement | None = None) -> Statement:
        # "Cloud SQL functions", KNN functions: ORDER BY cosine_distance(string_to_vector(..), col) LIMIT n.
        order = f"ORDER BY cosine_distance(string_to_vector(%s), {self.q_vec}) LIMIT %s"
        cond, params = self._conditions(source_table, where)
        if not cond:
            return (f"{self._search_select()} {order}", (vector_text, k))
        return (f"{self._search_select()} WHERE {cond} {order}", (*params, vector_text, k))

    def ann_query(self, vector_text: str, k: int, source_table: str | None = None,
                  where: Statement | None = None) -> Statement:
        # "Search and filter with vector embeddings": ORDER BY approx_distance(col,
        # string_to_vector(..), 'distance_measure=cosine') LIMIT n (LIMIT is required).
        order = f"ORDER BY approx_distance({self.q_vec}, string_to_vector(%s), %s) LIMIT %s"
        cond, params = self._conditions(source_table, where)
        if not cond:
            return (f"{self._search_select()} {order}", (vector_text, self.ANN_OPTIONS, k))
        return (f"{self._search_select()} WHERE {cond} {order}", (*params, vector_text, self.ANN_OPTIONS, k))

    def index_lookup_sql(self) -> list[Statement]:
        # information_schema.innodb_vector_indexes lists indexes opened in memory
        # ("Cloud SQL information schema"); STATISTICS covers ones not loaded yet.
        return [
            (
                "SELECT `INDEX_NAME` FROM information_schema.innodb_vector_indexes "
                "WHERE `TABLE_NAME` = %s AND `INDEX_NAME` = %s",
                (f"{self.database}.{self.table}", self.index_name),
            ),
            (
                "SELECT `INDEX_NAME` FROM information_schema.STATISTICS "
                "WHERE `TABLE_SCHEMA` = %s AND `TABLE_NAME` = %s AND `INDEX_NAME` = %s",
                (self.database, self.table, self.index_name),
            ),
        ]

    def create_index_sql(self, index_type: str | None = None) -> list[Statement]:
        # "Cloud SQL Data Definition Language (DDL)", CREATE VECTOR INDEX:
        # USING SCANN (required), QUANTIZER=SQ8, DISTANCE_MEASURE (required).
        return [
            (
                f"CREATE VECTOR INDEX {self.q_index} ON {self.q_table} ({self.q_vec}) "
                "USING SCANN QUANTIZER=SQ8 DISTANCE_MEASURE=COSINE",
                (),
            )
        ]

    def drop_index_sql(self) -> list[Statement]:
        return [(f"DROP INDEX {self.q_index} ON {self.q_table}", ())]

    def rebuild_index_sql(self, index_type: str | None = None) -> list[Statement]:
        # The GA syntax has no ALTER for a vector index: drop and create, which
        # also recomputes NUM_LEAVES from the current table size.
        return self.drop_index_sql() + self.create_index_sql(index_type)

    def reads_column(self, kind: str | None) -> bool:
        return kind == "cloudsql" or (self.mysql_major >= 9 and kind == "vector")

    def tolerates_column(self, kind: str | None) -> bool:
        # Cloud SQL's vector COMMENT/CONSTRAINT text is not specified in its docs;
        # a plain VARBINARY(4N) is accepted (with a warning) rather than refusing
        # a genuine Cloud SQL table whose tag looks different than expected.
        return kind == "binary"


class CloudSQLPreviewSQL(CloudSQLSQL):
    """Cloud SQL for MySQL, preview vector syntax (stored procedures, NEAREST ... TO)."""

    name: Dialect = "cloudsql-preview"

    def vector_column_type(self, dimension: int) -> str:
        # "Work with vector embeddings (Preview)": VECTOR(N) USING VARBINARY.
        return f"VECTOR({dimension}) USING VARBINARY"

    def _qualified(self, name: str) -> str:
        return f"{self.database}.{name}"

    def index_options(self, index_type: str) -> str:
        return f"index_type={index_type},distance_measure=cosine"

    def knn_query(self, vector_text: str, k: int, source_table: str | None = None,
                  where: Statement | None = None) -> Statement:
        # Preview KNN: ORDER BY cosine_distance(col, string_to_vector(..)) LIMIT n.
        order = f"ORDER BY cosine_distance({self.q_vec}, string_to_vector(%s)) LIMIT %s"
        cond, params = self._conditions(source_table, where)
        if not cond:
            return (f"{self._search_select()} {order}", (vector_text, k))
        return (f"{self._search_select()} WHERE {cond} {order}", (*params, vector_text, k))

    def ann_query(self, vector_text: str, k: int, source_table: str | None = None,
                  where: Statement | None = None) -> Statement:
        # Preview ANN: WHERE NEAREST(col) TO (string_to_vector(..), 'num_neighbors=K'),
        # other predicates ANDed after it; the sink ranks the candidates itself.
        nearest = f"WHERE NEAREST({self.q_vec}) TO (string_to_vector(%s), %s)"
        options = f"num_neighbors={int(k)}"
        cond, params = self._conditions(source_table, where)
        if not cond:
            return (f"{self._search_select()} {nearest}", (vector_text, options))
        return (f"{self._search_select()} {nearest} AND {cond}", (vector_text, options, *params))

    def index_lookup_sql(self) -> list[Statement]:
        # The preview procedures record their indexes in mysql.vector_indexes.
        return [
            (
                "SELECT `index_name` FROM mysql.vector_indexes WHERE `table_name` = %s",
                (f"{self.database}.{self.table}",),
            )
        ]

    def create_index_sql(self, index_type: str | None = None) -> list[Statement]:
        return [
            (
                "CALL mysql.create_vector_index(%s, %s, %s, %s)",
                (
                    self.index_name,
                    self._qualified(self.table),
                    VECTOR_COLUMN,
                    self.index_options(index_type or "BRUTE_FORCE"),
                ),
            )
        ]

    def rebuild_index_sql(self, index_type: str | None = None) -> list[Statement]:
        return [
            (
                "CALL mysql.alter_vector_index(%s, %s)",
                (self._qualified(self.index_name), self.index_options(index_type or "TREE_SQ")),
            )
        ]

    def drop_index_sql(self) -> list[Statement]:
        return [("CALL mysql.drop_vector_index(%s)", (self._qualified(self.index_name),))]

    def reads_column(self, kind: str | None) -> bool:
        return kind == "cloudsql"


def make_dialect(name: Dialect, table: str, database: str, mysql_major: int = 8) -> SqlDialect:
    """The SQL generator for dialect ``name``."""
    if name == "portable":
        return PortableSQL(table, database)
    if name == "mariadb":
        return MariaDBSQL(table, database)
    if name == "cloudsql":
        return CloudSQLSQL(table, database, mysql_major=mysql_major)
    if name == "cloudsql-preview":
        return CloudSQLPreviewSQL(table, database, mysql_major=mysql_major)
    raise SinkError(f"unknown sink.dialect {name!r}: use auto, cloudsql, cloudsql-preview, mariadb or portable")

