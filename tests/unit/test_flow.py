"""cluster/flow.py FlowControl, driven through scripted runs: no Ray, no threads.

A fake reader hands out a scripted change stream and replays it from the
slot's confirmed position after a restart, a fake embedder turns texts into
strings, and a fake writer keeps the sink as a dict (last change per key
wins).  A small deterministic driver does what ``PipelineCoordinator._pump``
does with Ray: it carries out the state machine's actions, lets one thing in
flight finish per step (chosen by a policy: the read, an embedding, or the
write once its vectors exist), and reports it back.

Every run checks, whenever a position is acknowledged or confirmed to the
slot, that every change at or below it is in the store, and that a run
interrupted anywhere (a crash, a failed write) ends, after its replay, in the
store of an uninterrupted run.
"""

from __future__ import annotations

import ast
import inspect
import random
from dataclasses import dataclass
from typing import Any, Callable

import pytest

import cluster.flow
from actors.changes import Change, ChangeBatch
from actors.writer import ApplyResult, OrderingError
from cluster.flow import Ack, Apply, Embed, FlowControl, Read

TABLE = "public.docs"


def up(key: str, value: int, lsn: int) -> Change:
    """An upsert; ``lsn`` is the commit LSN of its transaction (0: backfill)."""
    return Change("upsert", TABLE, (key,), text=f"{key}={value}", payload={}, lsn=lsn)


def rm(key: str, lsn: int) -> Change:
    return Change("delete", TABLE, (key,), lsn=lsn)


@dataclass
class Scripted:
    """One batch as the reader cuts it from the stream."""

    changes: list[Change]
    ack_lsn: int | None = None
    phase: str = "stream"
    snapshot_complete: bool = False


def batch(*changes: Change, ack: int | None = None, **kw: Any) -> Scripted:
    return Scripted(list(changes), ack, **kw)


# Backfill, then streaming with idle positions, a transaction over two batches
# (20) and a batch that ends one transaction (30) and begins the next (40).
SCRIPT = [
    batch(up("a", 1, 0), up("b", 1, 0), phase="backfill"),
    batch(up("c", 1, 0), phase="backfill"),
    batch(phase="backfill", snapshot_complete=True),
    batch(up("a", 2, 10), ack=10),
    batch(ack=12),  # idle: the server's position between transactions
    batch(up("b", 2, 20), up("d", 1, 20)),  # transaction 20 begins...
    batch(rm("c", 20), up("a", 3, 20), ack=20),  # ...and commits
    batch(up("d", 2, 30), up("e", 1, 40), ack=30),
    batch(up("e", 2, 40), ack=40),
    batch(ack=45),
    batch(rm("a", 50), up("b", 3, 50), ack=50),
    batch(up("a", 4, 60), ack=60),
]
END_LSN = 60


def meta_of(b: ChangeBatch) -> dict[str, Any]:
    """What CdcReaderActor.read_batch returns next to the batch."""
    upserts = [c for c in b.changes if c.op == "upsert"]
    return {
        "seq": b.seq, "changes": len(b.changes), "upserts": len(upserts),
        "to_embed": sum(1 for c in upserts if not c.text_unchanged),
        "ack_lsn": b.ack_lsn, "phase": b.phase, "snapshot_complete": b.snapshot_complete,
    }


def vector(change: Change) -> str:
    return f"vec({change.text})"


class Crash(Exception):
    """The coordinator and everything in flight are gone."""


class SinkDown(Exception):
    """A write failed."""


class World:
    """What outlives an attempt: the slot (its confirmed position) and the sink."""

    def __init__(self, script: list[Scripted]) -> None:
        self.script = script
        self.stream = [c for s in script for c in s.changes]
        self.order = {id(c): i for i, c in enumerate(self.stream)}
        self.reader = FakeReader(self)
        self.writer = FakeWriter()

    def check_written(self, lsn: int) -> None:
        """Every change with commit LSN <= ``lsn``, or a later change of its key, is in the store."""
        if not lsn:
            return  # nothing acknowledged
        latest: dict[str, Change] = {}
        for c in self.stream:
            if c.lsn <= lsn:
                latest[c.key[0]] = c
        for key, c in latest.items():
            stored = self.writer.store.get(key)
            assert stored is not None and self.order[id(stored[0])] >= self.order[id(c)], (
                f"{lsn} acknowledged, but {c} is not written (store has {stored and stored[0]})"
            )

    def expected_store(self) -> dict[str, tuple[Change, str | None]]:
        return {c.key[0]: (c, vector(c) if c.op == "upsert" else None) for c in self.stream}


