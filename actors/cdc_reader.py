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

Threads (the Ray actor runs ``ack`` beside ``read_batch``): every use of the
replication connection and of the acknowledged position happens under one
lock.  ``read_batch`` releases it whenever it waits on the socket, so an
``ack`` is sent to the server the moment the write it confirms finished, not
after the read's timeout.  While the stream is open a keepalive thread sends
a status update (the acknowledged position, never more) every few seconds
when nobody else did: when the coordinator's window is full nothing reads, and
without it the server would end the connection after ``wal_sender_timeout``.
That thread never reads the socket: the backlog stays in PostgreSQL's WAL.
"""

from __future__ import annotations

import collections
import gc
import hashlib
import logging
import os
import re
import select
import struct
import threading
import time
from typing import Any, Iterator

import psycopg
from psycopg import pq

from actors.backfill import ChunkDone, ChunkedBackfill, new_plan, plan_fraction, plan_ranges, request_backfill
from actors.changes import Change, ChangeBatch, format_lsn, parse_lsn, point_id
from actors.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Keepalive,
    LogicalMessage,
    PgOutputDecoder,
    ProtocolError,
    Relation,
    RowChange,
    Truncate,
    parse_copy_message,
    standby_status,
)
from actors.schema_watch import SchemaChanged, SchemaWatch
from actors.source_schema import (
    SourceBusy,
    SourceError,
    SourceFatal,
    TableSpec,
    connect,
    drop_slot,
    ensure_publication,
    learn_types,
    slot_holder,
)
from actors.source_config import SourceConfig
from actors.watermark import parse_signal, parse_watermark

log = logging.getLogger(__name__)

#: seconds between unsolicited standby status updates (the server's default
#: wal_sender_timeout is 60 s; stay well inside it); at most a quarter of the
#: connection's own wal_sender_timeout
STATUS_INTERVAL_S = 5.0
MIN_STATUS_INTERVAL_S = 0.05
#: how long a slot streamed by another process, or a server with every WAL sender
#: taken, is waited for before the run ends.  The other process may be our own
#: previous one (or attempt): its walsender exits a moment after its connection is
#: gone (seen here: up to a few seconds after a SIGKILL), which must not end a restart.
BUSY_WAIT_S = 30.0
BUSY_POLL_S = 0.5
#: longest wait for the rest of a transaction already begun (normally < 1 ms away)
COMMIT_WAIT_S = 0.05
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
#: keys whose last emitted text hash is remembered (lets payload-only updates skip the model);
#: about 300 bytes each
TEXT_HASH_CACHE_ENTRIES = 500_000
#: a backfill's total (progress) is counted in the snapshot below this many rows by the
#: statistics; above, the statistics' estimate is the total (a count would read it all once more)
EXACT_COUNT_BELOW = 1_000_000
#: rendered texts at least this long (their columns are likely stored out of line, TOASTed)
#: are remembered with their payload (its repr at most PAYLOAD_MEMO_MAX characters), so an
#: update that changes neither needs no fetch and no change at all
PAYLOAD_MEMO_MIN_TEXT = 1024
PAYLOAD_MEMO_MAX = 512
#: keys per query fetching unchanged TOAST values
TOAST_FETCH_CHUNK = 5000
#: XLogData ('w') envelope: tag, WAL start, WAL end, send time; the pgoutput message follows
_XLOG_HEADER = 25
_XLOG_START = struct.Struct(">Q").unpack_from
_TAG_W = ord("w")
_TAG_INSERT, _TAG_UPDATE = b"IU"
_blake2b = hashlib.blake2b


def _digest(text: str) -> bytes:
    """128-bit BLAKE2b digest of a text: the emitted-text cache's fingerprint when the
    process's string hash is not secret (see :data:`_fingerprint`)."""
    return _blake2b(text.encode("utf-8"), digest_size=16).digest()


#: What the emitted-text cache keeps of a text, to tell an update that leaves it unchanged.
#: Only compared with other fingerprints of this process, never stored (the sinks persist
#: ``changes.text_hash``, which is unchanged).  Python's own ``hash`` of the str: SipHash,
#: 64 bits, keyed with a random secret per process, about 30 times cheaper than a BLAKE2b
#: digest (whose set-up cost was ~7 % of the reader's time per change).  A wrong
#: "unchanged" (the vector kept for a new text) needs two versions of one row's text with
#: equal hashes: 2^-64 per update.  With PYTHONHASHSEED set the key is known, and whoever
#: writes the source could craft such a pair: the digest is used then.
_fingerprint: Any = hash if os.environ.get("PYTHONHASHSEED", "random") == "random" else _digest


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


def _unknown_key(spec: TableSpec, event: RowChange | str) -> SchemaChanged:
    """An update or delete whose row cannot be identified: never a change with a made-up key.

    Permanent: the change is in the WAL as it is, so replaying it cannot help;
    the pipeline stops before it (nothing after it is confirmed).
    """
    kind = event if isinstance(event, str) else event.kind
    what = {"U": "an update", "D": "a delete"}.get(kind, "an insert")
    return SchemaChanged(
        f"{what} of {spec.name} arrived without the value of its key ({', '.join(spec.key_columns)}): "
        "stored out of line (TOAST) and not resent, with no old key in the change; "
        f"ALTER TABLE {spec.quoted_table} REPLICA IDENTITY FULL for the changes to come, then re-index from a "
        "fresh snapshot past this one (embedcluster drop --config FILE --yes, then run again)"
    )


def _decoder_types(specs: dict[str, TableSpec]) -> dict[int, tuple[int, int]]:
    """The catalog's type knowledge of every table, for the decoder's per-column converters."""
    types: dict[int, tuple[int, int]] = {}
    for spec in specs.values():
        types.update(spec.types or {})
    return types


def _now_pg_us() -> int:
    return int(time.time() * 1_000_000) - _PG_EPOCH_US


def _invalidated(slot: str) -> SourceFatal:
    return SourceFatal(
        f"replication slot {slot} was invalidated by PostgreSQL: it fell more than max_slot_wal_keep_size behind "
        "and the WAL it needed is gone; index the tables again from a fresh snapshot (embedcluster drop --config "
        "FILE --yes, then embedcluster run), and keep the pipeline running or raise max_slot_wal_keep_size"
    )


