"""The coordinator's flow control: which batch to read, embed, write and ack next.

A plain state machine, no Ray: events go in (a read returned, a write
finished, stop), actions come out (:class:`Read`, :class:`Embed`,
:class:`Apply`, :class:`Ack`).  ``cluster.pipeline`` drives it with Ray
object refs; the unit tests drive it with plain objects.  Batches and vectors
are opaque handles here: only the small metadata dict that the reader returns
next to each batch (``seq``, ``changes``, ``to_embed``, ``ack_lsn``, ``phase``,
``snapshot_complete``) is looked at.

The rules (the heart of "no lost change"):

* At most ``window`` batches are between "read" and "written".  When the
  window is full the reader is not called, the replication socket is not
  drained, and PostgreSQL holds the backlog in its WAL: memory stays bounded
  under any backlog.
* Embedding runs in parallel across the actor pool; writes do not: exactly one
  apply is in flight, and batches are applied in the order they were read.
  (An apply may be issued before its vectors exist: the driver hands the
  vectors handle to the writer, which waits for it.)
* After batch ``n`` is written, ``ack_lsn`` of batch ``n`` is acknowledged.
  Since batches ``1..n-1`` were written before, every change up to that LSN is
  durable: "flush sinks, then commit offsets".  An acknowledged position is
  only ever the ``ack_lsn`` of a written batch.
* An idle position (the server's position between transactions, with no
  change for us) is a batch too: it goes to the writer, which records it in
  the store, and is acknowledged after that.  So the position the store
  records is never behind the slot's, and a store that is (restored from a
  backup, say) can be told apart on resume.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Entry:
    """A batch between read and written.

    ``batch`` is the handle the reader returned; ``vectors`` is filled by the
    driver when it carries out :class:`Embed` (``None``: nothing to embed).
    """

    meta: dict[str, Any]
    batch: Any
    vectors: Any = None
    read_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Read:
    """Call the reader for the next batch, confirming ``ack_lsn`` first (if any)."""

    ack_lsn: int | None


@dataclass(frozen=True)
class Embed:
    """Start embedding ``entry``'s batch; store the vectors handle in ``entry.vectors``."""

    entry: Entry


@dataclass(frozen=True)
class Apply:
    """Write ``entry`` (its batch and ``entry.vectors``); report with :meth:`FlowControl.on_applied`."""

    entry: Entry


@dataclass(frozen=True)
class Ack:
    """Every change up to ``lsn`` is written: it is the acknowledged position now.

    It rides on the next :class:`Read` anyway; ``confirm`` asks to send it to
    the slot right away as well.
    """

    lsn: int
    confirm: bool = False


Action = Read | Embed | Apply | Ack


class FlowControl:
    """Window, FIFO apply order and ack rules of one pipeline attempt.

    ``acked_lsn`` is what earlier attempts acknowledged: a replayed batch at or
    below it is not acknowledged again.  The driver calls :meth:`next_actions`
    at the top of each turn and carries the actions out, then waits for the
    read or the apply in flight and reports it with :meth:`on_read` or
    :meth:`on_applied` (carrying out what those return); after :meth:`stop`
    it loops until :attr:`drained`.
    """

    def __init__(self, window: int, acked_lsn: int = 0) -> None:
        self.window = window
        self.acked_lsn = acked_lsn
        self.queue: collections.deque[Entry] = collections.deque()  # read, not yet applying
        self.reading = False
        self.applying: Entry | None = None
        # acknowledged, not yet sent to the reader: rides on the next read
        self.pending_ack = 0
        # highest ack_lsn among the batches read and not yet acknowledged: an
        # idle position at or below it is already on its way
        self.promised_lsn = 0
        self.stopping = False

    @property
    def inflight(self) -> int:
        """Batches between read and written."""
        return len(self.queue) + (self.applying is not None)

    @property
    def drained(self) -> bool:
        """Stopped, and nothing is being read, queued or written."""
        return self.stopping and not self.reading and self.applying is None and not self.queue

    def stop(self) -> None:
        """Read no more; what was read is still written and acknowledged."""
        self.stopping = True

    def next_actions(self) -> list[Action]:
        actions: list[Action] = []
        # 1. read, unless the window is full (backpressure) or stopping
        if not self.reading and not self.stopping and self.inflight < self.window:
            actions.append(Read(self.pending_ack or None))
            self.pending_ack = 0
            self.reading = True
        # 2. write the oldest batch; one at a time keeps commit order
        if self.applying is None and self.queue:
            self.applying = self.queue.popleft()
            actions.append(Apply(self.applying))
        return actions

    def on_read(self, meta: dict[str, Any], batch: Any) -> list[Action]:
        """The read in flight returned ``batch`` (described by ``meta``)."""
        assert self.reading, "no read in flight"
        self.reading = False
        lsn = meta["ack_lsn"]
        if meta["changes"] or meta["snapshot_complete"] or meta.get("checkpoint"):
            entry = Entry(meta, batch)
            self.queue.append(entry)
            self.promised_lsn = max(self.promised_lsn, lsn or 0)
            return [Embed(entry)] if meta["to_embed"] else []
        if lsn and lsn > max(self.acked_lsn, self.promised_lsn):
            # An idle position is written like a batch (the writer records it),
            # behind the batches read before it, and acknowledged after that.
            self.queue.append(Entry(meta, batch))
            self.promised_lsn = lsn
        return []

    def on_read_failed(self) -> None:
        """The read in flight failed for good (a schema change): read no more, but
        write and acknowledge what was read before it (the driver loops until
        :attr:`drained`)."""
        assert self.reading, "no read in flight"
        self.reading = False
        self.stopping = True

    def on_applied(self, entry: Entry, result: Any) -> list[Action]:
        """The apply in flight finished; ``result.ack_lsn`` is the written batch's ack position.

        A failed write is not reported: the driver gives up the attempt, so
        nothing is acknowledged past the last successful write.
        """
        assert entry is self.applying, "not the apply in flight"
        self.applying = None
        lsn = result.ack_lsn
        if lsn and lsn > self.acked_lsn:
            # the next read carries it too; confirm now so the slot never lags a
            # finished write by a whole read timeout (or at all, when stopping)
            return [self._ack(lsn, confirm=self.reading or self.stopping)]
        return []

    def _ack(self, lsn: int, confirm: bool) -> Ack:
        self.acked_lsn = lsn
        self.pending_ack = lsn
        return Ack(lsn, confirm)