class FakeReader:
    """The slot plus the reader: after ``start`` the stream resumes from the confirmed position."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.confirmed = 0  # the slot's confirmed_flush_lsn

    def start(self) -> None:
        # As PostgreSQL does: resend every transaction that commits after the
        # confirmed position; the snapshot too while nothing was confirmed.
        start = self.confirmed
        self.pending: list[Scripted] = []
        for s in self.world.script:
            changes = list(s.changes) if start == 0 else [c for c in s.changes if c.lsn > start]
            ack = s.ack_lsn if s.ack_lsn and s.ack_lsn > start else None
            if changes or ack or (s.snapshot_complete and start == 0):
                self.pending.append(Scripted(changes, ack, s.phase, s.snapshot_complete))
        self.seq = 0
        self.safe = 0  # as the real reader: only what this stream handed out counts
        self.end_seq: int | None = None  # first read past the end of the script

    def read_batch(self, ack_lsn: int | None) -> ChangeBatch:
        if ack_lsn:
            self.ack(ack_lsn)
        self.seq += 1
        if not self.pending:
            if self.end_seq is None:
                self.end_seq = self.seq
            return ChangeBatch(self.seq, [], ack_lsn=self.safe or None)
        s = self.pending.pop(0)
        self.safe = max(self.safe, s.ack_lsn or 0)
        return ChangeBatch(self.seq, s.changes, s.ack_lsn, s.phase, s.snapshot_complete)

    def ack(self, lsn: int) -> None:
        if lsn > self.confirmed:
            self.world.check_written(lsn)
            self.confirmed = lsn


class FakeEmbedder:
    def embed_batch(self, b: ChangeBatch) -> list[str] | None:
        texts = b.texts_to_embed()
        return [f"vec({t})" for t in texts] if texts else None


class FakeWriter:
    """The sink: point key -> (last change, its vector); fails the ``fail_on``-th apply."""

    def __init__(self) -> None:
        self.store: dict[str, tuple[Change, str | None]] = {}
        self.last_seq = 0
        self.applies = 0
        self.fail_on: int | None = None
        self.failed: ChangeBatch | None = None

    def open(self) -> None:
        self.last_seq = 0  # the restarted reader numbers batches from 1 again

    def apply(self, b: ChangeBatch, vectors: list[str] | None) -> ApplyResult:
        self.applies += 1
        if b.seq <= self.last_seq:
            raise OrderingError(f"batch {b.seq} after batch {self.last_seq}")
        if self.applies == self.fail_on:
            self.failed = b
            raise SinkDown(f"batch {b.seq}")
        upserts = [c for c in b.changes if c.op == "upsert"]
        assert (vectors or []) == [vector(c) for c in upserts], "vectors of another batch"
        for c in b.changes:
            self.store[c.key[0]] = (c, vector(c) if c.op == "upsert" else None)
        self.last_seq = b.seq
        return ApplyResult(b.seq, b.ack_lsn, len(upserts), len(b.changes) - len(upserts), b.snapshot_complete, 0.0)


class Vectors:
    """The handle an Embed hands out: the vectors once the embedding finished."""

    def __init__(self) -> None:
        self.done = False
        self.value: list[str] | None = None


# A policy picks what finishes next among ("read",), ("embed", entry), ("apply",)
Policy = Callable[[list[tuple]], tuple]


def randomly(seed: int) -> Policy:
    rng = random.Random(seed)
    return lambda options: rng.choice(options)


def prefer(*kinds: str, newest_embedding_first: bool = False) -> Policy:
    def pick(options: list[tuple]) -> tuple:
        for kind in kinds:
            found = [o for o in options if o[0] == kind]
            if found:
                return found[-1] if kind == "embed" and newest_embedding_first else found[0]
        raise AssertionError(f"no option of {kinds} in {options}")
    return pick


class Attempt:
    """One run of the coordinator's loop over FlowControl, as ``_pump`` does with Ray."""

    def __init__(self, world: World, window: int, acked_lsn: int, policy: Policy,
                 crash_at: int | None = None, stop_at: int | None = None,
                 on_step: Callable[[Attempt], None] | None = None) -> None:
        self.world = world
        self.window = window
        self.policy = policy
        self.crash_at = crash_at
        self.stop_at = stop_at
        self.on_step = on_step
        self.embedder = FakeEmbedder()
        world.reader.start()
        world.writer.open()
        self.flow = FlowControl(window, acked_lsn)
        self.read: ChangeBatch | None = None  # what the read in flight returns
        self.embedding: list[Any] = []  # entries whose vectors are being computed
        self.applying: Any = None
        self.steps = 0
        self.stop_requested = False
        self.actions: list[Any] = []  # every action, in order, and ("written", ack_lsn) after each write
        self.last_ack = 0
        self.read_seqs: list[int] = []  # batches returned that carry changes or the snapshot marker
        self.written_seqs: list[int] = []
        self.embedded_seqs: list[int] = []
        self.most_between = 0  # most batches read and not yet written at once

    def execute(self, actions: list[Any]) -> None:
        reader = self.world.reader
        for action in actions:
            self.actions.append(action)
            if isinstance(action, Read):
                assert not self.flow.stopping and self.read is None
                self.read = reader.read_batch(action.ack_lsn)
            elif isinstance(action, Embed):
                action.entry.vectors = Vectors()
                self.embedding.append(action.entry)
            elif isinstance(action, Apply):
                assert self.applying is None, "two applies in flight"
                self.applying = action.entry
            elif isinstance(action, Ack):
                assert action.lsn > self.last_ack, "acknowledged positions only advance"
                self.last_ack = action.lsn
                self.world.check_written(action.lsn)
                if action.confirm:
                    reader.ack(action.lsn)

    def options(self) -> list[tuple]:
        found: list[tuple] = [("read",)] if self.read is not None else []
        found += [("embed", e) for e in self.embedding]
        if self.applying is not None and (self.applying.vectors is None or self.applying.vectors.done):
            found.append(("apply",))
        return found

    def run(self) -> None:
        flow, reader = self.flow, self.world.reader
        while True:
            if self.stop_requested or self.steps == self.stop_at:
                flow.stop()
            if flow.drained:
                break
            self.execute(flow.next_actions())
            self.most_between = max(self.most_between, len(self.read_seqs) - len(self.written_seqs))
            assert self.most_between <= self.window and flow.inflight <= self.window
            options = self.options()
            assert options, "nothing in flight, yet not drained"
            choice = self.policy(options)
            self.steps += 1
            if choice[0] == "read":
                b, self.read = self.read, None
                if self.steps == self.crash_at:
                    raise Crash
                if b.changes or b.snapshot_complete:
                    self.read_seqs.append(b.seq)
                if reader.end_seq is not None and b.seq >= reader.end_seq:
                    self.stop_requested = True  # caught up: stop, as a user would
                self.execute(flow.on_read(meta_of(b), b))
            elif choice[0] == "embed":
                entry = choice[1]
                self.embedding.remove(entry)
                entry.vectors.value = self.embedder.embed_batch(entry.batch)
                entry.vectors.done = True
                self.embedded_seqs.append(entry.batch.seq)
                if self.steps == self.crash_at:
                    raise Crash
            else:
                entry, self.applying = self.applying, None
                vectors = entry.vectors.value if entry.vectors is not None else None
                result = self.world.writer.apply(entry.batch, vectors)  # SinkDown ends the attempt
                if entry.batch.changes or entry.batch.snapshot_complete:
                    self.written_seqs.append(entry.batch.seq)
                self.actions.append(("written", entry.batch.ack_lsn))
                if self.steps == self.crash_at:
                    raise Crash  # written, but the ack is lost
                self.execute(flow.on_applied(entry, result))
            if self.on_step is not None:
                self.on_step(self)
        if flow.acked_lsn:
            reader.ack(flow.acked_lsn)


