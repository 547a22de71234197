"""The writer: applies change batches to a sink in source commit order.

``Writer`` is a plain class; ``actors.remote.WriterActor`` wraps it.  It is
the only component that writes vectors, so it also records the pipeline's
bookkeeping (backfill completion) in the sink, in the same order as the data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from actors.changes import ChangeBatch, format_lsn, point_id
from actors.changes import text_hash as hash_text
from actors.sinks.base import VectorPoint, VectorSink

log = logging.getLogger(__name__)


class OrderingError(RuntimeError):
    """A batch arrived out of sequence: applying it could break commit order."""


@dataclass(slots=True)
class ApplyResult:
    seq: int
    ack_lsn: int | None
    upserts: int
    deletes: int
    snapshot_complete: bool
    seconds: float


def state_name(slot: str) -> str:
    return f"slot/{slot}"


class Writer:
    """Applies batches to ``sink``; every call returns only once the writes are durable."""

    def __init__(self, sink: VectorSink, slot: str) -> None:
        self.sink = sink
        self.slot = slot
        self.last_seq = 0
        self.rows_applied = 0
        self.upserts = 0
        self.deletes = 0
        self.last_commit_lsn = 0
        self.payload_only_updates = 0
        # ids that were in the sink before a (re-)backfill and have not been
        # seen in the snapshot yet: deleted when the snapshot completes
        self._stale: dict[str, set[str]] | None = None
        self._backfill_tables: list[str] = []
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
        self.sink.ensure_ready(dimension)
        self.last_seq = 0

    def backfill_state(self) -> dict[str, Any] | None:
        """The slot's state document in the store (None before a backfill completed).

        ``backfill_complete``, ``tables``, ``identity`` (which server and slot the
        store follows) and ``position`` (the WAL position it reflects).
        """
        self._state = self.sink.get_state(state_name(self.slot))
        if self._state is not None and not self._state.get("backfill_complete"):
            self._state = None
        return self._state

    def begin_backfill(self, tables: list[str], publication: str, identity: dict[str, Any] | None = None) -> None:
        """Forget the old completion marker and note which stored points may be stale.

        Called before a fresh snapshot is read.  Points already in the sink
        (from an earlier, interrupted run) that the snapshot does not contain
        were deleted at the source meanwhile: they are removed at the end.
        """
        self.sink.set_state(state_name(self.slot), None)
        self._state = None
        self._identity = dict(identity or {})
        self._backfill_tables = list(tables)
        self._publication = publication
        self._stale = {}
        for table in tables:
            ids = {p.id for p in self.sink.iter_points(table)}
            if ids:
                self._stale[table] = ids
                log.info("slot %s: %d stored points of %s will be checked against the snapshot", self.slot, len(ids), table)
        # the writer may be restarted between snapshots; sequence numbers restart too
        self.last_seq = 0

    def apply(self, batch: ChangeBatch, vectors: np.ndarray | None) -> ApplyResult:
        """Write one batch: upserts and deletes, last change per key wins.

        ``vectors`` holds one row per upsert, in batch order.
        """
        started = time.perf_counter()
        if batch.seq <= self.last_seq:
            raise OrderingError(f"batch {batch.seq} after batch {self.last_seq} on slot {self.slot}")
        embedded = [c for c in batch.changes if c.op == "upsert" and not c.text_unchanged]
        if embedded and (vectors is None or len(vectors) != len(embedded)):
            got = 0 if vectors is None else len(vectors)
            raise ValueError(f"batch {batch.seq}: {len(embedded)} texts to embed but {got} vectors")
        # point id -> ("upsert" | "payload", point) or None for a delete; the
        # last change per key wins, so the three sets written below are disjoint
        pending: dict[str, tuple[str, VectorPoint] | None] = {}
        n_up = n_del = 0
        vector_index = 0
        for change in batch.changes:
            if change.op == "truncate":
                self._flush(pending)
                pending = {}
                ids = [p.id for p in self.sink.iter_points(change.table)]
                self.sink.delete(ids)
                n_del += len(ids)
                continue
            pid = point_id(change.table, change.key)
            if change.op == "delete":
                pending[pid] = None
                n_del += 1
            else:
                text = change.text or ""
                point = VectorPoint(
                    id=pid, table=change.table, key=list(change.key), vector=None, text=text,
                    text_hash=hash_text(text), payload=change.payload or {},
                )
                previous = pending.get(pid)
                if not change.text_unchanged:
                    assert vectors is not None
                    point.vector = vectors[vector_index]
                    vector_index += 1
                    pending[pid] = ("upsert", point)
                elif previous is not None and previous[0] == "upsert":
                    # same text as an upsert earlier in this batch: keep its vector
                    point.vector = previous[1].vector
                    pending[pid] = ("upsert", point)
                else:
                    pending[pid] = ("payload", point)
                n_up += 1
            if self._stale is not None and change.table in self._stale:
                self._stale[change.table].discard(pid)
            if change.lsn:
                self.last_commit_lsn = max(self.last_commit_lsn, change.lsn)
        self._flush(pending)
        if batch.snapshot_complete:
            self._complete_backfill(batch.ack_lsn)
        else:
            self._record_position(batch.ack_lsn)
        self.last_seq = batch.seq
        self.rows_applied += n_up + n_del
        self.upserts += n_up
        self.deletes += n_del
        seconds = time.perf_counter() - started
        if batch.changes:
            log.debug(
                "slot %s: batch %d applied (%d upserts, %d deletes, ack %s) in %.1f ms",
                self.slot, batch.seq, n_up, n_del, format_lsn(batch.ack_lsn), seconds * 1000,
            )
        return ApplyResult(batch.seq, batch.ack_lsn, n_up, n_del, batch.snapshot_complete, seconds)

    def _flush(self, pending: dict[str, tuple[str, VectorPoint] | None]) -> None:
        # Only the last change per key survives in `pending`, so the three sets
        # are disjoint and their relative order is irrelevant.
        deletes = [pid for pid, p in pending.items() if p is None]
        points = [p[1] for p in pending.values() if p is not None and p[0] == "upsert"]
        payload_only = [p[1] for p in pending.values() if p is not None and p[0] == "payload"]
        if deletes:
            self.sink.delete(deletes)
        if points:
            self.sink.upsert(points)
        if payload_only:
            self.sink.update_payloads(payload_only)
            self.payload_only_updates += len(payload_only)

    def _record_position(self, lsn: int | None) -> None:
        """Record in the store that it reflects every change up to ``lsn``.

        Written before the coordinator acknowledges ``lsn`` to the slot (it does
        so only after this call returns), so the recorded position is never
        behind the slot's confirmed one.  On resume, a store whose position is
        behind the slot (restored from a backup, another store, a re-created
        slot) is therefore one that missed changes, and is not trusted.
        """
        if self._state is None or not lsn or lsn <= int(self._state.get("position") or 0):
            return
        state = {**self._state, "position": lsn}
        self.sink.set_state(state_name(self.slot), state)
        self._state = state

    def _complete_backfill(self, position: int | None) -> None:
        removed = 0
        for table, ids in (self._stale or {}).items():
            if ids:
                self.sink.delete(sorted(ids))
                removed += len(ids)
                log.info("slot %s: removed %d points of %s that are gone from the source", self.slot, len(ids), table)
        self._stale = None
        # Written after every snapshot row: a crash before this line means the
        # next start takes a fresh snapshot instead of trusting a partial one.
        state = {
            "backfill_complete": True,
            "tables": sorted(self._backfill_tables),
            "completed_at": time.time(),
            "stale_removed": removed,
            "identity": self._identity,
            # the snapshot's position: every change up to it is in the store now
            "position": position or 0,
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
            "last_batch": self.last_seq,
            "last_commit_lsn": format_lsn(self.last_commit_lsn or None),
        }
