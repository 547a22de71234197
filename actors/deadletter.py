"""Dead letters: changes the sink keeps rejecting, set aside so the slot can move on.

A change that fails on its own (the writer isolates it by splitting its batch,
see ``actors.writer``) and keeps failing after its retry budget is recorded here,
in the sink's own state documents, one per point: ``deadletter/<slot>/<point id>``
with the table, key, operation, commit LSN, the error line, the attempts and
when it was first and last seen.  The record is written by the writer *before*
the batch's position is recorded and acknowledged, so a change leaves the WAL
only once it is either in the index or in this store: nothing is lost, it is
only set aside (and ``embedcluster verify`` still reports the key).

``embedcluster deadletter list|retry|drop`` reads and resolves the records:
``retry`` writes the key's *current* row through the normal write path (the
same as ``verify --repair``), so a fixed cause (a wider column, a larger
request limit) needs no replay of the WAL.  A later change of the same key that
writes successfully resolves its record too.

The store holds at most ``max_entries`` records: past that, the writer stops
the pipeline on purpose (:class:`TooManyDeadLetters`) rather than set aside a
whole table because of a systematic error (a column too narrow for every row).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Protocol, Sequence

#: state-document name prefix of one slot's dead letters
PREFIX = "deadletter/{slot}/"


class StateStore(Protocol):
    """The part of a sink dead letters live in (every ``VectorSink`` has it)."""

    def get_state(self, name: str) -> dict[str, Any] | None: ...

    def set_state(self, name: str, value: dict[str, Any] | None) -> None: ...

    def list_states(self, prefix: str) -> dict[str, dict[str, Any]]: ...


class TooManyDeadLetters(RuntimeError):
    """More changes failed than the dead-letter store may hold: the pipeline stops on purpose."""

    permanent = True


@dataclass
class DeadLetter:
    """One change set aside.  ``op``: ``upsert``, ``payload`` (an update of payload only) or ``delete``."""

    point_id: str
    table: str
    key: list[Any]
    op: str
    lsn: int
    error: str
    attempts: int
    first_seen: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)

    def as_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "DeadLetter":
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


class DeadLetters:
    """One slot's dead letters in ``store`` (see the module docstring).

    The ids are kept in memory (at most ``max_entries``) so the writer can tell
    in O(1) whether a write resolves one; :meth:`load` refreshes them from the
    store, where ``embedcluster deadletter`` may have resolved some meanwhile.
    """

    def __init__(self, store: StateStore, slot: str, max_entries: int = 1000) -> None:
        self.store = store
        self.slot = slot
        self.prefix = PREFIX.format(slot=slot)
        self.max_entries = max_entries
        self.ids: set[str] = set()

    def name(self, point_id: str) -> str:
        return self.prefix + point_id

    def load(self) -> None:
        self.ids = {name[len(self.prefix):] for name in self.store.list_states(self.prefix)}

    def entries(self) -> list[DeadLetter]:
        """Every record, oldest first."""
        letters = [DeadLetter.from_doc(doc) for doc in self.store.list_states(self.prefix).values()]
        return sorted(letters, key=lambda d: (d.first_seen, d.table, str(d.key)))

    def __len__(self) -> int:
        return len(self.ids)

    def record(self, letter: DeadLetter) -> DeadLetter:
        """Write ``letter`` (merged with an earlier record of the same point); durable on return.

        Raises :class:`TooManyDeadLetters` instead when the store is full: the
        change is then neither written nor set aside, and nothing is acknowledged.
        """
        earlier = self.store.get_state(self.name(letter.point_id)) if letter.point_id in self.ids else None
        if earlier is None and len(self.ids) >= self.max_entries:
            raise TooManyDeadLetters(
                f"{len(self.ids)} changes of slot {self.slot} are dead-lettered already (pipeline.max_dead_letters = "
                f"{self.max_entries}), and {letter.table} key {letter.key} failed too: {letter.error}; fix the cause, "
                "then `embedcluster deadletter retry`, or raise pipeline.max_dead_letters, and restart"
            )
        if earlier is not None:
            letter.first_seen = float(earlier.get("first_seen") or letter.first_seen)
            letter.attempts += int(earlier.get("attempts") or 0)
        self.store.set_state(self.name(letter.point_id), letter.as_doc())
        self.ids.add(letter.point_id)
        return letter

    def holds(self, point_id: str) -> bool:
        """Whether ``point_id`` is set aside (asks the store: a CLI may have resolved it)."""
        if point_id not in self.ids:
            return False
        if self.store.get_state(self.name(point_id)) is None:
            self.ids.discard(point_id)
            return False
        return True

    def touch(self, point_id: str, lsn: int) -> None:
        """A later change of a set-aside point that cannot apply on its own (a payload update of
        a point the store lacks): noted on the record, which ``retry`` resolves with the current row."""
        doc = self.store.get_state(self.name(point_id))
        if doc is not None:
            doc.update(lsn=max(int(doc.get("lsn") or 0), lsn), last_seen=time.time())
            self.store.set_state(self.name(point_id), doc)

    def resolve(self, point_ids: Iterable[str]) -> int:
        """Remove the records of ``point_ids`` that are set aside (written fine now); returns how many."""
        done = 0
        for pid in [p for p in point_ids if p in self.ids]:
            self.store.set_state(self.name(pid), None)
            self.ids.discard(pid)
            done += 1
        return done


def select(letters: Sequence[DeadLetter], table: str | None = None, key: list[Any] | None = None) -> list[DeadLetter]:
    """The records of ``table`` (and ``key``), or all of them."""
    return [d for d in letters if (table is None or d.table == table) and (key is None or list(d.key) == list(key))]
