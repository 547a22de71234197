"""The change source: backfill from a consistent snapshot, then stream pgoutput.

``PgChangeSource`` is a plain class (the Ray actor in ``actors.remote`` wraps
it).  Interface: ``start``, ``read_batch``, ``position``, ``ack``, ``close``.

Ordering and acknowledgement rules (the heart of "no lost change"):

* A new slot is created with an exported snapshot; existing rows are read in
  that snapshot (chunked by primary key) and handed out *before* any streamed
  change, so for every key the snapshot version is applied before later ones.
* The slot's ``confirmed_flush_lsn`` is only moved by :meth:`ack`, which the
  coordinator calls with an LSN whose changes are all durably written.  Nothing
  here ever confirms what it merely received.
* A crash before the ack makes PostgreSQL resend from the last confirmed
  position: replays are harmless because point ids are deterministic.
"""

from __future__ import annotations

import collections
import logging
import select
import time
from typing import Any, Iterator

import psycopg
from psycopg import pq

from actors.changes import Change, ChangeBatch, format_lsn, parse_lsn, point_id, text_hash
from actors.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Keepalive,
    PgOutputDecoder,
    Relation,
    RowChange,
    Truncate,
    parse_copy_message,
    standby_status,
)
from actors.source_schema import SourceError, TableSpec, connect, drop_slot, ensure_publication
from actors.source_config import SourceConfig

log = logging.getLogger(__name__)

#: seconds between unsolicited standby status updates (the server's default
#: wal_sender_timeout is 60 s; stay well inside it)
STATUS_INTERVAL_S = 5.0
#: longest wait for the rest of a transaction already begun (normally < 1 ms away)
COMMIT_WAIT_S = 0.05
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
#: keys whose last emitted text hash is remembered (lets payload-only updates skip the model)
TEXT_HASH_CACHE_ENTRIES = 100_000


def _cache_key(table: str, key: tuple[Any, ...]) -> Any:
    """Key of the emitted-text cache: ``(table, key)`` itself, hashed in C.

    Computing the point id (JSON + uuid5) for every change cost ~6 us, a
    quarter of the decode budget.  Only a key with unhashable values (a json
    key column) falls back to the point id.
    """
    ck = (table, key)
    try:
        hash(ck)
    except TypeError:
        return point_id(table, key)
    return ck


def _now_pg_us() -> int:
    return int(time.time() * 1_000_000) - _PG_EPOCH_US