@dataclass
class Outcome:
    world: World
    attempts: list[Attempt]


def run_pipeline(script: list[Scripted] = SCRIPT, window: int = 3, policy: Policy | None = None,
                 crashes: tuple[int, ...] = (), fail_on: int | None = None, resume: str = "coordinator",
                 stop_at: int | None = None, on_step: Callable[[Attempt], None] | None = None) -> Outcome:
    """Run until caught up; after a crash or failed write start over, as ``PipelineCoordinator.run`` does.

    ``resume="coordinator"``: the coordinator survived and keeps its acked
    position; ``"fresh"``: a new coordinator starts from 0.
    """
    world = World(script)
    world.writer.fail_on = fail_on
    policy = policy or randomly(1)
    attempts: list[Attempt] = []
    acked = 0
    while True:
        crash_at = crashes[len(attempts)] if len(attempts) < len(crashes) else None
        attempt = Attempt(world, window, acked if resume == "coordinator" else 0, policy, crash_at, stop_at, on_step)
        attempts.append(attempt)
        try:
            attempt.run()
            return Outcome(world, attempts)
        except (Crash, SinkDown):
            acked = attempt.flow.acked_lsn
            # nothing in flight was acknowledged
            world.check_written(acked)
            world.check_written(world.reader.confirmed)
        assert len(attempts) < 10