def _no_read_privilege(exc: psycopg.Error) -> SourceFatal:
    """Reading a configured table was refused: no retry grants SELECT."""
    detail = (exc.diag.message_primary or str(exc)).strip()
    return SourceFatal(f"reading the source failed: {detail}; GRANT SELECT ON the configured tables TO the user "
                       "of source.dsn")


def _dropped(slot: str) -> SourceFatal:
    return SourceFatal(
        f"replication slot {slot} was dropped while the pipeline used it (not by embedcluster): the changes since "
        "its last confirmed position are lost to it; run embedcluster run again to index the tables from a fresh "
        "snapshot, and leave the slot to embedcluster (embedcluster drop removes it)"
    )


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
        # the chunked backfill running beside the stream (backfill_mode = "chunks"), and the
        # chunk rows (and ChunkDone marks) its high watermarks released, handed out first
        self._chunks: ChunkedBackfill | None = None
        self._pending: collections.deque[Change | ChunkDone] = collections.deque()
        # what the batch being read hands out of the chunked backfill
        self._batch_plan: dict[str, Any] | None = None
        self._batch_chunk_rows = 0
        self._batch_complete = False
        self._batch_begin: dict[str, Any] | None = None
        self._streaming = False
        self._decoder = PgOutputDecoder()
        self._seq = 0
        self._in_txn = False
        self._txn_commit_lsn = 0
        #: pgoutput commit timestamp of the last transaction completed since the last batch
        self._commit_ts: int | None = None
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
        self._emitted: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        # upserts of this batch waiting for unchanged TOAST values (see
        # _resolve_deferred), and the cache keys they (and later changes of those
        # keys, which wait too, in order) belong to
        self._deferred: list[tuple[Any, ...]] = []
        self._deferred_keys: set[Any] = set()
        self._fetch_sqls: dict[str, str] = {}  # table -> SELECT of _fetch_rows
        # schema changes that stop the pipeline (see actors/schema_watch.py); a
        # change found mid-batch ends that batch, and the next read raises it
        self._watch = SchemaWatch(specs)
        self._halt: SchemaChanged | None = None
        # Guards the replication connection (libpq connections are not thread-safe)
        # and _acked_lsn / _last_status / _streaming: read_batch, ack (another thread
        # of the actor) and the keepalive thread all take it.
        self._lock = threading.Lock()
        self._keepalive: tuple[threading.Thread, threading.Event] | None = None
        self._in_read = False  # read_batch runs (it may use the side connection): under the lock
        self._gc_paused = False  # _stream_into paused the cyclic garbage collector (see there)
        self._status_interval = STATUS_INTERVAL_S
        #: see BUSY_WAIT_S (tests shorten it)
        self.busy_wait_s = BUSY_WAIT_S
        # this source created or streamed the slot: if it is missing later, someone
        # else dropped it (embedcluster drops a slot only to create it again at once)
        self._slot_known = False

    # -- set-up ----------------------------------------------------------------

    def slot_status(self) -> dict[str, Any]:
        """What a resume is checked against: does the slot exist, its confirmed
        position, and the identity of the server and database it belongs to
        (``IDENTIFY_SYSTEM``: a store that followed another server, a restored
        one or a promoted copy with another history, must not resume here)."""
        dsn, masked = self.source.dsn_value, self.source.dsn_masked
        with connect(dsn, masked, autocommit=True) as conn:
            row = conn.execute(
                "SELECT plugin, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = %s",
                (self.slot,),
            ).fetchone()
        if row is None and self._slot_known:
            # After a failure the coordinator asks here first: resuming would create
            # a new slot and silently skip what the old one had not confirmed.
            raise _dropped(self.slot)
        if row is not None and row[0] != "pgoutput":
            raise SourceFatal(
                f"replication slot {self.slot} uses plugin {row[0]}, not pgoutput; "
                f"drop it (embedcluster drop --yes) or choose another source.slot"
            )
        if row is not None and row[2] == "lost":
            raise _invalidated(self.slot)
        with self._wait_until_free(lambda: connect(dsn, masked, autocommit=True, replication="database")) as repl:
            res = repl.pgconn.exec_(b"IDENTIFY_SYSTEM")
            if res.status != pq.ExecStatus.TUPLES_OK:
                message = (res.error_message or b"").decode(errors="replace").strip()
                raise SourceError(f"IDENTIFY_SYSTEM failed for slot {self.slot}: {message}")
            system_id, database = res.get_value(0, 0).decode(), (res.get_value(0, 3) or b"").decode()
        return {
            "exists": row is not None,
            "confirmed_lsn": parse_lsn(row[1]) if row and row[1] else None,
            "identity": {"system_id": system_id, "database": database, "slot": self.slot},
        }

    def start(self, backfill: bool, plan: dict[str, Any] | None = None,
              tables: list[str] | None = None) -> dict[str, Any]:
        """Prepare publication and slot; with ``backfill`` index the tables' rows afresh.

        ``backfill=True`` drops any existing slot and creates a new one.  With
        ``[source] backfill_mode = "snapshot"`` the slot's exported snapshot is
        read before streaming starts; with ``"chunks"`` (the default) the rows
        are read in key chunks while the stream runs (``actors/backfill.py``).
        ``False`` resumes streaming from the existing slot's confirmed position;
        with ``plan`` (the chunked backfill's document the writer stored) the
        backfill goes on from its first chunk not done (an empty one: a new
        plan over ``tables``, all of them when None).
        """
        dsn, masked = self.source.dsn_value, self.source.dsn_masked
        if (self._repl is not None or self._side is not None or self._snapshot_conn is not None
                or self._chunks is not None):
            self.close()  # a start without the close of a failed attempt: nothing of it is reused
        self._emitted.clear()
        self._pending.clear()
        self._halt = None
        with connect(dsn, masked, autocommit=True) as conn:
            ensure_publication(conn, self.source.publication, list(self.specs))
            learn_types(conn, self.specs.values())  # element types of arrays of user types, domains
        self._side = connect(dsn, masked, autocommit=True)
        self._repl = self._wait_until_free(lambda: connect(dsn, masked, autocommit=True, replication="database"))
        # before CREATE_REPLICATION_SLOT: its exported snapshot lasts only until the next command
        self._status_interval = self._status_interval_of_connection()
        info: dict[str, Any] = {"slot": self.slot, "backfill": backfill}
        if not backfill:
            if plan is not None:
                return self._start_chunks(info, plan or None, tables)
            self._start_streaming()
            return info
        self._wait_until_free(self._drop_slot_if_exists)
        if self.source.backfill_mode == "chunks":
            # No snapshot: the chunks read later agree with the stream by their watermarks.
            res = self._simple(f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput NOEXPORT_SNAPSHOT')
            self._slot_known = True
            consistent = parse_lsn(res.get_value(0, 1).decode())
            info["consistent_lsn"] = format_lsn(consistent)
            log.info("slot %s created at %s; backfilling %s in key chunks (%d reader(s))", self.slot,
                     format_lsn(consistent), ", ".join(self.specs), self.source.backfill_readers)
            return self._start_chunks(info, None)
        res = self._simple(f'CREATE_REPLICATION_SLOT "{self.slot}" LOGICAL pgoutput EXPORT_SNAPSHOT')
        self._slot_known = True
        consistent = parse_lsn(res.get_value(0, 1).decode())
        snapshot = res.get_value(0, 2).decode()
        # The exported snapshot lives only until the replication connection runs
        # its next command, so import it right now, before START_REPLICATION.
        self._snapshot_conn = connect(dsn, masked)
        self._snapshot_conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        self._snapshot_conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
        self._safe_lsn = consistent or 0
        info["backfill_total"] = self._backfill_total(self._snapshot_conn)
        self._backfill = self._backfill_chunks()
        info["consistent_lsn"] = format_lsn(consistent)
        log.info("slot %s created at %s; backfilling %s", self.slot, format_lsn(consistent), ", ".join(self.specs))
        return info

    def _start_chunks(self, info: dict[str, Any], plan: dict[str, Any] | None,
                      tables: list[str] | None = None) -> dict[str, Any]:
        """Stream the slot, and read tables in chunks beside it (a new ``plan`` over ``tables``
        when None)."""
        assert self._side is not None
        try:
            if plan is None:
                plan = new_plan(self._ranges(tables or list(self.specs)))
            info["backfill_total"] = self._backfill_total(self._side, list(plan["tables"]))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise _no_read_privilege(exc) from None
        info["plan"] = plan
        self._chunks = self._new_chunks(plan)
        # streaming first: every watermark a reader writes is then in this stream
        self._start_streaming()
        # (a plan with every range done, resumed right before its completion was stored,
        # completes with the first batch: see _read_stream)
        self._chunks.start()
        if plan.get("rows"):
            log.info("slot %s: backfill resumes after %d rows (%.0f %% of the key ranges done)", self.slot,
                     plan["rows"], 100 * plan_fraction(plan))
        return info

    def _ranges(self, tables: list[str]) -> dict[str, list[tuple[str | None, str | None]]]:
        assert self._side is not None
        return {t: plan_ranges(self._side, self.specs[t], self.source.backfill_readers) for t in tables}

    def _new_chunks(self, plan: dict[str, Any]) -> ChunkedBackfill:
        dsn, masked = self.source.dsn_value, self.source.dsn_masked
        return ChunkedBackfill(self.specs, plan, self.source.backfill_readers, self.source.backfill_chunk,
                               lambda: connect(dsn, masked, autocommit=True), self.slot)

    def _signalled(self, tables: list[str]) -> None:
        """A backfill request reached the stream (lock held): its chunks start from here."""
        unknown = [t for t in tables if t not in self.specs]
        wanted = [t for t in (tables or list(self.specs)) if t in self.specs]
        if unknown:
            log.warning("slot %s: a backfill request names tables this pipeline does not follow: %s (ignored)",
                        self.slot, ", ".join(unknown))
        if self._chunks is not None:
            wanted = [t for t in wanted if t not in self._chunks.tables]
        if not wanted:
            return
        try:
            ranges = self._ranges(wanted)
            total = self._backfill_total(self._side, wanted)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise _no_read_privilege(exc) from None
        # What this reader emitted before is not what the new generation's points hold:
        # no shortcut may rest on it (a skipped update would keep a point of the old one).
        self._emitted.clear()
        if self._chunks is None:
            self._chunks = self._new_chunks(new_plan(ranges))
            self._chunks.start()
        else:
            self._chunks.add_tables(ranges)
        begun = self._batch_begin or {"tables": [], "total": {"rows": 0, "estimate": False}}
        self._batch_begin = {
            "tables": sorted(set(begun["tables"]) | set(wanted)),
            "total": {"rows": begun["total"]["rows"] + total["rows"],
                      "estimate": begun["total"]["estimate"] or total["estimate"]},
        }
        log.info("slot %s: backfilling %s again, in key chunks beside the stream (requested in the WAL)",
                 self.slot, ", ".join(wanted))

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
            sqlstate = (res.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()
            raise self._command_error(sqlstate, message.removeprefix("ERROR:").strip())
        return res

    def _command_error(self, sqlstate: str, message: str) -> SourceError:
        """A failed replication command as an error that says whether retrying can help."""
        slot = self.slot
        if sqlstate == "55006":  # object_in_use: another walsender streams the slot
            found = re.search(r"PID (\d+)", message)
            holder = ""
            if found:
                with connect(self.source.dsn_value, self.source.dsn_masked, autocommit=True) as conn:
                    holder = slot_holder(conn, int(found.group(1)))
            who = f"process {found.group(1)}{holder}" if found else "another process"
            fix = f"SELECT pg_terminate_backend({found.group(1)}) ends it" if found else "stop it"
            return SourceBusy(
                f"replication slot {slot} is in use by {who}: one slot streams to one reader; stop that client "
                f"({fix}) or set another source.slot"
            )
        if sqlstate == "53400":  # configuration_limit_exceeded: every replication slot is taken
            return SourceFatal(
                f"cannot create replication slot {slot}: all max_replication_slots slots of the server are in use; "
                "drop one no longer used (SELECT slot_name, active FROM pg_replication_slots; "
                "SELECT pg_drop_replication_slot('NAME')) or raise max_replication_slots (needs a restart of "
                "PostgreSQL)"
            )
        if sqlstate == "42704" and "replication slot" in message:  # undefined_object
            return _dropped(slot)
        if "can no longer get changes" in message or "has been invalidated" in message:
            return _invalidated(slot)
        if sqlstate == "42501":  # insufficient_privilege
            return SourceFatal(f"replication on slot {slot} refused: {message}; give the user of source.dsn the "
                               "REPLICATION attribute (ALTER ROLE ... WITH REPLICATION)")
        return SourceError(f"replication command failed on slot {slot}: {message}")

    def _wait_until_free(self, attempt: Any) -> Any:
        """``attempt()``, retried while it finds the slot or the WAL senders busy (see
        BUSY_WAIT_S); still busy after ``busy_wait_s``: :class:`SourceFatal`."""
        deadline = time.monotonic() + self.busy_wait_s
        warned = False
        while True:
            try:
                return attempt()
            except SourceBusy as exc:
                if time.monotonic() >= deadline:
                    raise SourceFatal(f"{exc} (still so after {self.busy_wait_s:.0f} s)") from None
                if not warned:
                    log.warning("%s; waiting up to %.0f s for it to be free", exc, self.busy_wait_s)
                    warned = True
                time.sleep(BUSY_POLL_S)

    def _status_interval_of_connection(self) -> float:
        """Seconds between unsolicited status updates: well inside this connection's
        wal_sender_timeout (it can be set per connection, in the DSN's options)."""
        assert self._repl is not None
        res = self._repl.pgconn.exec_(b"SELECT setting FROM pg_settings WHERE name = 'wal_sender_timeout'")
        try:
            timeout_ms = int(res.get_value(0, 0)) if res.status == pq.ExecStatus.TUPLES_OK and res.ntuples else 0
        except (TypeError, ValueError):
            timeout_ms = 0
        if timeout_ms <= 0:  # 0 disables the timeout
            return STATUS_INTERVAL_S
        return max(MIN_STATUS_INTERVAL_S, min(STATUS_INTERVAL_S, timeout_ms / 1000 / 4))

    def _start_streaming(self) -> None:
        options = f"proto_version '1', publication_names '{self.source.publication}'"
        assert self._repl is not None
        if self._repl.info.server_version >= 140000:
            # logical messages: the chunked backfill's watermarks and backfill requests
            options += ", messages 'true'"
        elif self._chunks is not None:
            raise SourceFatal("the chunked backfill needs PostgreSQL 14 or later (logical decoding messages); "
                              "set [source] backfill_mode = \"snapshot\"")
        # not under the lock: nothing else uses the connection until _streaming is set
        self._wait_until_free(lambda: self._simple(f'START_REPLICATION SLOT "{self.slot}" LOGICAL 0/0 ({options})'))
        self._slot_known = True
        self._decoder = PgOutputDecoder(_decoder_types(self.specs))
        self._in_txn = False
        # The server resends from the slot's confirmed position, which is behind
        # everything handed out before this (re)start.  A safe position kept from
        # before would ride on the first new batch and be confirmed once it is
        # written, skipping changes not yet re-read; a second failure then
        # restarts past them.  Only what this stream hands out counts.
        self._safe_lsn = 0
        with self._lock:
            self._streaming = True
            self._last_status = time.monotonic()
        self._start_keepalive()
        log.info("streaming slot %s from its confirmed position", self.slot)

    # -- keepalive ------------------------------------------------------------------

    def _start_keepalive(self) -> None:
        self._stop_keepalive()
        stop = threading.Event()
        thread = threading.Thread(target=self._keepalive_loop, args=(stop,), name=f"keepalive-{self.slot}", daemon=True)
        self._keepalive = (thread, stop)
        thread.start()

    def _stop_keepalive(self) -> None:
        """Stop the keepalive thread and wait for it (never while holding the lock: it may wait for it)."""
        if self._keepalive is None:
            return
        thread, stop = self._keepalive
        self._keepalive = None
        stop.set()
        if thread is not threading.current_thread():
            thread.join(10)

    def _keepalive_loop(self, stop: threading.Event) -> None:
        """A status update whenever none was sent for ``_status_interval`` s.

        This is what answers the server while nobody calls read_batch (the window
        is full: the writer is slow or stalled): any status update resets the
        walsender's wal_sender_timeout, so a keepalive that asks for a reply needs
        no answer of its own (it waits in the socket, behind the backlog, unread).
        It reports the acknowledged position, as every update does: never more.
        The socket is not read here: reading would take the backlog into memory,
        or lose it.
        """
        while not stop.wait(self._status_interval / 2):
            with self._lock:
                if stop.is_set() or not self._streaming:
                    return
                if not self._in_read and self._server_going_away():
                    return
                if time.monotonic() - self._last_status < self._status_interval:
                    continue
                try:
                    self._send_status()
                except Exception as exc:  # noqa: BLE001 - the next read reports a broken stream
                    log.debug("slot %s: status update failed: %s", self.slot, exc)

    def _server_going_away(self) -> bool:
        """While nothing reads: did the server end our idle side connection (a fast shutdown
        terminates ordinary backends first)?  Then end the stream too (lock held).

        A logical walsender that is shutting down waits until the client has
        confirmed everything it was sent, or until wal_sender_timeout of silence;
        with the status updates above, a stalled pipeline would keep a fast
        shutdown of PostgreSQL waiting for as long as the sink is away.  Closing
        the stream lets the shutdown finish at once; nothing is lost (the
        acknowledged position is the server's), and the next read fails over to
        the usual replay from the slot.  Anything else arriving on the idle
        connection (a parameter change after a reload) is read and ignored.
        """
        side = self._side
        if side is None or self._repl is None:
            return False
        pgconn = side.pgconn
        try:
            if not select.select([pgconn.socket], [], [], 0)[0]:
                return False
            pgconn.consume_input()
            ended = pgconn.status == pq.ConnStatus.BAD
        except Exception:  # noqa: BLE001 - a socket gone or a read that failed: ended as well
            ended = True
        if not ended:
            return False
        log.warning("slot %s: PostgreSQL ended the reader's connections while the pipeline was not reading "
                    "(shutting down?): ending the stream too, so the server need not wait for the pipeline; "
                    "it resumes from the slot", self.slot)
        self._streaming = False
        try:
            self._repl.close()
        except Exception:  # noqa: BLE001
            pass
        return True

    # -- backfill -----------------------------------------------------------------

    def _backfill_total(self, conn: psycopg.Connection, tables: list[str] | None = None) -> dict[str, Any]:
        """Rows to backfill, for progress: ``{"rows": N, "estimate": bool}``.

        Counted exactly (in the snapshot itself, when there is one) when the planner's
        statistics (``reltuples`` of every leaf partition) say the tables are small; above
        :data:`EXACT_COUNT_BELOW` rows a count would scan them once more before the
        backfill reads them, so the statistics are the total (an estimate, as ``status``
        says).
        """
        specs = [self.specs[t] for t in tables] if tables is not None else list(self.specs.values())
        estimate = 0.0
        for spec in specs:
            # reltuples is -1 for a table never vacuumed or analysed: counted as 0, so it is counted exactly
            row = conn.execute(
                "SELECT sum(greatest(c.reltuples, 0)) FROM pg_partition_tree(%s::regclass) p "
                "JOIN pg_class c ON c.oid = p.relid WHERE p.isleaf",
                (spec.quoted_table,),
            ).fetchone()
            estimate += float(row[0] or 0) if row else 0.0
        if estimate >= EXACT_COUNT_BELOW:
            return {"rows": int(estimate), "estimate": True}
        total = sum(
            conn.execute(f"SELECT count(*) FROM {spec.quoted_table}").fetchone()[0]
            for spec in specs
        )
        return {"rows": total, "estimate": False}

    def _backfill_chunks(self) -> Iterator[list[Change]]:
        assert self._snapshot_conn is not None
        chunk = self.source.backfill_chunk
        for spec in self.specs.values():
            keys = spec.quoted_keys
            # key columns appear twice: native for the keyset, text for the values
            base = f"SELECT {keys}, {spec.text_select_list()} FROM {spec.quoted_table}"
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
                    row = spec.row_from_texts(raw[nkeys:])
                    text, payload = spec.render(row)
                    key = spec.key_of(row)
                    self._remember(_cache_key(spec.name, key), text, payload)
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
        if self._halt is not None:
            raise self._halt
        self._seq += 1
        with self._lock:
            self._in_read = True
        try:
            if self._backfill is not None:
                return self._next_backfill_batch(max_changes)
            return self._read_stream(max_changes, timeout)
        finally:
            with self._lock:
                self._in_read = False

    def _next_backfill_batch(self, max_changes: int) -> ChangeBatch:
        assert self._backfill is not None
        try:
            changes = next(self._backfill, None)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise _no_read_privilege(exc) from None
        if changes is not None:
            return ChangeBatch(self._seq, changes, ack_lsn=None, phase="backfill")
        # Snapshot exhausted: end its transaction, then stream from the slot.
        # The marker batch tells the writer the backfill is complete.
        assert self._snapshot_conn is not None
        self._snapshot_conn.rollback()
        self._snapshot_conn.close()
        self._snapshot_conn = None
        self._backfill = None
        # Every change up to the snapshot's position is in the snapshot: once
        # the marker is written that position may be confirmed (and recorded
        # by the writer as what the store reflects).
        snapshot_lsn = self._safe_lsn or None
        self._start_streaming()
        return ChangeBatch(self._seq, [], ack_lsn=snapshot_lsn, phase="backfill", snapshot_complete=True)

    def _read_stream(self, max_changes: int, timeout: float) -> ChangeBatch:
        deadline = time.monotonic() + timeout
        if self._watch.due():
            assert self._side is not None
            try:
                self._watch.check_catalog(self._side)  # a rename or drop sends nothing (yet)
            except SchemaChanged as exc:
                self._halt = exc
                raise
        changes: list[Change] = []
        self._deferred, self._deferred_keys = [], set()  # what a failed read left is gone with it
        self._batch_plan, self._batch_chunk_rows, self._batch_complete = None, 0, False
        self._batch_begin = None
        if self._chunks is not None:
            self._chunks.check()
        with self._lock:  # released while waiting on the socket (_wait_readable)
            self._stream_into(changes, max_changes, deadline)
        if self._halt is not None and not changes:
            raise self._halt
        # (without the lock: only the side connection, and it may take a while)
        self._resolve_deferred(changes)
        if self._chunks is not None and self._chunks.finished and not self._pending:
            # The last chunk is in this batch (or an earlier one): once this batch is
            # written, every row the backfill read is, and the writer completes it.
            self._chunks.close()
            self._chunks = None
            self._batch_complete = True
            log.info("slot %s: backfill read every chunk", self.slot)
        # the last commit completed while this batch was read (pgoutput: microseconds since 2000-01-01)
        commit_ts, self._commit_ts = self._commit_ts, None
        commit_time = (commit_ts + _PG_EPOCH_US) / 1e6 if commit_ts is not None else None
        return ChangeBatch(self._seq, changes, ack_lsn=self._safe_lsn or None, phase="stream", commit_time=commit_time,
                           snapshot_complete=self._batch_complete, backfill=self._batch_plan,
                           backfill_rows=self._batch_chunk_rows, backfill_begin=self._batch_begin)

    def _hand_out_chunks(self, changes: list[Change], max_changes: int) -> None:
        """Move released chunk rows into the batch (up to ``max_changes``), in order, and the
        plan past each chunk whose last row is in it (lock held)."""
        pending = self._pending
        while pending and (len(changes) < max_changes or type(pending[0]) is ChunkDone):
            item = pending.popleft()
            if type(item) is ChunkDone:
                assert self._chunks is not None
                self._batch_plan = self._chunks.handed_out(item)
                self._batch_chunk_rows += item.rows
                continue
            ck = _cache_key(item.table, item.key)
            if item.op == "delete" or (self._deferred_keys and ck in self._deferred_keys):
                # gone, or an earlier change of the key is still being rendered: no shortcut
                self._forget(ck)
            else:
                self._remember(ck, item.text or "", item.payload)
            changes.append(item)

    def _wait_readable(self, sock: int, seconds: float) -> bool:
        """Whether the socket has data within ``seconds``; waits without the lock, so an
        ack or a status update goes out meanwhile.  Called with the lock held."""
        if seconds <= 0:
            return bool(select.select([sock], [], [], 0)[0])
        self._lock.release()
        resume_gc = self._gc_paused  # the collector is paused only while decoding, not while waiting
        if resume_gc:
            gc.enable()
        try:
            return bool(select.select([sock], [], [], seconds)[0])
        finally:
            if resume_gc:
                gc.disable()
            self._lock.acquire()

    def _stream_into(self, changes: list[Change], max_changes: int, deadline: float) -> None:
        """Decode the stream into ``changes`` until full, idle past ``deadline``, or halted (lock held)."""
        if self._repl is None or not self._streaming:
            raise SourceError(f"replication stream of slot {self.slot} is not open (the server ended it, "
                              "or it was closed)")
        # The cyclic garbage collector is paused while this decodes what is received.
        # Every change leaves a few container objects (Change, key, payload) alive until
        # the batch is handed out, and those survivors kept triggering full collections,
        # each one traversing every object of the process: about a fifth of the reader's
        # time.  Nothing decoded here forms a reference cycle, and reference counting
        # frees all of it as usual; whatever cycles other code makes meanwhile wait for
        # the collection that runs as soon as it is enabled again, at the latest when
        # this batch returns (the collector also runs while _wait_readable blocks).
        self._gc_paused = gc.isenabled()
        if self._gc_paused:
            gc.disable()
        try:
            self._stream_loop(changes, max_changes, deadline)
        finally:
            if self._gc_paused:
                self._gc_paused = False
                gc.enable()

    def _stream_loop(self, changes: list[Change], max_changes: int, deadline: float) -> None:
        """The loop of :meth:`_stream_into` (lock held, collector paused)."""
        assert self._repl is not None
        pgconn = self._repl.pgconn
        sock = pgconn.socket
        get_copy_data, copy_message = pgconn.get_copy_data, self._copy_message
        while len(changes) < max_changes and self._halt is None:
            if self._pending:
                # chunk rows released at a high watermark go first: the stream after it waits
                self._hand_out_chunks(changes, max_changes)
                continue
            nbytes, data = get_copy_data(1)
            if nbytes == 0:
                self._maybe_send_status()
                if changes:
                    # Under a backlog more data is already in the kernel buffer:
                    # take it (no waiting) so batches grow; otherwise hand out
                    # what we have rather than wait.
                    if self._wait_readable(sock, 0):
                        pgconn.consume_input()
                        continue
                    # ...but not between a transaction's last row and its
                    # COMMIT.  pgoutput sends a transaction whole once it has
                    # committed, so the rest is already on its way (in
                    # separate messages); a batch cut before the COMMIT could
                    # not confirm that commit when written, and the slot would
                    # lag the written rows until the next idle read.
                    if self._in_txn and self._wait_readable(sock, COMMIT_WAIT_S):
                        pgconn.consume_input()
                        continue
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self._wait_readable(sock, min(remaining, self._status_interval)):
                    pgconn.consume_input()
                continue
            if nbytes < 0:
                message = (pgconn.error_message or b"").decode(errors="replace").strip()
                raise SourceError(f"replication stream of slot {self.slot} ended: {message or 'server closed it'}")
            copy_message(data, changes)

    def _copy_message(self, data: bytes | memoryview, out: list[Change]) -> None:
        """Apply one CopyData message of the replication stream: XLogData or keepalive (lock held)."""
        buf = bytes(data)
        if buf[0] == _TAG_W and len(buf) > _XLOG_HEADER:
            # XLogData, by far the most frequent: decoded in place, no envelope object
            start = _XLOG_START(buf, 1)[0]
            if start > self._received_lsn:
                self._received_lsn = start
            self._decode_at(buf, _XLOG_HEADER, out)
            return
        msg = parse_copy_message(buf)  # a keepalive, or a malformed message (it raises)
        if isinstance(msg, Keepalive):
            self._received_lsn = max(self._received_lsn, msg.wal_end)
            if not self._in_txn:
                # Between transactions the server has nothing more for us up
                # to wal_end: once earlier batches are written that position
                # is safe to confirm (keeps lag at zero on an idle source).
                self._safe_lsn = max(self._safe_lsn, msg.wal_end)
            if msg.reply_requested:
                self._send_status(reply=False)
            return
        self._received_lsn = max(self._received_lsn, msg.data_start)
        self._decode(msg.payload, out)

    def _decode(self, payload: bytes, out: list[Change]) -> None:
        """Apply one pgoutput message (an XLogData's payload) to the stream state and ``out``."""
        if not payload:
            raise ProtocolError("empty pgoutput message")
        self._decode_at(payload if type(payload) is bytes else bytes(payload), 0, out)

    def _decode_at(self, buf: bytes, pos: int, out: list[Change]) -> None:
        """Apply the pgoutput message starting at ``buf[pos]`` (inside its XLogData envelope).

        The per-change hot path: an insert or update whose new tuple is complete
        (no unchanged TOAST value), without an old tuple, while no change of this
        batch waits for TOAST values, goes from the bytes straight to a Change
        (:meth:`_upsert`); everything else takes the general path
        (:meth:`_event`, :meth:`_row_change`), with the same result.
        """
        tag = buf[pos]
        if tag == _TAG_INSERT or tag == _TAG_UPDATE:
            try:
                kind, rel, new, old, toasted = self._decoder.row_at(buf, pos)
            except (struct.error, IndexError):
                raise ProtocolError("message truncated") from None
            if toasted or old is not None or self._deferred_keys:
                self._row_change(RowChange(kind, rel, new, old), out)
            else:
                self._upsert(kind, rel, new, out)  # type: ignore[arg-type]
            return
        self._event(self._decoder.decode(buf[pos:] if pos else buf), out)

    def _upsert(self, kind: str, rel: Relation, row: dict[str, Any], out: list[Change]) -> None:
        """:meth:`_row_change` for its common case, in fewer steps: an insert or update
        ``kind`` of ``row`` (every column present, no old tuple), no change of the batch
        deferred.  Any change to the rules there applies here too."""
        watch = self._watch
        spec = watch.by_oid.get(rel.relid) or watch.spec_for(rel)
        if spec is None:
            return
        key = spec.key_of(row)
        if None in key:
            raise _unknown_key(spec, kind)
        name = spec.config.name
        if self._chunks is not None:
            self._chunks.changed(name, key)
        ck = (name, key)
        try:
            hash(ck)
        except TypeError:  # a key with unhashable values (json): see _cache_key
            ck = point_id(name, key)
        text, payload = spec.render(row)
        unchanged = self._remember(ck, text, payload) and kind == "U"
        out.append(Change("upsert", name, key, text, payload, self._txn_commit_lsn, unchanged))

    def _event(self, event: Any, out: list[Change]) -> None:
        """Apply one decoded message (the general path of :meth:`_decode_at`)."""
        if type(event) is RowChange:
            self._row_change(event, out)
        elif isinstance(event, Begin):
            self._in_txn = True
            self._txn_commit_lsn = event.final_lsn
        elif isinstance(event, Commit):
            self._in_txn = False
            self._safe_lsn = max(self._safe_lsn, event.end_lsn)
            self._commit_ts = event.commit_ts
        elif isinstance(event, RowChange):
            self._row_change(event, out)
        elif isinstance(event, LogicalMessage):
            wanted = parse_signal(event.prefix, event.content, self.slot)
            if wanted is not None:
                self._signalled(wanted)
            elif self._chunks is not None:
                mark = parse_watermark(event.prefix, event.content)
                released = self._chunks.watermark(*mark) if mark is not None else None
                if released is not None:
                    rows, done = released
                    if done.recheck:
                        rows = self._recheck(rows, done.recheck)
                    # here, in commit order: what the stream changed inside the window is not among them
                    self._pending.extend(rows)
                    self._pending.append(done)
        elif isinstance(event, Truncate):
            for rel in event.relations:
                spec = self._watch.spec_for(rel)
                if spec is not None:
                    if self._chunks is not None:
                        self._chunks.truncated(spec.name)
                    out.append(Change("truncate", spec.name, (), lsn=self._txn_commit_lsn))
                    self._resolve_deferred(out)  # before forgetting what they emitted
                    self._emitted.clear()
        elif isinstance(event, Relation):
            try:
                assert self._side is not None
                self._watch.check_relation(event, self._side)
            except SchemaChanged as exc:
                # Nothing of this table from here on may be applied: end the
                # batch before it (what came before is written and confirmed as
                # usual), and stop at the next read.
                self._halt = exc

    def _row_change(self, event: RowChange, out: list[Change]) -> None:
        spec = self._watch.spec_for(event.relation)
        if spec is None:
            return
        lsn = self._txn_commit_lsn
        if event.kind == "D":
            assert event.old is not None
            old_key = spec.key_of(event.old)
            if None in old_key:
                raise _unknown_key(spec, event)
            if self._chunks is not None:
                self._chunks.changed(spec.name, old_key)
            self._forget(_cache_key(spec.name, old_key))
            out.append(Change("delete", spec.name, old_key, lsn=lsn))
            return
        row = event.new or {}
        missing: tuple[str, ...] = ()
        # C-level pre-check; the exact per-column test only when some value is unchanged TOAST
        if UNCHANGED_TOAST in row.values():
            row, missing = self._take_unchanged(spec, event, row)
        key = spec.key_of(row)
        if None in key:
            raise _unknown_key(spec, event)
        if self._chunks is not None:
            self._chunks.changed(spec.name, key)
        if event.kind == "U" and event.old is not None:
            old_key = spec.key_of(event.old)
            if old_key != key and all(v is not None for v in old_key):
                if self._chunks is not None:
                    self._chunks.changed(spec.name, old_key)
                self._forget(_cache_key(spec.name, old_key))
                out.append(Change("delete", spec.name, old_key, lsn=lsn))  # primary key changed
        ck = _cache_key(spec.name, key)
        if missing or (self._deferred_keys and ck in self._deferred_keys):
            # (after a key change nothing is remembered for the new key: no shortcut)
            if missing and event.kind == "U" and self._changes_nothing(spec, row, missing, ck):
                return
            # rendered at the end of the batch, in order, once the values are fetched
            change = Change("upsert", spec.name, key, None, None, lsn)
            out.append(change)
            self._deferred.append((change, spec, row, ck, event.kind, missing))
            self._deferred_keys.add(ck)
            return
        text, payload = spec.render(row)
        unchanged = self._remember(ck, text, payload) and event.kind == "U"
        out.append(Change("upsert", spec.name, key, text, payload, lsn, text_unchanged=unchanged))

    def _take_unchanged(self, spec: TableSpec, event: RowChange, row: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The row with unchanged TOAST values taken from the change's old tuple where it has
        them, and the needed columns still unknown (to fetch).

        The old tuple holds every column with REPLICA IDENTITY FULL, else only the key
        (sent when the key changed or is itself stored out of line): a key column that
        arrives as unchanged is taken from there, never fetched by a key we do not know.
        """
        unknown = [c for c in spec.needed_columns if row.get(c) is UNCHANGED_TOAST]
        if not unknown:
            return row, ()
        row = dict(row)
        old = event.old
        if old is not None:
            full = event.relation.replica_identity == "f"
            for c in unknown:
                value = old.get(c, UNCHANGED_TOAST)
                if value is not UNCHANGED_TOAST and (full or c in spec.key_columns):
                    row[c] = value
        if any(row.get(c) is UNCHANGED_TOAST for c in spec.key_columns):
            raise _unknown_key(spec, event)
        return row, tuple(c for c in unknown if row[c] is UNCHANGED_TOAST)

    def _changes_nothing(self, spec: TableSpec, row: dict[str, Any], missing: tuple[str, ...], ck: Any) -> bool:
        """True for an update that changes nothing the index holds, known without a fetch.

        Every template column is unchanged TOAST, so the text is the one of the
        row's previous version, which is what this reader emitted last for the key
        (the stream is in commit order); the payload was remembered with that text
        (rows with long texts only, see :meth:`_remember`), and every payload
        column arrived, equal to it.  Typically an UPDATE of a column outside the
        template and payload of rows with large texts: nothing to fetch, embed or
        write.
        """
        if any(c not in missing for c in spec.template_columns) or not spec.template_columns:
            return False
        if ck in self._deferred_keys:
            return False  # the remembered version is not the previous one yet
        entry = self._emitted.get(ck)
        if type(entry) is not tuple:
            return False
        payload = spec.payload_columns
        if any(c in missing for c in payload):
            return False
        if repr(tuple(row.get(c) for c in payload)) != entry[1]:  # repr: 1, 1.0 and True differ
            return False
        self._emitted.move_to_end(ck)
        return True

    def _forget(self, ck: Any) -> None:
        """Drop what was emitted for a key (deleted, or moved to another key), in batch order."""
        if self._deferred_keys and ck in self._deferred_keys:
            self._deferred.append((None, None, None, ck, "D", ()))
        else:
            self._emitted.pop(ck, None)

    def _remember(self, pid: Any, text: str, payload: dict[str, Any] | None = None) -> bool:
        """Record the text emitted for ``pid``; True if it equals the previous one.

        For long texts (likely stored out of line) the payload is remembered too,
        as its values' repr when short: :meth:`_changes_nothing` compares it.
        """
        digest = _fingerprint(text)
        emitted = self._emitted
        entry = emitted.get(pid)
        same = entry == digest or (type(entry) is tuple and entry[0] == digest)
        if payload is not None and len(text) >= PAYLOAD_MEMO_MIN_TEXT:
            memo = repr(tuple(payload.values()))
            if len(memo) <= PAYLOAD_MEMO_MAX:
                digest = (digest, memo)
        emitted[pid] = digest
        if entry is not None:
            emitted.move_to_end(pid)  # (a new key is added at the end already)
        elif len(emitted) > TEXT_HASH_CACHE_ENTRIES:
            emitted.popitem(last=False)
        return same

    def _resolve_deferred(self, out: list[Change]) -> None:
        """Render the changes of this batch that waited for unchanged TOAST values.

        The values are fetched with one query per table (in chunks of
        TOAST_FETCH_CHUNK keys), not one per row.  The current row may be newer
        than the change; a newer version will be streamed after it anyway, so the
        final state still follows commit order.  A row gone since is skipped: its
        delete (or key change) follows in the stream.  Changes of the same keys
        that came later in the batch waited too, so what is remembered per key
        follows batch order.
        """
        entries, self._deferred, self._deferred_keys = self._deferred, [], set()
        if not entries:
            return
        wanted: dict[str, tuple[TableSpec, dict[Any, tuple[Any, ...]]]] = {}
        for change, spec, _row, ck, _kind, missing in entries:
            if missing:
                wanted.setdefault(spec.name, (spec, {}))[1][ck] = change.key
        current = {name: self._fetch_rows(spec, list(keys.values())) for name, (spec, keys) in wanted.items()}
        gone: set[int] = set()
        for change, spec, row, ck, kind, missing in entries:
            if change is None:
                self._emitted.pop(ck, None)
                continue
            if missing:
                found = current[spec.name].get(ck)
                if found is None:
                    gone.add(id(change))
                    self._emitted.pop(ck, None)
                    continue
                row = {**row, **{c: found[c] for c in missing}}
            change.text, change.payload = spec.render(row)
            change.text_unchanged = self._remember(ck, change.text, change.payload) and kind == "U"
        if gone:
            out[:] = [c for c in out if id(c) not in gone]

    def _recheck(self, rows: list[Change], keys: frozenset[tuple[Any, ...]]) -> list[Change]:
        """Chunk rows whose version another transaction had marked, read again now.

        The current row is at least as new as that transaction's change (actors/backfill.py
        says why it matters); any change after the high watermark follows in the stream
        anyway, so the final state still follows commit order, as with the TOAST fetch.  A
        row gone meanwhile is handed out as a delete (its own delete may lie before the
        window: nothing else would remove the copy).
        """
        if not rows:
            return rows
        spec = self.specs[rows[0].table]
        wanted = [c.key for c in rows if c.key in keys]
        if not wanted:
            return rows
        current = self._fetch_rows(spec, wanted)
        out = []
        for change in rows:
            if change.key not in keys:
                out.append(change)
                continue
            row = current.get(_cache_key(spec.name, change.key))
            if row is None:
                out.append(Change("delete", spec.name, change.key, lsn=self._txn_commit_lsn))
            else:
                text, payload = spec.render(row)
                out.append(Change("upsert", spec.name, change.key, text, payload, self._txn_commit_lsn))
        return out

    def _fetch_rows(self, spec: TableSpec, keys: list[tuple[Any, ...]]) -> dict[Any, dict[str, Any]]:
        """Current rows of ``keys`` (cache key -> converted row), read as the backfill reads them."""
        assert self._side is not None
        sql = self._fetch_sql(spec)
        found: dict[Any, dict[str, Any]] = {}
        for start in range(0, len(keys), TOAST_FETCH_CHUNK):
            texts = [spec.key_texts(key) for key in keys[start : start + TOAST_FETCH_CHUNK]]
            params = [list(column) for column in zip(*texts)]  # one text[] per key column
            try:
                rows = self._side.execute(sql, params).fetchall()
            except psycopg.errors.InsufficientPrivilege as exc:
                raise _no_read_privilege(exc) from None
            except psycopg.Error as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SourceError(f"reading the unchanged TOAST values of {spec.name} failed: {detail}") from exc
            for values in rows:
                row = spec.row_from_texts(values)
                found[_cache_key(spec.name, spec.key_of(row))] = row
        return found

    def _fetch_sql(self, spec: TableSpec) -> str:
        """The SELECT of :meth:`_fetch_rows`: one text[] parameter per key column, cast to
        the column's type (so the primary key's index finds the rows)."""
        sql = self._fetch_sqls.get(spec.name)
        if sql is None:
            assert self._side is not None
            sql = self._fetch_sqls[spec.name] = spec.rows_by_keys_sql(self._side)
        return sql

    def request_backfill(self, tables: list[str]) -> str:
        """Ask this pipeline (through the WAL, see actors/backfill.py) to backfill ``tables``."""
        assert self._side is not None, "start() first"
        return request_backfill(self._side, self.slot, tables)

    def position(self) -> dict[str, int]:
        """LSNs: received from the server, safe to confirm, and confirmed."""
        return {"received": self._received_lsn, "safe": self._safe_lsn, "acked": self._acked_lsn}

    def ack(self, lsn: int) -> None:
        """Confirm to the server that every change up to ``lsn`` is durably written.

        Only the coordinator calls this, and only after the writer returned for
        every batch up to the one that carried ``lsn``.  It may run on another
        thread than read_batch (the actor's control group) and is sent at once:
        read_batch holds the lock only while it decodes, not while it waits.
        Acks may arrive out of order (the piggybacked one of a read and a direct
        one): only a higher position moves the slot, so the order does not matter.
        """
        with self._lock:
            if lsn <= self._acked_lsn:
                return
            self._acked_lsn = lsn
            if self._streaming:
                self._send_status()
                log.debug("slot %s confirmed up to %s", self.slot, format_lsn(lsn))

    def _maybe_send_status(self) -> None:
        if time.monotonic() - self._last_status >= self._status_interval:
            self._send_status()

    def _send_status(self, reply: bool = False) -> None:
        """Report the acknowledged position (the lock is held)."""
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
        self._stop_keepalive()  # before taking the lock: the thread may be waiting for it
        with self._lock:
            try:
                self._send_status()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._streaming = False
            conns, self._repl, self._side, self._snapshot_conn = (
                (self._snapshot_conn, self._side, self._repl), None, None, None)
        if self._chunks is not None:
            self._chunks.close()
            self._chunks = None
        self._pending.clear()
        for conn in conns:
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
        self._backfill = None