class PgChangeSource:
    """Reads row changes for the configured tables from one logical slot."""

    def __init__(self, source: SourceConfig, specs: dict[str, TableSpec]) -> None:
        self.source = source
        self.specs = specs
        self.slot = source.slot
        self._repl: psycopg.Connection | None = None
        self._side: psycopg.Connection | None = None  # fetches unchanged TOAST values
        self._snapshot_conn: psycopg.Connection | None = None
        self._backfill: Iterator[list[Change]] | None = None
        self._streaming = False
        self._decoder = PgOutputDecoder()
        self._seq = 0
        self._in_txn = False
        self._txn_commit_lsn = 0
        # highest LSN such that every change up to it has been handed out in a
        # batch: the end of the last commit, or the server's idle position
        self._safe_lsn = 0
        self._received_lsn = 0
        self._acked_lsn = 0
        self._last_status = 0.0
        # point id -> hash of the text this reader emitted last for it.  Batches
        # are applied in emission order, so once earlier batches are written the
        # sink holds exactly that text.  Cleared on every (re)start, because
        # after a restart the emitted-but-unwritten batches are gone.
        self._emitted: collections.OrderedDict[str, str] = collections.OrderedDict()

    # -- set-up ----------------------------------------------------------------

    def slot_exists(self) -> bool:
        with connect(self.source.dsn_value, self.source.dsn_masked, autocommit=True) as conn:
            row = conn.execute(
                "SELECT plugin FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
            ).fetchone()
        if row is not None and row[0] != "pgoutput":
            raise SourceError(
                f"replication slot {self.slot} uses plugin {row[0]}, not pgoutput; "
                f"drop it (embedcluster drop --yes) or choose another source.slot"
            )
        return row is not None

    def start(self, backfill: bool) -> dict[str, Any]:
        """Prepare publication and slot; with ``backfill`` start from a fresh snapshot.

        ``backfill=True`` drops any existing slot and creates a new one whose
        exported snapshot is read before streaming starts.  ``False`` resumes
        streaming from the existing slot's confirmed position.
        """
        dsn, masked = self.source.dsn_value, self.source.dsn_masked
        self._emitted.clear()
        with connect(dsn, masked, autocommit=True) as conn:
            ensure_publication(conn, self.source.publication, list(self.specs))
        self._side = connect(dsn, masked, autocommit=True)
        self._repl = connect(dsn, masked, autocommit=True, replication="database")
        info: dict[str, Any] = {"slot": self.slot, "backfill": backfill}
        if not backfill:
            self._start_streaming()
            return info
        self._drop_slot_if_exists()
        res = self._simple(f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput EXPORT_SNAPSHOT')
        consistent = parse_lsn(res.get_value(0, 1).decode())
        snapshot = res.get_value(0, 2).decode()
        # The exported snapshot lives only until the replication connection runs
        # its next command, so import it right now, before START_REPLICATION.
        self._snapshot_conn = connect(dsn, masked)
        self._snapshot_conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        self._snapshot_conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        self._safe_lsn = consistent or 0
        self._backfill = self._backfill_chunks()
        info["consistent_lsn"] = format_lsn(consistent)
        log.info("slot %s created at %s; backfilling %s", self.slot, format_lsn(consistent), ", ".join(self.specs))
        return info

    def _drop_slot_if_exists(self) -> None:
        with connect(self.source.dsn_value, self.source.dsn_masked, autocommit=True) as conn:
            if drop_slot(conn, self.slot):
                log.info("dropped slot %s to take a fresh snapshot", self.slot)

    def _simple(self, command: str) -> pq.abc.PGresult:
        """Run a replication command (simple query protocol only) and check it."""
        assert self._repl is not None
        res = self._repl.pgconn.exec_(command.encode())
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK, pq.ExecStatus.COPY_BOTH):
            message = (res.error_message or b"").decode(errors="replace").strip()
            raise SourceError(f"replication command failed on slot {self.slot}: {message}")
        return res

    def _start_streaming(self) -> None:
        options = f"proto_version '1', publication_names '{self.source.publication}'"
        self._simple(f'START_REPLICATION SLOT "{self.slot}" LOGICAL 0/0 ({options})')
        self._streaming = True
        self._decoder = PgOutputDecoder()
        self._in_txn = False
        # The server resends from the slot's confirmed position, which is behind
        # everything handed out before this (re)start.  A safe position kept from
        # before would ride on the first new batch and be confirmed once it is
        # written, skipping changes not yet re-read; a second failure then
        # restarts past them.  Only what this stream hands out counts.
        self._safe_lsn = 0
        log.info("streaming slot %s from its confirmed position", self.slot)

    # -- backfill -----------------------------------------------------------------

    def _backfill_chunks(self) -> Iterator[list[Change]]:
        assert self._snapshot_conn is not None
        chunk = self.source.backfill_chunk
        for spec in self.specs.values():
            schema, table = spec.name.split(".")
            keys = ", ".join(f'"{c}"' for c in spec.key_columns)
            # aliased: key columns appear twice (native for the keyset, text for values)
            texts = ", ".join(f'"{c}"::text AS "v{i}"' for i, c in enumerate(spec.needed_columns))
            base = f'SELECT {keys}, {texts} FROM "{schema}"."{table}"'
            order = f" ORDER BY {keys} LIMIT {chunk}"
            last: tuple[Any, ...] | None = None
            total = 0
            nkeys = len(spec.key_columns)
            while True:
                if last is None:
                    rows = self._snapshot_conn.execute(base + order).fetchall()
                else:
                    marks = ", ".join(["%s"] * nkeys)
                    rows = self._snapshot_conn.execute(
                        f"{base} WHERE ({keys}) > ({marks}){order}", last
                    ).fetchall()
                if not rows:
                    break
                changes = []
                for raw in rows:
                    row = {
                        col: spec.convert(col, raw[nkeys + i]) for i, col in enumerate(spec.needed_columns)
                    }
                    text, payload = spec.render(row)
                    key = spec.key_of(row)
                    self._remember(_cache_key(spec.name, key), text)
                    changes.append(Change("upsert", spec.name, key, text, payload, 0))
                last = tuple(rows[-1][:nkeys])
                total += len(rows)
                yield changes
            log.info("slot %s: backfill of %s read %d rows", self.slot, spec.name, total)

    # -- the interface ----------------------------------------------------------

    def read_batch(self, max_changes: int, timeout: float, ack_lsn: int | None = None) -> ChangeBatch:
        """Next batch of changes, at most ``max_changes``.

        Blocks up to ``timeout`` seconds for the first change, then takes what
        is already available without waiting, so latency stays low at light
        load and batches grow by themselves under a backlog.  ``ack_lsn``
        piggybacks an acknowledgement (see :meth:`ack`).
        """
        if ack_lsn:
            self.ack(ack_lsn)
        self._seq += 1
        if self._backfill is not None:
            return self._next_backfill_batch(max_changes)
        return self._read_stream(max_changes, timeout)

    def _next_backfill_batch(self, max_changes: int) -> ChangeBatch:
        assert self._backfill is not None
        changes = next(self._backfill, None)
        if changes is not None:
            return ChangeBatch(self._seq, changes, ack_lsn=None, phase="backfill")
        # Snapshot exhausted: end its transaction, then stream from the slot.
        # The marker batch tells the writer the backfill is complete.
        assert self._snapshot_conn is not None
        self._snapshot_conn.rollback()
        self._snapshot_conn.close()
        self._snapshot_conn = None
        self._backfill = None
        self._start_streaming()
        return ChangeBatch(self._seq, [], ack_lsn=None, phase="backfill", snapshot_complete=True)

    def _read_stream(self, max_changes: int, timeout: float) -> ChangeBatch:
        assert self._repl is not None
        pgconn = self._repl.pgconn
        deadline = time.monotonic() + timeout
        changes: list[Change] = []
        while len(changes) < max_changes:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes == 0:
                self._maybe_send_status()
                if changes:
                    # Under a backlog more data is already in the kernel buffer:
                    # take it (no waiting) so batches grow; otherwise hand out
                    # what we have rather than wait.
                    if select.select([pgconn.socket], [], [], 0)[0]:
                        pgconn.consume_input()
                        continue
                    # ...but not between a transaction's last row and its
                    # COMMIT.  pgoutput sends a transaction whole once it has
                    # committed, so the rest is already on its way (in
                    # separate messages); a batch cut before the COMMIT could
                    # not confirm that commit when written, and the slot would
                    # lag the written rows until the next idle read.
                    if self._in_txn and select.select([pgconn.socket], [], [], COMMIT_WAIT_S)[0]:
                        pgconn.consume_input()
                        continue
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                ready, _, _ = select.select([pgconn.socket], [], [], min(remaining, STATUS_INTERVAL_S))
                if ready:
                    pgconn.consume_input()
                continue
            if nbytes < 0:
                message = (pgconn.error_message or b"").decode(errors="replace").strip()
                raise SourceError(f"replication stream of slot {self.slot} ended: {message or 'server closed it'}")
            msg = parse_copy_message(data)
            if isinstance(msg, Keepalive):
                self._received_lsn = max(self._received_lsn, msg.wal_end)
                if not self._in_txn:
                    # Between transactions the server has nothing more for us up
                    # to wal_end: once earlier batches are written that position
                    # is safe to confirm (keeps lag at zero on an idle source).
                    self._safe_lsn = max(self._safe_lsn, msg.wal_end)
                if msg.reply_requested:
                    self._send_status(reply=False)
                continue
            self._received_lsn = max(self._received_lsn, msg.data_start)
            self._decode(msg.payload, changes)
        return ChangeBatch(self._seq, changes, ack_lsn=self._safe_lsn or None, phase="stream")

    def _decode(self, payload: bytes, out: list[Change]) -> None:
        event = self._decoder.decode(payload)
        if type(event) is RowChange:  # by far the most frequent: test it first
            self._row_change(event, out)
        elif isinstance(event, Begin):
            self._in_txn = True
            self._txn_commit_lsn = event.final_lsn
        elif isinstance(event, Commit):
            self._in_txn = False
            self._safe_lsn = max(self._safe_lsn, event.end_lsn)
        elif isinstance(event, RowChange):
            self._row_change(event, out)
        elif isinstance(event, Truncate):
            for rel in event.relations:
                if rel.qualified_name in self.specs:
                    out.append(Change("truncate", rel.qualified_name, (), lsn=self._txn_commit_lsn))
                    self._emitted.clear()

    def _row_change(self, event: RowChange, out: list[Change]) -> None:
        spec = self.specs.get(event.relation.qualified_name)
        if spec is None:
            return
        lsn = self._txn_commit_lsn
        if event.kind == "D":
            assert event.old is not None
            old_key = spec.key_of(event.old)
            self._emitted.pop(_cache_key(spec.name, old_key), None)
            out.append(Change("delete", spec.name, old_key, lsn=lsn))
            return
        row = event.new or {}
        # C-level pre-check; the exact per-column test only when some value is unchanged TOAST
        if UNCHANGED_TOAST in row.values() and any(row.get(c) is UNCHANGED_TOAST for c in spec.needed_columns):
            row = self._fill_unchanged(spec, event.relation, row)
        key = spec.key_of(row)
        if event.kind == "U" and event.old is not None:
            old_key = spec.key_of(event.old)
            if old_key != key and all(v is not None for v in old_key):
                self._emitted.pop(_cache_key(spec.name, old_key), None)
                out.append(Change("delete", spec.name, old_key, lsn=lsn))  # primary key changed
        text, payload = spec.render(row)
        unchanged = self._remember(_cache_key(spec.name, key), text) and event.kind == "U"
        out.append(Change("upsert", spec.name, key, text, payload, lsn, text_unchanged=unchanged))

    def _remember(self, pid: Any, text: str) -> bool:
        """Record the text emitted for ``pid``; True if it equals the previous one."""
        digest = text_hash(text)
        same = self._emitted.get(pid) == digest
        self._emitted[pid] = digest
        self._emitted.move_to_end(pid)
        if len(self._emitted) > TEXT_HASH_CACHE_ENTRIES:
            self._emitted.popitem(last=False)
        return same

    def _fill_unchanged(self, spec: TableSpec, rel: Relation, row: dict[str, Any]) -> dict[str, Any]:
        """Fetch TOASTed values the server did not resend (they did not change).

        The current row may be newer than this change; a newer version will be
        streamed after it anyway, so the final state still follows commit order.
        """
        assert self._side is not None
        missing = [c for c in spec.needed_columns if row.get(c) is UNCHANGED_TOAST]
        schema, table = spec.name.split(".")
        where = " AND ".join(f'"{c}" = %s' for c in spec.key_columns)
        cols = ", ".join(f'"{c}"::text' for c in missing)
        found = self._side.execute(
            f'SELECT {cols} FROM "{schema}"."{table}" WHERE {where}', spec.key_of(row)
        ).fetchone()
        filled = dict(row)
        for i, col in enumerate(missing):
            filled[col] = spec.convert(col, found[i]) if found else None
        return filled

    def position(self) -> dict[str, int]:
        """LSNs: received from the server, safe to confirm, and confirmed."""
        return {"received": self._received_lsn, "safe": self._safe_lsn, "acked": self._acked_lsn}

    def ack(self, lsn: int) -> None:
        """Confirm to the server that every change up to ``lsn`` is durably written.

        Only the coordinator calls this, and only after the writer returned for
        every batch up to the one that carried ``lsn``.
        """
        if lsn <= self._acked_lsn:
            return
        self._acked_lsn = lsn
        if self._streaming:
            self._send_status()
            log.debug("slot %s confirmed up to %s", self.slot, format_lsn(lsn))

    def _maybe_send_status(self) -> None:
        if time.monotonic() - self._last_status >= STATUS_INTERVAL_S:
            self._send_status()

    def _send_status(self, reply: bool = False) -> None:
        if self._repl is None or not self._streaming:
            return
        pgconn = self._repl.pgconn
        # written = flushed = applied = acked: reporting less than the server
        # has sent also prompts it to send keepalives with its idle position.
        acked = self._acked_lsn
        pgconn.put_copy_data(standby_status(acked, acked, acked, _now_pg_us(), reply))
        pgconn.flush()
        self._last_status = time.monotonic()

    def close(self) -> None:
        """Send a last status update and close every connection."""
        try:
            self._send_status()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        for conn in (self._snapshot_conn, self._side, self._repl):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
        self._repl = self._side = self._snapshot_conn = None
        self._streaming = False