def assert_caught_up(outcome: Outcome) -> None:
    world = outcome.world
    assert world.writer.store == CLEAN.world.writer.store == world.expected_store()
    assert world.reader.confirmed == END_LSN


CLEAN = run_pipeline()
CLEAN_STEPS = CLEAN.attempts[0].steps


def test_flow_module_does_not_import_ray():
    tree = ast.parse(inspect.getsource(cluster.flow))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "ray" not in imported


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("window", [1, 2, 3, 8])
def test_uninterrupted_run_writes_everything_in_read_order(seed, window):
    outcome = run_pipeline(window=window, policy=randomly(seed))
    (attempt,) = outcome.attempts
    assert attempt.written_seqs == attempt.read_seqs  # FIFO; the writer also refuses a lower seq
    assert_caught_up(outcome)
    acks = [a.lsn for a in attempt.actions if isinstance(a, Ack)]
    assert acks == sorted(set(acks)) and acks[-1] == END_LSN


@pytest.mark.parametrize("resume", ["coordinator", "fresh"])
@pytest.mark.parametrize("n", range(1, CLEAN_STEPS + 1), ids=lambda n: f"step{n}")
def test_abort_at_every_step_replays_to_the_same_store(n, resume):
    outcome = run_pipeline(crashes=(n,), resume=resume)
    assert len(outcome.attempts) == 2
    assert_caught_up(outcome)


@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("n", range(1, CLEAN_STEPS + 1), ids=lambda n: f"step{n}")
def test_second_abort_during_the_replay_still_converges(n, m):
    outcome = run_pipeline(crashes=(n, m))
    assert len(outcome.attempts) >= 2
    assert_caught_up(outcome)


@pytest.mark.parametrize("k", range(1, CLEAN.world.writer.applies + 1))
def test_failed_apply_acks_nothing_past_the_last_write_and_replays(k):
    outcome = run_pipeline(fail_on=k)
    failed = outcome.world.writer.failed
    assert failed is not None
    # nothing of the failed batch was acknowledged (run_pipeline also checked
    # the store against the acked and the confirmed position at the failure)
    acked = outcome.attempts[0].flow.acked_lsn
    assert all(c.lsn > acked for c in failed.changes if c.lsn)
    assert_caught_up(outcome)


def test_embeddings_finishing_out_of_order_are_applied_in_read_order():
    # reads first, then the newest embedding: batch n+1's vectors are ready before batch n's
    outcome = run_pipeline(window=4, policy=prefer("read", "embed", "apply", newest_embedding_first=True))
    (attempt,) = outcome.attempts
    assert attempt.embedded_seqs != sorted(attempt.embedded_seqs), "the scenario must embed out of order"
    applies = [a.entry.batch.seq for a in attempt.actions if isinstance(a, Apply)]
    assert applies == sorted(applies)
    assert attempt.written_seqs == attempt.read_seqs
    assert_caught_up(outcome)


IDLE_SCRIPT = [
    batch(up("a", 1, 10), ack=10),
    batch(ack=15),
    batch(ack=17),
    batch(up("b", 1, 20), ack=20),
    batch(ack=25),
    batch(up("a", 2, 30), up("c", 1, 30), ack=30),
    batch(ack=35),
    batch(up("b", 2, 60), ack=60),
]


