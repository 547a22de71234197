"""The sink itself: :class:`MySQLSink` (see :mod:`actors.sinks.mysql` for dialects and limits).

Connection and retries, schema, and index maintenance come from the mixins in
``connection.py``, ``schema.py`` and ``index.py``; this module holds the
constructor (dialect choice) and the :class:`VectorSink` operations.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pymysql

from actors.sinks.base import (
    FieldFilter,
    UnsupportedSearch,
    MissingPointError,
    PointError,
    PointTooLarge,
    SearchHit,
    SinkError,
    StoredPoint,
    VectorPoint,
    VectorSink,
    check_generation,
)
from actors.sinks.mysql.config import MySQLSinkConfig
from actors.sinks.mysql.connection import ConnectionMixin, _error_code, _error_text
from actors.sinks.mysql.dialects import MAX_TEXT_BYTES, Statement, make_dialect, quote_ident
from actors.sinks.mysql.dsn import parse_dsn
from actors.sinks.mysql.encoding import content_hash, dump_json, vector_to_text
from actors.sinks.mysql.index import IndexMixin
from actors.sinks.mysql.schema import SchemaMixin
from actors.sinks.mysql.server import Dialect, ServerInfo, _log_once, check_dialect_supported, detect_dialect

log = logging.getLogger(__name__)

#: ids in one ``... IN (...)`` statement at most (fewer when the statement size limit says so)
_IDS_PER_STATEMENT = 5000


class MySQLSink(SchemaMixin, IndexMixin, ConnectionMixin, VectorSink):
    """Vectors in a MySQL-family table; see the package docstring for dialects and limits.

    Keyword-only knobs (defaults suit production; tests shrink them):
    ``retry_deadline_s`` bounds the exponential backoff on transient errors,
    ``scan_chunk_rows`` is the page size of streamed reads, ``lock_wait_timeout_s``
    sets the session's ``innodb_lock_wait_timeout``, ``max_statement_bytes`` caps
    one statement below what the server's ``max_allowed_packet`` allows (read on
    every connect), ``delete_chunk_rows`` is how many rows one transaction of a
    bulk delete (``delete``, ``delete_table``...) removes at most.

    Statement sizes: every statement is measured on its escaped SQL before it
    is sent and stays within ``max_allowed_packet`` (less 1 KiB); upserts are
    multi-row INSERTs of at most 16 MiB, id lists are split by bytes.  A single
    row that cannot fit, or a text over the MEDIUMTEXT column's 16 MiB, raises
    :class:`PointTooLarge` and the call's transaction is rolled back.
    """

    shared = True

    def __init__(
        self,
        config: MySQLSinkConfig,
        *,
        retry_deadline_s: float = 300.0,
        scan_chunk_rows: int = 4096,
        lock_wait_timeout_s: int | None = None,
        connect_timeout_s: int = 10,
        max_statement_bytes: int | None = None,
        delete_chunk_rows: int = 5000,
    ) -> None:
        self._config = config
        password = config.password.get_secret_value() if config.password is not None else None
        self._dsn = parse_dsn(config.dsn, password)
        self._where = f"{config.dsn_masked}" if config.dsn else self._dsn.where
        self._retry_deadline_s = float(retry_deadline_s)
        # A search caller (an HTTP request) should not wait as long as a write may.
        self._search_deadline_s = min(30.0, self._retry_deadline_s)
        self._scan_chunk_rows = max(1, int(scan_chunk_rows))
        self._lock_wait_timeout_s = lock_wait_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._lock = threading.RLock()
        self._conn: pymysql.connections.Connection | None = None
        self._statement_cap = max_statement_bytes
        self._max_statement_bytes = 4 << 20
        self._statement_limit = 4 << 20
        self._max_allowed_packet = 4 << 20
        self._delete_chunk_rows = max(1, int(delete_chunk_rows))
        self._connect()
        self.server = self._read_server_info()
        if config.dialect == "auto":
            choice = detect_dialect(self.server)
            dialect = choice.dialect
            _log_once(
                (self._where, dialect), "MySQL sink %s: using dialect %r (%s)", self._where, dialect, choice.reason
            )
        else:
            dialect = config.dialect  # type: ignore[assignment]
            check_dialect_supported(dialect, self.server)
            _log_once(
                (self._where, dialect), "MySQL sink %s: using dialect %r (set in sink.dialect)", self._where, dialect
            )
        self.dialect: Dialect = dialect
        self.sql = make_dialect(dialect, config.table, self._dsn.database, mysql_major=self.server.version_tuple[0])
        quote_ident(f"{config.table}_state")  # validate derived names up front
        quote_ident(self.sql.index_name)
        self._dimension: int | None = None
        self._state_table_ready = False
        self._index_exists: bool | None = None
        self._index_checked_at = 0.0
        self._changes_since_check = 0
        self._next_index_check = 0
        #: False in the partitioned writers but the first (actors/writer.py): one process decides when
        #: the vector index is built or rebuilt, instead of W racing to run the same DDL
        self.maintains_index = True

    def _read_server_info(self) -> ServerInfo:
        def read(cur: Any) -> ServerInfo:
            cur.execute("SELECT VERSION()")
            version = str(cur.fetchone()[0])
            cur.execute("SHOW VARIABLES LIKE %s", ("cloudsql_vector",))
            row = cur.fetchone()
            return ServerInfo(version=version, cloudsql_vector=str(row[1]) if row else None)

        return self._run("reading the server version", read)

    # ------------------------------------------------------------------ writes
    def _check_vector(self, vector: np.ndarray, dimension: int, what: str) -> np.ndarray:
        arr = np.asarray(vector, dtype=np.float32).reshape(-1)
        if arr.shape[0] != dimension:
            raise SinkError(f"{what} has {arr.shape[0]} dimensions but the table stores {dimension}")
        if not np.all(np.isfinite(arr)):
            raise SinkError(f"{what} contains NaN or infinite values; the embedder produced an invalid vector")
        return arr

    def _check_text(self, p: VectorPoint) -> None:
        """Refuse a text the ``text`` column (MEDIUMTEXT) cannot hold, before anything is sent.

        MariaDB and MySQL in strict mode fail the statement (error 1406), and
        without strict mode they cut the text silently.
        """
        if len(p.text) * 4 <= MAX_TEXT_BYTES:  # a character is at most 4 bytes in UTF-8
            return
        size = len(p.text.encode("utf-8", "surrogatepass"))
        if size > MAX_TEXT_BYTES:
            raise PointTooLarge(
                p.id, p.table, size, MAX_TEXT_BYTES, f"the text column (MEDIUMTEXT) of sink.table {self.sql.table}",
                "shorten the row's text (the template in tables[].text renders it)",
            )

    def _row_too_large(self, point_id: str, table: str, size: int) -> PointTooLarge:
        if self._statement_cap and self._statement_limit == self._statement_cap:
            key, fix = "max_statement_bytes (MySQLSink)", "raise max_statement_bytes or shorten the row's text"
        else:
            key = f"the server's max_allowed_packet ({self._max_allowed_packet:,} bytes, less 1 KiB of headroom)"
            fix = ("raise max_allowed_packet on the server (SET GLOBAL max_allowed_packet = ..., or the "
                   "database flag on Cloud SQL) or shorten the row's text")
        return PointTooLarge(point_id, table, size, self._statement_limit, key, fix)

    def _execute_rows(self, cur: Any, sql: str, rows: Sequence[tuple[str, str]]) -> None:
        """Run one statement writing ``rows`` ((id, table) each, in statement order).

        A value a column cannot hold (error 1406, "Data too long for column ...
        at row N") is a :class:`PointError` naming that row's point: retrying
        cannot help.
        """
        try:
            cur.execute(sql)
        except pymysql.err.DataError as exc:
            if _error_code(exc) != 1406:
                raise
            text = _error_text(exc)
            m = re.search(r"at row (\d+)", text)
            index = int(m.group(1)) - 1 if m else 0
            point_id, table = rows[index] if 0 <= index < len(rows) else rows[0]
            raise PointError(
                point_id,
                f"point {point_id} of {table} does not fit sink.table {self.sql.table} (error 1406: {text}): "
                "shorten the row's text or payload",
            ) from None

    def _insert_many(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        """executemany-style multi-row INSERT ... ON DUPLICATE KEY UPDATE.

        pymysql's own executemany only folds rows when every value is a bare
        ``%s``; vector dialects wrap the vector in a function call, so rows are
        folded here the same way (values still escaped by the driver).  Each
        statement stays within ``_max_statement_bytes``; a row alone over the
        hard ``_statement_limit`` raises :class:`PointTooLarge`.
        """
        prefix = self.sql.upsert_prefix()
        suffix = self.sql.upsert_suffix()
        row_sql = self.sql.upsert_row()
        fixed = len(prefix) + len(suffix)
        parts: list[str] = []
        written: list[tuple[str, str]] = []
        size = fixed
        for row in rows:
            values = cur.mogrify(row_sql, row)
            nbytes = _sql_bytes(values)
            if fixed + nbytes > self._statement_limit:
                raise self._row_too_large(str(row[0]), str(row[1]), fixed + nbytes)
            if parts and size + nbytes + 2 > self._max_statement_bytes:
                self._execute_rows(cur, prefix + ", ".join(parts) + suffix, written)
                parts, written, size = [], [], fixed
            parts.append(values)
            written.append((str(row[0]), str(row[1])))
            size += nbytes + 2
        if parts:
            self._execute_rows(cur, prefix + ", ".join(parts) + suffix, written)

    def _id_statements(self, ids: Sequence[str], sql: Callable[[int], str]) -> Iterator[list[str]]:
        """``ids`` in runs for ``sql(n)`` (``... IN (n marks)``) statements within the statement size
        limit, at most 5000 ids each."""
        budget = self._statement_limit - len(sql(0)) - 64
        chunk: list[str] = []
        used = 0
        for i in ids:
            size = len(i) + 4  # quoted, and ", " between
            if chunk and (used + size > budget or len(chunk) >= _IDS_PER_STATEMENT):
                yield chunk
                chunk, used = [], 0
            chunk.append(i)
            used += size
        if chunk:
            yield chunk

    def _delete_ids(self, cur: Any, ids: Sequence[str]) -> None:
        for chunk in self._id_statements(ids, self.sql.delete_sql):
            cur.execute(self.sql.delete_sql(len(chunk)), chunk)

    def upsert(self, points: Sequence[VectorPoint]) -> None:
        """Insert or overwrite points in one transaction; committed (durable) on return.

        Raises :class:`PointTooLarge` (nothing of the call applied) for a point
        whose text the column cannot hold or whose row exceeds ``max_allowed_packet``.
        """
        if not points:
            return
        dimension = self._require_dimension()
        rows = []
        for p in points:
            self._check_text(p)
            vec = self._check_vector(p.vector, dimension, f"point {p.id} ({p.table})")
            rows.append((p.id, *_stored_fields(p), self.sql.encode_vector(vec)))
        self._run(f"upserting {len(rows)} points", lambda cur: self._insert_many(cur, rows))
        self._after_write(len(rows))

    def delete(self, point_ids: Sequence[str]) -> None:
        """Delete points by id (missing ids ignored); committed on return.

        One transaction per ``delete_chunk_rows`` ids (a million ids do not make
        one huge transaction; deletes are idempotent, so a call interrupted
        half-way is completed by its replay), statements split by bytes.
        """
        if not point_ids:
            return
        ids = list(point_ids)
        step = self._delete_chunk_rows
        for start in range(0, len(ids), step):
            chunk = list(dict.fromkeys(ids[start : start + step]))
            self._run(f"deleting {len(chunk)} points", lambda cur, chunk=chunk: self._delete_ids(cur, chunk))
        self._after_write(len(ids))

    def delete_table(self, table: str) -> int:
        """Delete every point of ``table``: ``delete_chunk_rows`` ids at a time, each chunk its own
        transaction (ids found by the source-table index in id order, then deleted by primary key)."""
        return self._delete_table_rows(table, None)

    def delete_table_except_generation(self, table: str, generation: int) -> int:
        """Delete the points of ``table`` whose ``generation`` column is not ``generation``, in chunks
        like :meth:`delete_table`."""
        return self._delete_table_rows(table, check_generation(generation))

    def _delete_table_rows(self, table: str, generation: int | None) -> int:
        if not self._table_ready():
            return 0
        sql = self.sql.table_ids_sql(generation is not None)
        limit = self._delete_chunk_rows
        after = ""
        removed = 0
        while True:
            params = (table, after, generation, limit) if generation is not None else (table, after, limit)

            def chunk(cur: Any, params: tuple[Any, ...] = params) -> list[str]:
                cur.execute(sql, params)
                ids = [str(r[0]) for r in cur.fetchall()]
                self._delete_ids(cur, ids)
                return ids

            ids = self._run(f"deleting points of {table}", chunk)
            removed += len(ids)
            if len(ids) < limit:
                break
            after = ids[-1]  # keyset: the next chunk starts after it (no rescan of deleted entries)
        if removed:
            self._after_write(removed)
        return removed

    def update_payloads(self, points: Sequence[VectorPoint]) -> None:
        """Overwrite table/key/text/payload/generation of existing points, keeping their vectors.

        One transaction: the rows are locked and checked first, and if any point
        is missing :class:`MissingPointError` rolls the whole call back (an UPDATE
        of a missing row changes nothing and says so only in a row count); a row
        too large for one statement raises :class:`PointTooLarge`, also rolled back.
        """
        if not points:
            return
        for p in points:
            self._check_text(p)
        ids = list(dict.fromkeys(p.id for p in points))
        rows = [(*_stored_fields(p), p.id) for p in points]
        update_sql = self.sql.update_payload_sql()

        def run(cur: Any) -> None:
            found: set[str] = set()
            for chunk in self._id_statements(ids, self.sql.lock_ids_sql):
                cur.execute(self.sql.lock_ids_sql(len(chunk)), chunk)
                found.update(str(r[0]) for r in cur.fetchall())
            missing = [i for i in ids if i not in found]
            if missing:
                raise MissingPointError(missing)  # _run rolls back: nothing of this call is applied
            for p, row in zip(points, rows):
                statement = cur.mogrify(update_sql, row)
                size = _sql_bytes(statement)
                if size > self._statement_limit:
                    raise self._row_too_large(p.id, p.table, size)
                self._execute_rows(cur, statement, [(p.id, p.table)])

        self._run(f"updating {len(rows)} payloads", run)

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        """Number of stored row points (the state table is separate)."""

        if not self._table_ready():
            return 0  # nothing written yet

        def run(cur: Any) -> int:
            cur.execute(self.sql.count_sql())
            return int(cur.fetchone()[0])

        return self._run("counting points", run)

    def text_hashes(self, point_ids: Sequence[str]) -> dict[str, str]:
        """Stored text hash of each existing id among ``point_ids``."""
        rows = self._select_by_ids(self.sql.text_hashes_sql, point_ids, "reading text hashes")
        return {str(r[0]): str(r[1]) for r in rows}

    def _select_by_ids(self, sql: Callable[[int], str], point_ids: Sequence[str], what: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql(n)`` (``... WHERE id IN (n marks)``) for the distinct ``point_ids``, statements
        split by bytes (see :meth:`_id_statements`)."""
        ids = list(dict.fromkeys(point_ids))
        if not ids or not self._table_ready():
            return []

        def run(cur: Any) -> list[tuple[Any, ...]]:
            rows: list[tuple[Any, ...]] = []
            for chunk in self._id_statements(ids, sql):
                cur.execute(sql(len(chunk)), chunk)
                rows.extend(cur.fetchall())
            return rows

        return self._run(what, run)

    def points_page(self, table: str | None, cursor: str | None, limit: int | None = None,
                    with_vectors: bool = False) -> tuple[list[StoredPoint], str | None]:
        """One keyset page by primary key, ``scan_chunk_rows`` points unless ``limit`` says;
        the cursor is the last id of the page."""
        if not self._table_ready():
            return [], None
        if with_vectors:
            self._require_dimension()
        limit = max(1, int(limit or self._scan_chunk_rows))
        rows = self._keyset_page(self.sql.iter_sql(with_vectors, table is not None), table, cursor or "", limit,
                                 "reading points")
        points = [self._stored_point(r, with_vectors) for r in rows]
        return points, (points[-1].id if len(points) == limit else None)

    def get_points(self, point_ids: Sequence[str]) -> dict[str, StoredPoint]:
        """Stored fields of each existing id among ``point_ids`` (no vectors)."""
        rows = self._select_by_ids(self.sql.points_sql, point_ids, "reading points")
        return {str(r[0]): self._stored_point(r, False) for r in rows}

    def _stored_point(self, r: tuple[Any, ...], with_vectors: bool) -> StoredPoint:
        """A row of ``iter_sql``/``points_sql`` as a :class:`StoredPoint`."""
        return StoredPoint(
            id=str(r[0]),
            table=str(r[1]),
            key=json.loads(r[2]),
            text=str(r[3]),
            text_hash=str(r[4]),
            payload=json.loads(r[5]),
            generation=int(r[6]),
            vector=self.sql.decode_vector(r[7]) if with_vectors else None,
        )

    def _pages(self, sql: str, table: str | None, what: str, deadline_s: float | None = None,
               leading: tuple[Any, ...] = ()) -> Iterator[list[tuple[Any, ...]]]:
        """Keyset pages of ``sql`` (``[conditions AND] [source_table = %s AND] id > %s ORDER BY id
        LIMIT %s``; ``leading``: the conditions' parameters), ``scan_chunk_rows`` at a time: memory
        stays bounded for any table size."""
        after = ""
        while True:
            rows = self._keyset_page(sql, table, after, self._scan_chunk_rows, what, deadline_s, leading)
            if rows:
                yield rows
            if len(rows) < self._scan_chunk_rows:
                return
            after = str(rows[-1][0])

    def _keyset_page(self, sql: str, table: str | None, after: str, limit: int, what: str,
                     deadline_s: float | None = None, leading: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """The rows of one page of a keyset ``sql`` (see :meth:`_pages`): ids after ``after``."""
        params = (*leading, table, after, limit) if table is not None else (*leading, after, limit)

        def page(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(sql, params)
            return list(cur.fetchall())

        return self._run(what, page, deadline_s=deadline_s)

    def search(self, vector: np.ndarray | None, k: int, *, table: str | None = None,
               filters: Sequence[FieldFilter] = (), score_threshold: float | None = None,
               text: str = "", mode: str = "dense") -> list[SearchHit]:
        """The ``k`` nearest points by cosine similarity, best first.

        ``table`` and ``filters`` are SQL conditions (:meth:`SqlDialect.filter_where`).
        ANN through the vector index when one exists, exact KNN otherwise; the
        score is always the exact cosine similarity, recomputed here from the
        returned vectors (ANN distances may be quantised).  Only ``mode="dense"``:
        this sink has no BM25 index.
        """
        if mode != "dense":
            raise UnsupportedSearch(
                f"the MySQL sink searches by vector only: mode {mode!r} needs BM25, which the Qdrant sinks have; "
                "use mode 'dense'"
            )
        if not self._table_ready():
            return []  # e.g. a search replica started before the writer created the table
        dimension = self._require_dimension()
        q = self._check_vector(vector, dimension, "query vector")
        if k <= 0:
            return []
        where = self.sql.filter_where(filters)
        if not self.sql.has_ann:
            hits = self._scan_search(q, int(k), table, where)
        else:
            hits = self._sql_search(q, int(k), table, where)
        if score_threshold is not None:
            # hits are the top k by exact score: those under the threshold have nothing better behind them
            hits = [h for h in hits if h.score >= score_threshold]
        return hits

    def _sql_search(self, q: np.ndarray, k: int, table: str | None, where: Statement | None) -> list[SearchHit]:
        text = vector_to_text(q)
        use_ann = self._has_index_cached()
        filtered = table is not None or where is not None
        rows: list[tuple[Any, ...]] | None = None
        if use_ann:
            # An ANN index may apply a condition after its own top-k step, leaving fewer than
            # k rows: ask it for more candidates, and when it still comes up short, run the
            # exact query (which the conditions narrow), so a filter returns every match up to k.
            fetch = int(k) if not filtered else min(max(int(k) * 10, 100), 10_000)
            sql, params = self.sql.ann_query(text, fetch, table, where)
            try:
                rows = self._fetch_all("searching (ANN)", sql, params)
            except SinkError as exc:
                log.warning("MySQL sink: ANN search failed, falling back to exact KNN: %s", exc)
                self._index_exists = None
                rows = None
            if rows is not None and filtered and len(rows) < k:
                rows = None  # post-filtered ANN came up short: the exact answer is cheap enough
        if rows is None:
            sql, params = self.sql.knn_query(text, int(k), table, where)
            rows = self._fetch_all("searching (exact KNN)", sql, params)
        scored = []
        for r in rows:
            scored.append((_cosine(q, self.sql.decode_vector(r[4])), r))
        scored.sort(key=lambda t: (-t[0], str(t[1][0])))
        return [
            SearchHit(table=str(r[1]), key=json.loads(r[2]), score=float(s), payload=json.loads(r[3]))
            for s, r in scored[: int(k)]
        ]

    def _scan_search(self, q: np.ndarray, k: int, table: str | None, where: Statement | None = None) -> list[SearchHit]:
        """Exact cosine search by streaming (id, vector) pages through numpy (rows matching
        ``table`` and ``where`` only: the server applies both)."""
        dimension = q.shape[0]
        qn = float(np.linalg.norm(q))
        best_ids: list[str] = []
        best_vecs = np.zeros((0, dimension), dtype=np.float32)
        best_scores = np.zeros(0, dtype=np.float32)
        pages = self._pages(self.sql.scan_sql(table is not None, where[0] if where else ""), table,
                            "searching (exact scan)", self._search_deadline_s, where[1] if where else ())
        for rows in pages:
            blob = b"".join(bytes(r[1]) for r in rows)
            if len(blob) != len(rows) * 4 * dimension:
                bad = next(str(r[0]) for r in rows if len(r[1]) != 4 * dimension)
                raise SinkError(
                    f"stored vector of point {bad} does not have {dimension} float32 values: the table is corrupt"
                )
            mat = np.frombuffer(blob, dtype="<f4").reshape(len(rows), dimension)
            scores = _cosine_rows(mat, q, qn)
            ids = [str(r[0]) for r in rows]
            all_ids = best_ids + ids
            all_scores = np.concatenate([best_scores, scores])
            all_vecs = np.concatenate([best_vecs, mat])
            if len(all_ids) > k:
                keep = np.argpartition(-all_scores, k - 1)[:k]
            else:
                keep = np.arange(len(all_ids))
            best_ids = [all_ids[i] for i in keep]
            best_scores = all_scores[keep]
            best_vecs = np.ascontiguousarray(all_vecs[keep])
        if not best_ids:
            return []
        # Final scores in float64 from the stored vectors; ties broken by id for stable output.
        exact = [(_cosine(q, best_vecs[i]), best_ids[i]) for i in range(len(best_ids))]
        exact.sort(key=lambda t: (-t[0], t[1]))
        ids = [i for _, i in exact]

        def fetch(cur: Any) -> dict[str, tuple[Any, ...]]:
            cur.execute(self.sql.hits_sql(len(ids)), ids)
            return {str(r[0]): r for r in cur.fetchall()}

        stored = self._run("reading search hits", fetch, deadline_s=self._search_deadline_s)
        hits = []
        for score, pid in exact:
            r = stored.get(pid)
            if r is None:
                continue  # deleted between the scan and this read
            hits.append(SearchHit(table=str(r[1]), key=json.loads(r[2]), score=float(score), payload=json.loads(r[3])))
        return hits

    # ------------------------------------------------------------------ state
    def _ensure_state_table(self) -> None:
        if self._state_table_ready:
            return
        self._execute_statements([(self.sql.create_state_table_sql(), ())], "creating the state table")
        self._state_table_ready = True

    def get_state(self, name: str) -> dict[str, Any] | None:
        """The JSON document stored under ``name``, or None."""
        self._ensure_state_table()

        def run(cur: Any) -> Any:
            cur.execute(self.sql.state_get_sql(), (name,))
            row = cur.fetchone()
            return None if row is None else row[0]

        raw = self._run(f"reading state {name!r}", run)
        return None if raw is None else json.loads(raw)

    def set_state(self, name: str, value: dict[str, Any] | None) -> None:
        """Store (or with None remove) a state document; committed on return."""
        self._ensure_state_table()
        if value is None:
            self._run(f"removing state {name!r}", lambda cur: cur.execute(self.sql.state_delete_sql(), (name,)))
            return
        doc = dump_json(value)
        self._run(f"writing state {name!r}", lambda cur: cur.execute(self.sql.state_set_sql(), (name, doc)))

    def bound_retries(self, seconds: float) -> None:
        """See :meth:`VectorSink.bound_retries`: writes give up after ``seconds`` (searches sooner still)."""
        self._retry_deadline_s = float(seconds)
        self._search_deadline_s = min(self._search_deadline_s, self._retry_deadline_s)

    def list_states(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every state document whose name starts with ``prefix``."""
        self._ensure_state_table()

        def run(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(self.sql.state_list_sql(), (len(prefix), prefix))
            return list(cur.fetchall())

        return {name: json.loads(raw) for name, raw in self._run(f"listing states {prefix!r}*", run)}

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass
                self._conn = None

    def __repr__(self) -> str:
        return f"MySQLSink({self._where}, table={self.sql.table!r}, dialect={self.dialect!r})"


def _stored_fields(p: VectorPoint) -> tuple[Any, ...]:
    """What is stored beside the vector, in column order: source_table, source_key, text,
    text_hash, payload, content_hash, generation (upserts and payload updates write the same)."""
    payload_json = dump_json(p.payload or {})
    return (p.table, dump_json(list(p.key)), p.text, p.text_hash, payload_json,
            content_hash(p.table, p.key, p.text, payload_json), int(p.generation))


def _sql_bytes(sql: str) -> int:
    """Bytes the driver sends for ``sql`` (UTF-8; escaped binary values travel as surrogates)."""
    return len(sql) if sql.isascii() else len(sql.encode("utf-8", "surrogateescape"))


def _cosine(q: np.ndarray, v: np.ndarray) -> float:
    q64 = np.asarray(q, dtype=np.float64)
    v64 = np.asarray(v, dtype=np.float64)
    denom = float(np.linalg.norm(q64) * np.linalg.norm(v64))
    if denom == 0.0:
        return 0.0  # cosine is undefined for a zero vector; rank it neutral
    return float(np.dot(q64, v64) / denom)


def _cosine_rows(mat: np.ndarray, q: np.ndarray, qn: float) -> np.ndarray:
    dots = mat @ q
    norms = np.sqrt(np.einsum("ij,ij->i", mat, mat)) * qn
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.where(norms > 0, dots / norms, 0.0)
    return scores.astype(np.float32)
