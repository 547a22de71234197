"""Pins the exact SQL each MySQL-sink dialect emits (no server, no Ray).

Every vector-dialect statement carries a comment naming the documentation
section it follows.  Sources (as found with the project's doc search):

* [CSQL-DDL]    "Cloud SQL Data Definition Language (DDL)", section CREATE VECTOR INDEX
                https://cloud.google.com/sql/docs/mysql/data-definition-language
* [CSQL-GEN]    "Generate and manage vector embeddings" (GA), "Create a new table with a
                vector embedding column": VECTOR(N) USING VARBINARY on MySQL 8.4 and earlier
                https://cloud.google.com/sql/docs/mysql/generate-manage-vector-embeddings
* [CSQL-SEARCH] "Search and filter with vector embeddings", "Search approximate nearest
                neighbors (ANN)": approx_distance(col, string_to_vector(..),
                'distance_measure=cosine') in ORDER BY, LIMIT required
                https://cloud.google.com/sql/docs/mysql/search-filter-vector-embeddings
* [CSQL-FUNC]   "Cloud SQL functions", "Vector conversion functions" (string_to_vector,
                vector_to_string) and "KNN functions" (vector_distance, cosine_distance;
                example ORDER BY cosine_distance(string_to_vector('[1,2,3]'), col) LIMIT 10)
                https://cloud.google.com/sql/docs/mysql/functions
* [CSQL-IDX]    "Create and manage vector indexes": base table needs >= 1,000 rows
                https://cloud.google.com/sql/docs/mysql/create-manage-vector-indexes
* [CSQL-INFO]   "Cloud SQL information schema", information_schema.innodb_vector_indexes
                (INDEX_NAME, TABLE_NAME as db_name.table_name, ...)
                https://cloud.google.com/sql/docs/mysql/information-schema
* [CSQL-WORK]   "Work with vector embeddings": one vector column and one vector index per
                table, at most 16,000 dimensions
                https://cloud.google.com/sql/docs/mysql/work-with-vectors
* [CSQL-PREV]   "Work with vector embeddings (Preview)"
                https://cloud.google.com/sql/docs/mysql/work-with-vectors-preview
                The preview procedure calls (argument order, option strings) are the
                ones Google's own client uses: googleapis/langchain-google-cloud-sql-mysql-python,
                src/langchain_google_cloud_sql_mysql/vectorstore.py and indexes.py.
* [MDB-TABLE]   MariaDB "CREATE TABLE with Vectors": VECTOR(N) NOT NULL,
                VECTOR INDEX (col) [M=..] DISTANCE=cosine
                https://mariadb.com/kb/en/create-table-with-vectors/
* [MDB-COS]     MariaDB "VEC_DISTANCE_COSINE" (index used only if built for cosine)
                https://mariadb.com/docs/server/reference/sql-functions/vector-functions/vec_distance_cosine
* [MDB-4206]    MariaDB "Error 4206": ALTER TABLE v ADD VECTOR INDEX(v)
                https://mariadb.com/kb/en/e4206
"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr

from actors.sinks.base import SinkError
from actors.sinks.mysql import (
    MAX_DIMENSION,
    CloudSQLPreviewSQL,
    CloudSQLSQL,
    IndexStatus,
    MariaDBSQL,
    PortableSQL,
    ServerInfo,
    check_dialect_supported,
    classify_vector_column,
    detect_dialect,
    make_dialect,
    parse_dsn,
    parse_vector_text,
    plan_index,
    preview_index_type,
    quote_ident,
    vector_to_text,
)

TABLE = "embeddings"
DB = "vectors"
VEC = "[1,2,3]"

SELECT_CSQL = (
    "SELECT `id`, `source_table`, `source_key`, `payload`, vector_to_string(`embedding`) FROM `embeddings`"
)
SELECT_MDB = "SELECT `id`, `source_table`, `source_key`, `payload`, VEC_ToText(`embedding`) FROM `embeddings`"

UPSERT_HEAD = (
    "INSERT INTO `embeddings` (`id`, `source_table`, `source_key`, `text`, `text_hash`, `payload`, "
    "`content_hash`, `generation`, `embedding`) VALUES "
)
UPSERT_TAIL = (
    " ON DUPLICATE KEY UPDATE `source_table` = VALUES(`source_table`), `source_key` = VALUES(`source_key`), "
    "`text` = VALUES(`text`), `text_hash` = VALUES(`text_hash`), `payload` = VALUES(`payload`), "
    "`content_hash` = VALUES(`content_hash`), `generation` = VALUES(`generation`), `embedding` = VALUES(`embedding`)"
)


def _create_table(vector_type: str, extra: str = "") -> str:
    return (
        "CREATE TABLE IF NOT EXISTS `embeddings` (\n"
        "  `id` CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,\n"
        "  `source_table` VARCHAR(255) NOT NULL,\n"
        "  `source_key` JSON NOT NULL,\n"
        "  `text` MEDIUMTEXT NOT NULL,\n"
        "  `text_hash` VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,\n"
        "  `payload` JSON NOT NULL,\n"
        "  `content_hash` CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,\n"
        "  `generation` BIGINT NOT NULL DEFAULT 0,\n"
        f"  `embedding` {vector_type} NOT NULL,\n"
        "  PRIMARY KEY (`id`),\n"
        "  KEY `embeddings_source_table` (`source_table`)"
        f"{extra}\n"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )


# ============================================================== cloudsql (GA)


class TestCloudSQL:
    d = CloudSQLSQL(TABLE, DB)

    def test_create_table(self) -> None:
        # [CSQL-GEN] "Create a new table with a vector embedding column", MySQL 8.4 and
        # earlier: EMBEDDING_COLUMN_NAME VECTOR(VECTOR_DIMENSIONS) USING VARBINARY.
        # The primary key is CHAR(36), not BINARY/BLOB/TEXT/JSON (not allowed as the key of
        # a table with a vector index); one vector column per table [CSQL-WORK].
        assert self.d.create_table_sql(3) == _create_table("VECTOR(3) USING VARBINARY")

    def test_create_table_mysql9_native_vector(self) -> None:
        # [CSQL-GEN] Cloud SQL for MySQL 9.7 uses MySQL's native VECTOR(N) type.
        assert CloudSQLSQL(TABLE, DB, mysql_major=9).create_table_sql(3) == _create_table("VECTOR(3)")

    def test_upsert(self) -> None:
        # [CSQL-GEN] "Insert ... string_to_vector('[1,2,3]')"; [CSQL-FUNC] string_to_vector.
        row = "(%s, %s, %s, %s, %s, %s, %s, %s, string_to_vector(%s))"
        assert self.d.upsert_sql() == UPSERT_HEAD + row + UPSERT_TAIL
        assert self.d.upsert_sql(2) == UPSERT_HEAD + row + ", " + row + UPSERT_TAIL

    def test_delete(self) -> None:
        # Plain DML on the base table; the index is updated transactionally ("Vector search").
        assert self.d.delete_sql(2) == "DELETE FROM `embeddings` WHERE `id` IN (%s, %s)"

    def test_lock_ids_before_a_payload_update(self) -> None:
        # update_payloads: which ids exist, rows locked until COMMIT (missing ones abort the call)
        assert self.d.lock_ids_sql(2) == "SELECT `id` FROM `embeddings` WHERE `id` IN (%s, %s) FOR UPDATE"

    def test_create_index(self) -> None:
        # [CSQL-DDL] CREATE VECTOR INDEX index_name ON table_name (column_name)
        # USING SCANN [QUANTIZER=SQ8] DISTANCE_MEASURE=L2_SQUARED|DOT_PRODUCT|COSINE.
        assert self.d.create_index_sql() == [
            (
                "CREATE VECTOR INDEX `embeddings_vidx` ON `embeddings` (`embedding`) "
                "USING SCANN QUANTIZER=SQ8 DISTANCE_MEASURE=COSINE",
                (),
            )
        ]

    def test_rebuild_index(self) -> None:
        # [CSQL-DDL] has no ALTER for a vector index, so a rebuild is drop + create
        # ([CSQL-IDX] "create, tune, monitor, and drop vector indexes"; the drop is
        # MySQL's DROP INDEX ... ON ...).
        assert self.d.rebuild_index_sql() == [
            ("DROP INDEX `embeddings_vidx` ON `embeddings`", ()),
            (
                "CREATE VECTOR INDEX `embeddings_vidx` ON `embeddings` (`embedding`) "
                "USING SCANN QUANTIZER=SQ8 DISTANCE_MEASURE=COSINE",
                (),
            ),
        ]

    def test_index_lookup(self) -> None:
        # [CSQL-INFO] innodb_vector_indexes.TABLE_NAME is "db_name.table_name".
        assert self.d.index_lookup_sql() == [
            (
                "SELECT `INDEX_NAME` FROM information_schema.innodb_vector_indexes "
                "WHERE `TABLE_NAME` = %s AND `INDEX_NAME` = %s",
                ("vectors.embeddings", "embeddings_vidx"),
            ),
            (
                "SELECT `INDEX_NAME` FROM information_schema.STATISTICS "
                "WHERE `TABLE_SCHEMA` = %s AND `TABLE_NAME` = %s AND `INDEX_NAME` = %s",
                ("vectors", "embeddings", "embeddings_vidx"),
            ),
        ]

    def test_exact_knn(self) -> None:
        # [CSQL-FUNC] KNN functions: SELECT id FROM t1
        # ORDER BY cosine_distance(string_to_vector('[1,2,3]'), embedding_column_name) LIMIT 10;
        assert self.d.knn_query(VEC, 5) == (
            SELECT_CSQL + " ORDER BY cosine_distance(string_to_vector(%s), `embedding`) LIMIT %s",
            (VEC, 5),
        )

    def test_ann(self) -> None:
        # [CSQL-SEARCH] ORDER BY approx_distance(embedding, string_to_vector('[1,2,3]'),
        # 'distance_measure=...') LIMIT n; the measure must match the index's [CSQL-DDL].
        assert self.d.ann_query(VEC, 5) == (
            SELECT_CSQL + " ORDER BY approx_distance(`embedding`, string_to_vector(%s), %s) LIMIT %s",
            (VEC, "distance_measure=cosine", 5),
        )

    def test_filtered_search(self) -> None:
        # [CSQL-SEARCH] "Search and filter": a WHERE predicate beside the ANN ORDER BY.
        assert self.d.ann_query(VEC, 50, "public.docs") == (
            SELECT_CSQL
            + " WHERE `source_table` = %s ORDER BY approx_distance(`embedding`, string_to_vector(%s), %s) LIMIT %s",
            ("public.docs", VEC, "distance_measure=cosine", 50),
        )
        # [CSQL-FUNC] exact KNN with the same filter (used until an index exists).
        assert self.d.knn_query(VEC, 5, "public.docs") == (
            SELECT_CSQL + " WHERE `source_table` = %s ORDER BY cosine_distance(string_to_vector(%s), `embedding`) LIMIT %s",
            ("public.docs", VEC, 5),
        )

    def test_payload_filters_beside_the_table_filter(self) -> None:
        # [CSQL-SEARCH] "Search and filter": more predicates ANDed in the same WHERE; every name
        # and value is a parameter (a JSON path and a JSON document), never SQL text.
        from actors.sinks.base import FieldFilter

        where = self.d.filter_where([FieldFilter("year", range=(("gte", 1950), ("lt", 2000))),
                                     FieldFilter('a "b".c', any_of=("x", 2))])
        value = "JSON_EXTRACT(`payload`, %s)"
        assert where == (
            f"(JSON_TYPE({value}) IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL') AND "
            f"CAST(JSON_UNQUOTE({value}) AS DOUBLE) >= %s AND CAST(JSON_UNQUOTE({value}) AS DOUBLE) < %s) AND "
            "(JSON_CONTAINS(`payload`, %s, %s) OR JSON_CONTAINS(`payload`, %s, %s))",
            ('$."year"', '$."year"', 1950.0, '$."year"', 2000.0, '"x"', '$."a \\"b\\".c"', "2", '$."a \\"b\\".c"'),
        )
        sql, params = self.d.ann_query(VEC, 50, "public.docs", where)
        assert sql == (SELECT_CSQL + f" WHERE `source_table` = %s AND {where[0]} "
                       "ORDER BY approx_distance(`embedding`, string_to_vector(%s), %s) LIMIT %s")
        assert params == ("public.docs", *where[1], VEC, "distance_measure=cosine", 50)
        assert self.d.filter_where([]) is None
        assert self.d.filter_where([FieldFilter("t", any_of=())]) == ("FALSE", ())


# ============================================================== cloudsql-preview


class TestCloudSQLPreview:
    d = CloudSQLPreviewSQL(TABLE, DB)

    def test_create_table(self) -> None:
        # [CSQL-PREV] vector column "VECTOR(N) USING VARBINARY".
        assert self.d.create_table_sql(3) == _create_table("VECTOR(3) USING VARBINARY")

    def test_upsert(self) -> None:
        # [CSQL-PREV] values written with string_to_vector('[..]').
        row = "(%s, %s, %s, %s, %s, %s, %s, %s, string_to_vector(%s))"
        assert self.d.upsert_sql() == UPSERT_HEAD + row + UPSERT_TAIL

    def test_delete(self) -> None:
        assert self.d.delete_sql(1) == "DELETE FROM `embeddings` WHERE `id` IN (%s)"

    def test_create_index(self) -> None:
        # [CSQL-PREV] CALL mysql.create_vector_index('name', 'db.table', 'column',
        # 'index_type=..., distance_measure=...'); BRUTE_FORCE below 10,000 rows.
        assert self.d.create_index_sql("BRUTE_FORCE") == [
            (
                "CALL mysql.create_vector_index(%s, %s, %s, %s)",
                ("embeddings_vidx", "vectors.embeddings", "embedding", "index_type=BRUTE_FORCE,distance_measure=cosine"),
            )
        ]

    def test_rebuild_index(self) -> None:
        # [CSQL-PREV] CALL mysql.alter_vector_index('db.index', 'options'); TREE_SQ from 10,000 rows.
        assert self.d.rebuild_index_sql("TREE_SQ") == [
            (
                "CALL mysql.alter_vector_index(%s, %s)",
                ("vectors.embeddings_vidx", "index_type=TREE_SQ,distance_measure=cosine"),
            )
        ]

    def test_drop_index(self) -> None:
        # [CSQL-PREV] CALL mysql.drop_vector_index('db.index').
        assert self.d.drop_index_sql() == [("CALL mysql.drop_vector_index(%s)", ("vectors.embeddings_vidx",))]

    def test_index_lookup(self) -> None:
        # [CSQL-PREV] the procedures register indexes in mysql.vector_indexes ('db.table').
        assert self.d.index_lookup_sql() == [
            ("SELECT `index_name` FROM mysql.vector_indexes WHERE `table_name` = %s", ("vectors.embeddings",))
        ]

    def test_exact_knn(self) -> None:
        # [CSQL-PREV] KNN: ORDER BY cosine_distance(embedding, string_to_vector('[..]')) LIMIT n.
        assert self.d.knn_query(VEC, 5) == (
            SELECT_CSQL + " ORDER BY cosine_distance(`embedding`, string_to_vector(%s)) LIMIT %s",
            (VEC, 5),
        )

    def test_ann(self) -> None:
        # [CSQL-PREV] ANN: WHERE NEAREST(embedding) TO (string_to_vector('[..]'), 'num_neighbors=K').
        assert self.d.ann_query(VEC, 5) == (
            SELECT_CSQL + " WHERE NEAREST(`embedding`) TO (string_to_vector(%s), %s)",
            (VEC, "num_neighbors=5"),
        )

    def test_filtered_search(self) -> None:
        # [CSQL-PREV] further predicates are ANDed after NEAREST(..) TO (..).
        assert self.d.ann_query(VEC, 50, "public.docs") == (
            SELECT_CSQL + " WHERE NEAREST(`embedding`) TO (string_to_vector(%s), %s) AND `source_table` = %s",
            (VEC, "num_neighbors=50", "public.docs"),
        )
        assert self.d.knn_query(VEC, 5, "public.docs") == (
            SELECT_CSQL + " WHERE `source_table` = %s ORDER BY cosine_distance(`embedding`, string_to_vector(%s)) LIMIT %s",
            ("public.docs", VEC, 5),
        )


# ============================================================== mariadb


class TestMariaDB:
    d = MariaDBSQL(TABLE, DB)

    def test_create_table(self) -> None:
        # [MDB-TABLE] VECTOR(N) NOT NULL + VECTOR INDEX (col) DISTANCE=cosine in CREATE TABLE.
        assert self.d.create_table_sql(3) == _create_table(
            "VECTOR(3)", ",\n  VECTOR INDEX `embeddings_vidx` (`embedding`) DISTANCE=cosine"
        )

    def test_upsert(self) -> None:
        # [MDB-COS] / Vector Overview: values converted with VEC_FromText('[..]').
        row = "(%s, %s, %s, %s, %s, %s, %s, %s, VEC_FromText(%s))"
        assert self.d.upsert_sql() == UPSERT_HEAD + row + UPSERT_TAIL

    def test_delete(self) -> None:
        assert self.d.delete_sql(3) == "DELETE FROM `embeddings` WHERE `id` IN (%s, %s, %s)"

    def test_create_index(self) -> None:
        # [MDB-4206] ALTER TABLE v ADD VECTOR INDEX(v); DISTANCE=cosine per [MDB-TABLE].
        assert self.d.create_index_sql() == [
            ("ALTER TABLE `embeddings` ADD VECTOR INDEX `embeddings_vidx` (`embedding`) DISTANCE=cosine", ())
        ]

    def test_rebuild_index(self) -> None:
        # HNSW is maintained by the server, so the sink never needs this automatically;
        # pinned for manual use: drop + add in one ALTER ([MDB-4206], [MDB-TABLE]).
        assert self.d.rebuild_index_sql() == [
            (
                "ALTER TABLE `embeddings` DROP INDEX `embeddings_vidx`, "
                "ADD VECTOR INDEX `embeddings_vidx` (`embedding`) DISTANCE=cosine",
                (),
            )
        ]

    def test_exact_knn_and_ann(self) -> None:
        # [MDB-COS] ORDER BY VEC_DISTANCE_COSINE(col, VEC_FromText(..)) LIMIT k uses a cosine
        # vector index when there is one (ANN) and is an exact scan when there is none.
        expected = (
            SELECT_MDB + " ORDER BY VEC_DISTANCE_COSINE(`embedding`, VEC_FromText(%s)) LIMIT %s",
            (VEC, 5),
        )
        assert self.d.ann_query(VEC, 5) == expected
        assert self.d.knn_query(VEC, 5) == expected

    def test_filtered_search(self) -> None:
        assert self.d.ann_query(VEC, 5, "public.docs") == (
            SELECT_MDB + " WHERE `source_table` = %s ORDER BY VEC_DISTANCE_COSINE(`embedding`, VEC_FromText(%s)) LIMIT %s",
            ("public.docs", VEC, 5),
        )


# ============================================================== portable


class TestPortable:
    d = PortableSQL(TABLE, DB)

    def test_create_table(self) -> None:
        # 4 bytes per float32 dimension.
        assert self.d.create_table_sql(384) == _create_table("VARBINARY(1536)")

    def test_upsert_binds_raw_bytes(self) -> None:
        assert self.d.upsert_sql() == UPSERT_HEAD + "(%s, %s, %s, %s, %s, %s, %s, %s, %s)" + UPSERT_TAIL
        assert self.d.encode_vector(np.array([1.0, -2.0], dtype=np.float32)) == b"\x00\x00\x80\x3f\x00\x00\x00\xc0"

    def test_exact_scan_and_filtered_scan(self) -> None:
        assert self.d.scan_sql(False) == "SELECT `id`, `embedding` FROM `embeddings` WHERE `id` > %s ORDER BY `id` LIMIT %s"
        assert self.d.scan_sql(True) == (
            "SELECT `id`, `embedding` FROM `embeddings` WHERE `source_table` = %s AND `id` > %s ORDER BY `id` LIMIT %s"
        )

    def test_points_by_id_and_keyset_pages(self) -> None:
        cols = "`id`, `source_table`, `source_key`, `text`, `text_hash`, `payload`, `generation`"
        assert self.d.points_sql(2) == f"SELECT {cols} FROM `embeddings` WHERE `id` IN (%s, %s)"
        assert self.d.iter_sql(False, True) == (
            f"SELECT {cols} FROM `embeddings` WHERE `source_table` = %s AND `id` > %s ORDER BY `id` LIMIT %s"
        )
        assert self.d.iter_sql(True, False) == (
            f"SELECT {cols}, `embedding` FROM `embeddings` WHERE `id` > %s ORDER BY `id` LIMIT %s"
        )

    def test_no_sql_search_or_index(self) -> None:
        assert self.d.create_index_sql() == [] and self.d.index_lookup_sql() == []
        with pytest.raises(NotImplementedError):
            self.d.ann_query(VEC, 5)


def test_state_table_and_statements() -> None:
    d = PortableSQL(TABLE, DB)
    assert d.create_state_table_sql() == (
        "CREATE TABLE IF NOT EXISTS `embeddings_state` (\n"
        "  `name` VARCHAR(191) NOT NULL,\n"
        "  `value` JSON NOT NULL,\n"
        "  PRIMARY KEY (`name`)\n"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    )
    assert d.state_set_sql() == (
        "INSERT INTO `embeddings_state` (`name`, `value`) VALUES (%s, %s) ON DUPLICATE KEY UPDATE `value` = VALUES(`value`)"
    )
    assert d.state_get_sql() == "SELECT `value` FROM `embeddings_state` WHERE `name` = %s"
    assert d.update_payload_sql() == (
        "UPDATE `embeddings` SET `source_table` = %s, `source_key` = %s, `text` = %s, `text_hash` = %s, "
        "`payload` = %s, `content_hash` = %s, `generation` = %s WHERE `id` = %s"
    )
    assert d.add_generation_column_sql() == (
        "ALTER TABLE `embeddings` ADD COLUMN `generation` BIGINT NOT NULL DEFAULT 0"
    )


def test_bulk_delete_statements() -> None:
    """delete_table / delete_table_except_generation: a keyset chunk of one source table's ids
    (the source-table index holds (source_table, id)), then a delete of those ids by primary key."""
    d = PortableSQL(TABLE, DB)
    assert d.table_ids_sql(False) == (
        "SELECT `id` FROM `embeddings` WHERE `source_table` = %s AND `id` > %s ORDER BY `id` LIMIT %s"
    )
    assert d.table_ids_sql(True) == (
        "SELECT `id` FROM `embeddings` WHERE `source_table` = %s AND `id` > %s AND `generation` <> %s "
        "ORDER BY `id` LIMIT %s"
    )
    assert d.delete_sql(2) == "DELETE FROM `embeddings` WHERE `id` IN (%s, %s)"


# ============================================================== dialect detection


@pytest.mark.parametrize(
    ("version", "flag", "expected"),
    [
        ("8.0.41-google", "ON", "cloudsql"),
        ("8.0.41-google", "OFF", "portable"),
        ("8.4.4-google", "ON", "cloudsql"),
        ("8.4.4-google", "OFF", "portable"),
        ("8.4.4", None, "portable"),  # community MySQL: no cloudsql_vector variable
        ("9.3.0", None, "portable"),  # native VECTOR type but no distance functions
        ("5.7.44-log", None, "portable"),
        ("10.11.6-MariaDB-0+deb12u1", None, "portable"),
        ("5.5.5-10.11.6-MariaDB-0+deb12u1", None, "portable"),
        ("11.4.5-MariaDB", None, "portable"),
        ("11.7.2-MariaDB", None, "mariadb"),
        ("11.8.2-MariaDB", None, "mariadb"),
        ("12.0.1-MariaDB-ubu2404", None, "mariadb"),
    ],
)
def test_detect_dialect(version: str, flag: str | None, expected: str) -> None:
    choice = detect_dialect(ServerInfo(version, flag))
    assert choice.dialect == expected
    assert version in choice.reason  # the logged reason names the server


def test_server_version_parsing() -> None:
    assert ServerInfo("10.11.6-MariaDB-0+deb12u1").version_tuple == (10, 11, 6)
    assert ServerInfo("5.5.5-10.11.6-MariaDB").version_tuple == (10, 11, 6)
    assert ServerInfo("8.0.41-google").version_tuple == (8, 0, 41)
    assert not ServerInfo("8.0.41-google").is_mariadb and ServerInfo("11.8.2-MariaDB").is_mariadb


@pytest.mark.parametrize("dialect", ["mariadb", "cloudsql", "cloudsql-preview"])
def test_forced_vector_dialect_on_server_without_vectors(dialect: str) -> None:
    with pytest.raises(SinkError) as err:
        check_dialect_supported(dialect, ServerInfo("10.11.6-MariaDB-0+deb12u1"))  # type: ignore[arg-type]
    msg = str(err.value)
    assert "10.11.6-MariaDB" in msg and "sink.dialect = 'portable'" in msg and "\n" not in msg


def test_forced_dialects_accepted_where_supported() -> None:
    check_dialect_supported("mariadb", ServerInfo("11.8.2-MariaDB"))
    check_dialect_supported("cloudsql", ServerInfo("8.0.41-google", "ON"))
    check_dialect_supported("cloudsql-preview", ServerInfo("8.0.41-google", "ON"))
    check_dialect_supported("portable", ServerInfo("10.11.6-MariaDB"))
    with pytest.raises(SinkError, match="cloudsql_vector variable is OFF"):
        check_dialect_supported("cloudsql", ServerInfo("8.0.41-google", "OFF"))
    with pytest.raises(SinkError, match="MySQL 5.7"):
        check_dialect_supported("portable", ServerInfo("5.6.51"))


def test_make_dialect() -> None:
    assert isinstance(make_dialect("cloudsql-preview", TABLE, DB), CloudSQLPreviewSQL)
    assert type(make_dialect("cloudsql", TABLE, DB)) is CloudSQLSQL
    assert isinstance(make_dialect("mariadb", TABLE, DB), MariaDBSQL)
    assert isinstance(make_dialect("portable", TABLE, DB), PortableSQL)


# ============================================================== index rules


def test_index_rules_thresholds() -> None:
    # [CSQL-IDX] no index below 1,000 rows: exact KNN until then.
    assert plan_index("cloudsql", 999, IndexStatus(False)).action == "none"
    create = plan_index("cloudsql", 1000, IndexStatus(False))
    assert (create.action, create.index_type) == ("create", "SCANN")
    # Preview: BRUTE_FORCE under 10,000 rows, TREE_SQ from 10,000.
    assert preview_index_type(9_999) == "BRUTE_FORCE" and preview_index_type(10_000) == "TREE_SQ"
    assert plan_index("cloudsql-preview", 5_000, IndexStatus(False)).index_type == "BRUTE_FORCE"
    assert plan_index("cloudsql-preview", 50_000, IndexStatus(False)).index_type == "TREE_SQ"


def test_index_rebuild_on_drift() -> None:
    built = IndexStatus(True, "SCANN", 10_000)
    assert plan_index("cloudsql", 15_000, built).action == "none"
    assert plan_index("cloudsql", 19_999, built).action == "none"
    assert plan_index("cloudsql", 20_000, built).action == "rebuild"  # grew 2x
    assert plan_index("cloudsql", 5_000, built).action == "rebuild"  # shrank 2x
    # Below the minimum the old index is kept (Cloud SQL could not build a new one).
    assert plan_index("cloudsql", 900, IndexStatus(True, "SCANN", 2_000)).action == "none"
    # Preview: growing past 10,000 switches BRUTE_FORCE to TREE_SQ via alter_vector_index.
    switch = plan_index("cloudsql-preview", 12_000, IndexStatus(True, "BRUTE_FORCE", 8_000))
    assert (switch.action, switch.index_type) == ("rebuild", "TREE_SQ")
    # An index built by someone else is adopted, not rebuilt.
    assert plan_index("cloudsql", 50_000, IndexStatus(True, None, None)).action == "record"


# ============================================================== column inspection


def test_classify_vector_column() -> None:
    assert classify_vector_column("varbinary", "varbinary(1536)", 1536) == ("binary", 384)
    assert classify_vector_column("vector", "vector(384)", None) == ("vector", 384)
    # [CSQL-WORK]/"Vector search": Cloud SQL tags its VARBINARY vector column with a COMMENT and CONSTRAINT.
    assert classify_vector_column("varbinary", "varbinary(12)", 12, "GCP Type: FLOAT_VECTOR(3)") == ("cloudsql", 3)
    assert classify_vector_column("varbinary", "varbinary(12)", 12, "", "CHECK (vector_dim(`embedding`) = 3)") == (
        "cloudsql",
        3,
    )
    assert classify_vector_column("blob", "blob", 65535) == (None, None)
    assert classify_vector_column("varbinary", "varbinary(10)", 10) == (None, None)


def test_dialects_read_only_their_own_columns() -> None:
    assert PortableSQL(TABLE, DB).reads_column("binary") and not PortableSQL(TABLE, DB).reads_column("vector")
    assert MariaDBSQL(TABLE, DB).reads_column("vector") and not MariaDBSQL(TABLE, DB).reads_column("binary")
    assert CloudSQLSQL(TABLE, DB).reads_column("cloudsql") and not CloudSQLSQL(TABLE, DB).reads_column("binary")
    assert CloudSQLSQL(TABLE, DB, mysql_major=9).reads_column("vector")
    # Cloud SQL's tag text is undocumented: an untagged VARBINARY is tolerated (with a
    # warning) by the Cloud SQL dialects only; nothing tolerates an unreadable column.
    assert CloudSQLSQL(TABLE, DB).tolerates_column("binary")
    assert CloudSQLPreviewSQL(TABLE, DB).tolerates_column("binary")
    assert not PortableSQL(TABLE, DB).tolerates_column("cloudsql")
    assert not MariaDBSQL(TABLE, DB).tolerates_column("binary")
    assert not CloudSQLSQL(TABLE, DB).tolerates_column(None)


# ============================================================== identifiers, DSN, vectors


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", "a`b", "x; DROP TABLE y", "a" * 65, "naïve"])
def test_identifiers_are_validated(bad: str) -> None:
    with pytest.raises(SinkError):
        quote_ident(bad)
    with pytest.raises(SinkError):
        PortableSQL(bad, DB)


def test_identifier_quoting() -> None:
    assert quote_ident("embeddings") == "`embeddings`"
    assert PortableSQL("t", DB).q_state == "`t_state`"


def test_parse_dsn_and_password_override() -> None:
    d = parse_dsn("mysql://alice:s%40cret@db.example:3307/vectors")
    assert (d.host, d.port, d.user, d.database, d.password) == ("db.example", 3307, "alice", "vectors", "s@cret")
    assert "s@cret" not in repr(d)
    env = parse_dsn("mysql://alice:dsnpw@127.0.0.1/vectors", password=SecretStr("fromenv").get_secret_value())
    assert env.password == "fromenv" and env.port == 3306
    sock = parse_dsn("mysql://bob@localhost/v?unix_socket=/cloudsql/p:r:i")
    assert sock.unix_socket == "/cloudsql/p:r:i" and sock.where == "/cloudsql/p:r:i"


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("", "empty"),
        ("postgres://u@h/db", "scheme"),
        ("mysql://h:3306/db", "user"),
        ("mysql://u@h:3306/", "database"),
        ("mysql://u@h:3306/db?sslmode=x", "sslmode"),
        ("mysql://u@h:99999/db", "valid URL"),
        ("mysql://u@h/db`x", "database name"),
    ],
)
def test_parse_dsn_errors(dsn: str, fragment: str) -> None:
    with pytest.raises(SinkError, match=fragment):
        parse_dsn(dsn)


def test_vector_text_round_trips_float32_exactly() -> None:
    rng = np.random.default_rng(7)
    v = rng.normal(size=384).astype(np.float32)
    v[:3] = [1e-30, -3.4028235e38, 0.0]
    assert np.array_equal(parse_vector_text(vector_to_text(v)), v)
    assert vector_to_text(np.array([1, 2, 3], dtype=np.float32)) == "[1,2,3]"
    # Servers may print exponents or spaces.
    assert np.array_equal(parse_vector_text("[1.000000e+00, 2, -3.5]"), np.array([1, 2, -3.5], dtype=np.float32))


def test_dimension_limit_constant() -> None:
    # [CSQL-WORK] "A vector embedding has an upper limit of 16,000 dimensions."
    assert MAX_DIMENSION == 16_000