@pytest.mark.parametrize("window", [2, 3, 8])
def test_idle_positions_read_while_batches_are_in_flight_wait_for_them(window):
    # reads first, writes last: every idle position arrives while a batch is unwritten
    outcome = run_pipeline(IDLE_SCRIPT, window=window, policy=prefer("read", "embed", "apply"))
    (attempt,) = outcome.attempts
    acks = [a.lsn for a in attempt.actions if isinstance(a, Ack)]
    idle_applies = [a for a in attempt.actions if isinstance(a, Apply) and not a.entry.meta["changes"]]
    assert idle_applies, "the scenario must queue an idle position behind a batch"
    assert {15, 17, 25, 35} & set(acks)  # acknowledged, once the batches before them are written
    # each ack follows the write of the batch (or idle entry) that carries it
    written_acks: list[int | None] = []
    for action in attempt.actions:
        if isinstance(action, tuple):
            written_acks.append(action[1])
        elif isinstance(action, Ack):
            assert action.lsn in written_acks, f"{action.lsn} acknowledged before it was written"
    assert outcome.world.writer.store == outcome.world.expected_store()
    assert outcome.world.reader.confirmed == 60


def test_idle_position_is_acked_once_the_writer_recorded_it():
    flow = FlowControl(window=3, acked_lsn=5)
    idle = {"changes": 0, "to_embed": 0, "snapshot_complete": False}
    assert flow.next_actions() == [Read(None)]
    assert flow.on_read({**idle, "ack_lsn": 9}, "b1") == []  # not acknowledged yet
    read2, apply1 = flow.next_actions()
    assert read2 == Read(None) and isinstance(apply1, Apply) and apply1.entry.batch == "b1"
    assert flow.on_read({**idle, "ack_lsn": 9}, "b2") == []  # not again: already on its way
    assert flow.on_applied(apply1.entry, ApplyResult(1, 9, 0, 0, False, 0.0)) == [Ack(9)]
    assert flow.next_actions() == [Read(9)]  # rides on the next read
    assert flow.on_read({**idle, "ack_lsn": None}, "b3") == []
    assert flow.inflight == 0 and flow.acked_lsn == 9


TXN_SCRIPT = [
    batch(up("a", 1, 10), ack=10),
    batch(up("b", 1, 20), up("c", 1, 20)),  # transaction 20 begins
    batch(up("d", 1, 20), rm("a", 20)),  # still inside it
    batch(up("e", 1, 20), ack=20),  # its commit
    batch(up("a", 2, 60), ack=60),
]


def _inside_the_transaction_only_its_start_is_acked(attempt: Attempt) -> None:
    # while the batch with the commit of transaction 20 ("e") is unwritten,
    # neither the coordinator nor the slot passes 10 (whatever of b, c, d is written)
    if "e" not in attempt.world.writer.store:
        assert attempt.flow.acked_lsn <= 10 and attempt.world.reader.confirmed <= 10


@pytest.mark.parametrize("n", [None, *range(1, 16)])
def test_transaction_spanning_batches_is_not_acked_inside(n):
    outcome = run_pipeline(TXN_SCRIPT, policy=randomly(3), crashes=() if n is None else (n,),
                           on_step=_inside_the_transaction_only_its_start_is_acked)
    for attempt in outcome.attempts:
        assert {a.lsn for a in attempt.actions if isinstance(a, Ack)} <= {10, 20, 60}
    assert outcome.world.writer.store == outcome.world.expected_store()
    assert outcome.world.reader.confirmed == 60


BACKLOG = [batch(up(f"k{i % 5}", i, 10 * i), ack=10 * i) for i in range(1, 21)]


@pytest.mark.parametrize("window", [1, 2, 4])
def test_backpressure_never_more_than_window_between_read_and_written(window):
    # a backlog, reads preferred, embeddings slowest: the window fills and stays full
    outcome = run_pipeline(BACKLOG, window=window, policy=prefer("read", "apply", "embed"))
    (attempt,) = outcome.attempts
    assert attempt.most_between == window  # reached, never passed (Attempt.run asserts each step)
    reads = [a for a in attempt.actions if isinstance(a, Read)]
    assert len(reads) == len(BACKLOG) + 1  # one read per batch, plus the one that found the end
    assert outcome.world.writer.store == outcome.world.expected_store()
    assert outcome.world.reader.confirmed == 200


