"""The writer: applies change batches to a sink in source commit order.

``Writer`` is a plain class; ``actors.remote.WriterActor`` wraps it.  It is
the only component that writes vectors, so it also records the pipeline's
bookkeeping (backfill completion, the position, dead letters) in the sink, in
the same order as the data.

When a write fails, the writer tells a sink outage from a bad change by asking
the sink (``ping``):

* the sink does not answer: an outage.  The same write is retried, with
  exponential backoff and jitter capped at ``max_retry_delay`` (so it resumes
  within seconds of the sink's return), for as long as it takes; nothing is
  acknowledged meanwhile, the coordinator's window fills and the reader stops
  reading (memory stays flat, PostgreSQL keeps the WAL).  ``interrupt`` ends the
  wait when the pipeline stops.
* the sink answers: the data is the problem.  The write is split in halves,
  recursively, until the failing change(s) are alone; the others are written.
  A change that fails alone ``max_attempts`` times is recorded as a dead letter
  (``actors.deadletter``) and the batch completes, so the slot moves on.

Partitioned writers (``[sink] writers = W``, for sinks that take concurrent
writers): ``W`` writer processes share a batch's changes by point id
(:func:`partition_of`), so every change of a key goes to the same writer and
keeps its commit order there.  Writer 0 (the primary) alone keeps the
bookkeeping: it writes its own partition, then waits until the other writers
have written theirs (:meth:`Writer.apply` ``wait_others``), and only then
records the position and the backfill plan.  So the position the store
records, and therefore the slot's confirmed position, is never ahead of the
lowest position every writer has made durable.  Batches that act on whole
tables (a TRUNCATE, a backfill's begin or completion) are applied by the
primary alone, whole, while the others are idle (the coordinator's barrier).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from actors.changes import ChangeBatch, EmbeddedVectors, format_lsn, point_id
from actors.changes import text_hash as hash_text
from actors.deadletter import DeadLetter, DeadLetters
from actors.logs import error_line
from actors.retry import Backoff
from actors.sinks.base import MissingPointError, VectorPoint, VectorSink

log = logging.getLogger(__name__)


class OrderingError(RuntimeError):
    """A batch arrived out of sequence: applying it could break commit order."""


class WriteInterrupted(RuntimeError):
    """The pipeline is stopping while a write waits for the sink: the batch stays unacknowledged
    (it is replayed from the slot on the next start)."""


@dataclass(slots=True)
class ApplyResult:
    seq: int
    ack_lsn: int | None
    upserts: int
    deletes: int
    snapshot_complete: bool
    seconds: float
    #: changes of this batch set aside as dead letters, and how many the store holds now
    dead_lettered: int = 0
    dead_letters: int = 0
    #: the generation points are stamped with after this batch (partitioned writers get it from here)
    generation: int | None = None


def state_name(slot: str) -> str:
    return f"slot/{slot}"


def partition_of(pid: str, count: int) -> int:
    """Which of ``count`` partitioned writers applies point ``pid``.

    The first 32 bits of the id (a UUID5: uniformly distributed hash bits), so the
    answer is the same in every process (unlike ``hash()``) and every change of a
    key lands on the same writer, in commit order.
    """
    return int(pid[:8], 16) % count if count > 1 else 0


def is_barrier(batch: ChangeBatch) -> bool:
    """Whether a batch must be applied whole by the primary writer while the others are idle:
    it acts on whole tables (a TRUNCATE, a backfill's begin or completion), not on keys."""
    return bool(batch.snapshot_complete or batch.backfill_begin
                or any(c.op == "truncate" for c in batch.changes))


class Writer:
    """Applies batches to ``sink``; every call returns only once the writes are durable."""

    def __init__(self, sink: VectorSink, slot: str, max_attempts: int = 3, max_dead_letters: int = 1000,
                 max_retry_delay: float = 5.0, payload_indexes: dict[str, str] | None = None) -> None:
        self.sink = sink
        #: payload field -> index kind, created by open() (``[[tables]] filterable``)
        self.payload_indexes = dict(payload_indexes or {})
        # a sink's own retries end soon: the outage is waited out (and shown) here, interruptibly
        sink.bound_retries(max(2 * max_retry_delay, 5.0))
        self.slot = slot
        self.max_attempts = max(1, int(max_attempts))
        self.deadletters = DeadLetters(sink, slot, max_dead_letters)
        self.dead_lettered = 0
        # the primary of partitioned writers: dead letters the others set aside since open()
        self._others_dead_lettered = 0
        self._outage = Backoff(0.2, max_retry_delay)
        self._poison = Backoff(0.05, min(1.0, max_retry_delay))
        # set by interrupt() (another thread): a waiting retry gives up
        self._interrupt = threading.Event()
        #: since when the sink does not answer (None: it does)
        self.unavailable_since: float | None = None
        self.outages = 0
        # point id -> (table, key, lsn) of the batch being applied (for dead letters)
        self._origin: dict[str, tuple[str, list[Any], int]] = {}
        self.last_seq = 0
        self.rows_applied = 0
        self.upserts = 0
        self.deletes = 0
        self.last_commit_lsn = 0
        self.payload_only_updates = 0
        # the generation the backfill in progress stamps its points with (None: streaming);
        # the points of its tables with another one are gone from the source (see _complete_backfill)
        self._generation: int | None = None
        self._backfill_tables: list[str] = []
        # every table the store follows (the state's "tables": what a resume is checked against)
        self._tables: list[str] = []
        self._identity: dict[str, Any] = {}
        # the slot's state document once its backfill is complete; its
        # "position" is the WAL position the store reflects (see _record_position)
        self._state: dict[str, Any] | None = None

    def open(self, dimension: int) -> None:
        """Prepare the sink; called at start and again after every pipeline recovery.

        The reader numbers batches from 1 again when it is restarted, so the
        sequence check starts over too.  Batches of the failed attempt that
        were queued before this call have already run (calls from the
        coordinator execute in order), so nothing old can follow.
        """
        self._interrupt.clear()
        self.sink.ensure_ready(dimension)
        if self.payload_indexes:
            self.sink.ensure_payload_indexes(dict(self.payload_indexes))
        self.deadletters.load()  # the other partitions' records too: they are all in the store
        self._others_dead_lettered = 0
        self.last_seq = 0

    def interrupt(self) -> None:
        """Stop waiting for the sink (called from another thread when the pipeline stops);
        the write in progress raises :class:`WriteInterrupted`, unacknowledged."""
        self._interrupt.set()

    def backfill_state(self) -> dict[str, Any] | None:
        """The slot's state document in the store: None before a backfill completed, unless
        a chunked backfill is under way (``chunked``: its ``plan``, see actors/backfill.py).

        ``backfill_complete``, ``tables``, ``identity`` (which server and slot the
        store follows) and ``position`` (the WAL position it reflects).
        """
        self._state = self.sink.get_state(state_name(self.slot))
        if self._state is not None and not (self._state.get("backfill_complete") or self._state.get("chunked")):
            self._state = None
        return self._state

    def begin_backfill(self, tables: list[str], publication: str, identity: dict[str, Any] | None = None,
                       chunked: bool = False) -> int:
        """Forget the old completion marker and choose the backfill's generation (returned:
        partitioned writers stamp their points with it too).

        Called before a fresh backfill reads the tables.  Every row it reads is
        written stamped with a new generation (so is every change streamed
        meanwhile); points already in the sink (from an earlier run) that it
        does not bring were deleted at the source meanwhile, and are removed at
        the end by their older generation, on the store's side: nothing here
        lists the stored ids.  A ``chunked`` backfill (actors/backfill.py) keeps
        a state document meanwhile: its generation, the position, and the plan
        of chunks done, which a restart resumes from.
        """
        previous = self.sink.get_state(state_name(self.slot)) or {}
        self._identity = dict(identity or {})
        self._backfill_tables = list(tables)
        self._tables = list(tables)
        self._publication = publication
        # microseconds since the epoch: above any generation an earlier backfill used (even one of
        # another writer process), and still above the one recorded should the clock step back
        self._generation = max(time.time_ns() // 1000, int(previous.get("generation") or 0) + 1)
        state: dict[str, Any] | None = None
        if chunked:
            state = {
                "backfill_complete": False,
                "chunked": True,
                "tables": sorted(self._backfill_tables),
                "identity": self._identity,
                "generation": self._generation,
                "started_at": time.time(),
                "plan": None,  # stored with the first chunk written
                # nothing is confirmed to the new slot before a position is recorded here
                "position": None,
            }
        self.sink.set_state(state_name(self.slot), state)
        self._state = state
        # the writer may be restarted between snapshots; sequence numbers restart too
        self.last_seq = 0
        return self._generation

    def resume_backfill(self) -> int:
        """Go on with the chunked backfill whose state :meth:`backfill_state` just read: same
        generation, same tables (its rows written so far keep counting as present)."""
        state = self._state
        if state is None or not state.get("chunked") or state.get("backfill_complete"):
            raise RuntimeError(f"slot {self.slot}: no chunked backfill under way to resume")
        self._generation = int(state["generation"])
        self._tables = list(state.get("tables") or [])
        self._backfill_tables = list(state.get("backfill_tables") or self._tables)
        self._identity = dict(state.get("identity") or {})
        self.last_seq = 0
        return self._generation

    def _begin_again(self, tables: list[str]) -> None:
        """A chunked backfill of ``tables`` starts with the batch being applied (the stream
        reached a backfill request): while the store keeps following the slot, its points of
        these tables are written again under a new generation, and the older ones left at
        the end are gone from the source.  Joins the chunked backfill under way, if any."""
        state = self._state or self.sink.get_state(state_name(self.slot)) or {}
        if state.get("chunked") and not state.get("backfill_complete") and self._generation:
            self._backfill_tables = sorted(set(self._backfill_tables) | set(tables))
        else:
            self._generation = max(time.time_ns() // 1000, int(state.get("generation") or 0) + 1)
            self._backfill_tables = sorted(tables)
            self._identity = dict(state.get("identity") or self._identity)
        self._tables = sorted(set(state.get("tables") or self._tables) | set(tables))
        state = {
            **state,
            "backfill_complete": False,
            "chunked": True,
            "tables": self._tables,
            "backfill_tables": self._backfill_tables,
            "identity": self._identity,
            "generation": self._generation,
            "started_at": state.get("started_at") if state.get("chunked") else time.time(),
            "plan": state.get("plan") if state.get("chunked") else None,
        }
        self.sink.set_state(state_name(self.slot), state)
        self._state = state
        log.info("slot %s: backfilling %s again (generation %d)", self.slot, ", ".join(tables), self._generation)

    def apply(self, batch: ChangeBatch, vectors: np.ndarray | None, part: tuple[int, int] | None = None,
              generation: int | None = None,
              wait_others: Callable[[], Sequence[ApplyResult]] | None = None) -> ApplyResult:
        """Write one batch: upserts and deletes, last change per key wins.

        ``vectors`` holds one row per upsert, in batch order.

        Partitioned writers (see the module docstring): ``part = (i, W)`` writes only
        the changes of partition ``i`` of ``W``.  The primary (``i = 0``) passes
        ``wait_others``, which returns once writers ``1..W-1`` have written this batch
        (and raises if one failed): the position and plan are recorded after it, never
        before.  The others (``i > 0``) record nothing and stamp points with the
        primary's ``generation``.  A batch that :func:`is_barrier` is never partitioned.
        """
        started = time.perf_counter()
        if batch.seq <= self.last_seq:
            raise OrderingError(f"batch {batch.seq} after batch {self.last_seq} on slot {self.slot}")
        index, count = part or (0, 1)
        follower = index > 0
        if count > 1 and is_barrier(batch):
            raise ValueError(f"batch {batch.seq} acts on whole tables: the primary writer applies it whole")
        if follower:
            self._generation = generation
        if batch.backfill_begin:
            self._begin_again(list(batch.backfill_begin["tables"]))
        embedded = [c for c in batch.changes if c.op == "upsert" and not c.text_unchanged]
        embed_errors: dict[int, str] = {}
        if isinstance(vectors, EmbeddedVectors):
            vectors, embed_errors = vectors.vectors, vectors.errors
        if embedded and (vectors is None or len(vectors) != len(embedded)):
            got = 0 if vectors is None else len(vectors)
            raise ValueError(f"batch {batch.seq}: {len(embedded)} texts to embed but {got} vectors")
        # point id -> ("upsert" | "payload", point) or None for a delete; the
        # last change per key wins, so the three sets written below are disjoint
        pending: dict[str, tuple[str, VectorPoint] | None] = {}
        self._origin = {}
        failed: list[DeadLetter] = []  # texts the model could not embed
        n_up = n_del = 0
        vector_index = 0
        for change in batch.changes:
            if change.op == "truncate":
                self._flush(pending)
                pending = {}
                # on the store's side, in bounded chunks: no id of the table is listed here
                n_del += self.sink.delete_table(change.table)
                continue
            pid = point_id(change.table, change.key)
            if count > 1 and partition_of(pid, count) != index:
                # another writer's key; its vector (if any) is still counted to keep the rows aligned
                if change.op == "upsert" and not change.text_unchanged:
                    vector_index += 1
                continue
            self._origin[pid] = (change.table, list(change.key), change.lsn)
            if change.op == "delete":
                pending[pid] = None
                n_del += 1
            else:
                text = change.text or ""
                point = VectorPoint(
                    id=pid, table=change.table, key=list(change.key), vector=None, text=text,
                    text_hash=hash_text(text), payload=change.payload or {},
                    # between begin_backfill and the snapshot's last batch only snapshot rows arrive
                    generation=self._generation or 0,
                )
                previous = pending.get(pid)
                if not change.text_unchanged:
                    assert vectors is not None
                    point.vector = vectors[vector_index]
                    error = embed_errors.get(vector_index)
                    vector_index += 1
                    if error is not None:
                        # the model failed on this text alone: its retry budget was spent there
                        pending.pop(pid, None)
                        failed.append(DeadLetter(pid, change.table, list(change.key), "upsert", change.lsn,
                                                 f"embedding failed: {error}", self.max_attempts))
                        continue
                    pending[pid] = ("upsert", point)
                elif previous is not None and previous[0] == "upsert":
                    # same text as an upsert earlier in this batch: keep its vector
                    point.vector = previous[1].vector
                    pending[pid] = ("upsert", point)
                elif pid in self.deadletters.ids and self.deadletters.holds(pid):
                    # its point is not stored (its upsert was set aside): a payload update cannot
                    # apply; the record stays, and `deadletter retry` writes the current row
                    self.deadletters.touch(pid, change.lsn)
                    pending.pop(pid, None)
                    continue
                else:
                    pending[pid] = ("payload", point)
                n_up += 1
            if change.lsn:
                self.last_commit_lsn = max(self.last_commit_lsn, change.lsn)
        dead = self._flush(pending)
        for letter in failed:
            self._dead_letter(letter)
        dead += len(failed)
        self.last_seq = batch.seq
        self.rows_applied += n_up + n_del
        self.upserts += n_up
        self.deletes += n_del
        # this writer's own figures; the primary adds the other partitions' below
        others_up = others_del = others_dead = 0
        if wait_others is not None:
            # every partition of this batch is durable before the position says so
            for other in wait_others():
                others_up, others_del = others_up + other.upserts, others_del + other.deletes
                others_dead += other.dead_lettered
            self._others_dead_lettered += others_dead
        if not follower:  # (the primary records the position, once every partition is written)
            if batch.snapshot_complete:
                self._complete_backfill(batch.ack_lsn)
            else:
                self._record_position(batch.ack_lsn, batch.backfill)
        seconds = time.perf_counter() - started
        if batch.changes:
            log.debug(
                "slot %s: batch %d applied (%d upserts, %d deletes, ack %s) in %.1f ms",
                self.slot, batch.seq, n_up + others_up, n_del + others_del, format_lsn(batch.ack_lsn),
                seconds * 1000,
            )
        return ApplyResult(batch.seq, batch.ack_lsn, n_up + others_up, n_del + others_del,
                           batch.snapshot_complete, seconds, dead_lettered=dead + others_dead,
                           dead_letters=len(self.deadletters) + self._others_dead_lettered,
                           generation=self._generation)

    def _flush(self, pending: dict[str, tuple[str, VectorPoint] | None]) -> int:
        """Write ``pending``; returns how many of its changes became dead letters."""
        # Only the last change per key survives in `pending`, so the three sets
        # are disjoint and their relative order is irrelevant.
        deletes = [pid for pid, p in pending.items() if p is None]
        points = [p[1] for p in pending.values() if p is not None and p[0] == "upsert"]
        payload_only = [p[1] for p in pending.values() if p is not None and p[0] == "payload"]
        dead = 0
        if deletes:
            dead += self._write("delete", deletes, self.sink.delete, lambda pid: pid)
        if points:
            dead += self._write("upsert", points, self.sink.upsert, lambda p: p.id)
        if payload_only:
            dead += self._write("payload", payload_only, self.sink.update_payloads, lambda p: p.id)
            self.payload_only_updates += len(payload_only)
        return dead

    # -- failures: outages wait, bad changes are isolated and set aside -----------------------

    def _write(self, op: str, items: Sequence[Any], write: Callable[[Sequence[Any]], None],
               id_of: Callable[[Any], str]) -> int:
        """``write(items)``, durable on return, however long the sink is away; a change that
        fails on its own ``max_attempts`` times is dead-lettered.  Returns the dead letters."""
        attempts = 0
        while True:
            try:
                write(items)
            except MissingPointError:
                raise  # the coordinator replays from the slot and embeds the row again
            except Exception as exc:  # noqa: BLE001 - classified below: outage or bad data
                if self._interrupt.is_set():
                    raise WriteInterrupted(f"stopped while writing to the sink: {error_line(exc)}") from None
                if not getattr(exc, "permanent", False) and not self._sink_answers():
                    self._wait_for_sink(op, len(items), exc)
                    continue
                # The sink answers, so this data is the problem: isolate it.
                if len(items) > 1:
                    mid = len(items) // 2
                    log.warning("slot %s: %s of %d points failed (%s); writing it in halves to find the failing "
                                "change", self.slot, op, len(items), error_line(exc))
                    return (self._write(op, items[:mid], write, id_of)
                            + self._write(op, items[mid:], write, id_of))
                attempts += 1
                if attempts >= self.max_attempts or getattr(exc, "permanent", False):
                    pid = id_of(items[0])
                    table, key, lsn = self._origin.get(pid, ("?", [], 0))
                    self._dead_letter(DeadLetter(pid, table, key, op, lsn, error_line(exc), attempts))
                    return 1
                if self._interrupt.wait(self._poison.next()):
                    raise WriteInterrupted("stopped while retrying a failing change") from None
                continue
            self._recovered()
            self._poison.reset()
            if self.deadletters.ids:
                self.deadletters.resolve(id_of(i) for i in items)
            return 0

    def _sink_answers(self) -> bool:
        try:
            self.sink.ping()
            return True
        except Exception:  # noqa: BLE001 - any failure to answer is an outage
            return False

    def _wait_for_sink(self, op: str, count: int, exc: BaseException) -> None:
        now = time.monotonic()
        if self.unavailable_since is None:
            self.unavailable_since = now
            self.outages += 1
        delay = self._outage.next()
        log.warning("slot %s: the sink is not answering (%s); %s of %d points retried in %.1f s (down for %.0f s, "
                    "nothing acknowledged meanwhile)", self.slot, error_line(exc), op, count, delay,
                    now - self.unavailable_since)
        if self._interrupt.wait(delay):
            raise WriteInterrupted(f"stopped while the sink was not answering: {error_line(exc)}") from None

    def _recovered(self) -> None:
        if self.unavailable_since is not None:
            log.info("slot %s: the sink answers again after %.1f s", self.slot, time.monotonic() - self.unavailable_since)
            self.unavailable_since = None
        self._outage.reset()  # the next outage starts from the short delay again

    def _dead_letter(self, letter: DeadLetter) -> None:
        # Recorded (durably) before this batch's position is, so the slot never
        # moves past a change that is neither in the index nor set aside.
        self.deadletters.record(letter)
        self.dead_lettered += 1
        log.error("slot %s: %s of %s key %s dead-lettered after %d attempts: %s (`embedcluster deadletter list`)",
                  self.slot, letter.op, letter.table, letter.key, letter.attempts, letter.error)

    def _record_position(self, lsn: int | None, plan: dict[str, Any] | None = None) -> None:
        """Record in the store that it reflects every change up to ``lsn`` (and, during a
        chunked backfill, the chunks done: ``plan``).

        Written before the coordinator acknowledges ``lsn`` to the slot (it does
        so only after this call returns), so the recorded position is never
        behind the slot's confirmed one.  On resume, a store whose position is
        behind the slot (restored from a backup, another store, a re-created
        slot) is therefore one that missed changes, and is not trusted.  The plan
        is written after the batch's points, so it never claims a chunk whose
        rows are not in the store.
        """
        if self._state is None:
            return
        update: dict[str, Any] = {}
        if plan is not None and self._state.get("chunked"):
            update["plan"] = plan
        if lsn and lsn > int(self._state.get("position") or 0):
            update["position"] = lsn
        if not update:
            return
        state = {**self._state, **update}
        self.sink.set_state(state_name(self.slot), state)
        self._state = state

    def _complete_backfill(self, position: int | None) -> None:
        removed = 0
        generation = self._generation
        if generation:
            for table in self._backfill_tables:
                # every row of the snapshot was written with this generation: a point with
                # another one has no row any more (deleted while nothing was replicating)
                gone = self.sink.delete_table_except_generation(table, generation)
                if gone:
                    removed += gone
                    log.info("slot %s: removed %d points of %s that are gone from the source", self.slot, gone, table)
        self._generation = None
        # Written after every snapshot row: a crash before this line means the
        # next start takes a fresh snapshot instead of trusting a partial one.
        state = {
            "backfill_complete": True,
            "tables": sorted(set(self._tables) | set(self._backfill_tables)),
            "backfilled": sorted(self._backfill_tables),
            "completed_at": time.time(),
            "stale_removed": removed,
            "generation": generation or 0,
            "identity": self._identity,
            # the snapshot's position: every change up to it is in the store now (a chunked
            # backfill's last batch may end inside a transaction: the position stays)
            "position": position or int((self._state or {}).get("position") or 0),
        }
        self.sink.set_state(state_name(self.slot), state)
        self._state = state
        log.info("slot %s: backfill complete", self.slot)

    def stats(self) -> dict[str, Any]:
        return {
            "rows_applied": self.rows_applied,
            "upserts": self.upserts,
            "deletes": self.deletes,
            "payload_only_updates": self.payload_only_updates,
            "dead_letters": len(self.deadletters),
            "dead_lettered": self.dead_lettered,
            "sink_unavailable_s": None if self.unavailable_since is None else round(time.monotonic() - self.unavailable_since, 1),
            "last_batch": self.last_seq,
            "last_commit_lsn": format_lsn(self.last_commit_lsn or None),
            # the embedded store's syncs and index builds (benchmarks); other sinks have none
            **({"store": self.sink.sync_stats()} if hasattr(self.sink, "sync_stats") else {}),
        }