def test_stop_drains_what_is_in_flight_and_reads_no_more():
    # stop once the window is full: three batches read, none written yet
    window = 3
    outcome = run_pipeline(BACKLOG, window=window, policy=prefer("read", "embed", "apply"), stop_at=window)
    (attempt,) = outcome.attempts
    assert attempt.flow.drained
    reads = [i for i, a in enumerate(attempt.actions) if isinstance(a, Read)]
    assert len(reads) == window
    assert attempt.written_seqs == attempt.read_seqs == [1, 2, 3]
    acks = [a for a in attempt.actions if isinstance(a, Ack)]
    assert [a.lsn for a in acks] == [10, 20, 30]
    assert all(a.confirm for a in acks)  # stopping: confirmed at once, no read will carry them
    assert outcome.world.reader.confirmed == 30
    assert set(outcome.world.writer.store) == {"k1", "k2", "k3"}


def test_a_write_finishing_during_a_read_is_confirmed_at_once():
    flow = FlowControl(window=2)
    meta = {"changes": 1, "to_embed": 0, "snapshot_complete": False, "ack_lsn": 10}
    assert flow.next_actions() == [Read(None)]
    assert flow.on_read(meta, "b1") == []
    read2, apply1 = flow.next_actions()
    assert read2 == Read(None) and isinstance(apply1, Apply) and apply1.entry.batch == "b1"
    # the write finishes while the second read is in flight: confirm now
    assert flow.on_applied(apply1.entry, ApplyResult(1, 10, 1, 0, False, 0.0)) == [Ack(10, confirm=True)]
    assert flow.on_read({**meta, "ack_lsn": 20}, "b2") == []
    read3, apply2 = flow.next_actions()
    assert read3 == Read(10)  # ...and the next read carries it too
    assert flow.on_read({**meta, "changes": 0, "ack_lsn": None}, "b3") == []
    # no read in flight: the next read carries it, soon enough
    assert flow.on_applied(apply2.entry, ApplyResult(2, 20, 1, 0, False, 0.0)) == [Ack(20, confirm=False)]
    assert flow.next_actions() == [Read(20)]


def test_embedding_is_requested_only_for_batches_with_texts_to_embed():
    flow = FlowControl(window=4)
    flow.next_actions()
    (embed,) = flow.on_read({"changes": 2, "to_embed": 1, "snapshot_complete": False, "ack_lsn": None}, "b1")
    assert isinstance(embed, Embed) and embed.entry.batch == "b1"
    flow.next_actions()
    assert flow.on_read({"changes": 2, "to_embed": 0, "snapshot_complete": False, "ack_lsn": None}, "b2") == []
    flow.next_actions()
    # the snapshot marker carries no change, but it must be written (it completes the backfill)
    assert flow.on_read({"changes": 0, "to_embed": 0, "snapshot_complete": True, "ack_lsn": None}, "b3") == []
    assert [e.batch for e in flow.queue] == ["b2", "b3"]
    flow.next_actions()
    # a chunked backfill's checkpoint (its chunk's rows all dropped: the stream changed them) as well
    assert flow.on_read({"changes": 0, "to_embed": 0, "snapshot_complete": False, "checkpoint": True,
                         "ack_lsn": None}, "b4") == []
    assert [e.batch for e in flow.queue] == ["b2", "b3", "b4"]


def test_a_read_that_fails_for_good_drains_what_was_read_and_reads_no_more():
    # a schema change: the batches read before it are written and acknowledged, nothing is read after it
    flow = FlowControl(window=3)
    meta = {"changes": 1, "to_embed": 0, "snapshot_complete": False, "ack_lsn": 10}
    assert flow.next_actions() == [Read(None)]
    assert flow.on_read(meta, "b1") == []
    read2, apply1 = flow.next_actions()
    assert isinstance(read2, Read) and isinstance(apply1, Apply)
    flow.on_read_failed()
    assert flow.stopping and not flow.drained  # b1 is still being written
    assert flow.next_actions() == []  # no new read
    assert flow.on_applied(apply1.entry, ApplyResult(1, 10, 1, 0, False, 0.0)) == [Ack(10, confirm=True)]
    assert flow.drained and flow.acked_lsn == 10
