"""The coordinator: moves batches reader -> embedders -> writer and acks the slot.

What to read, embed, write and acknowledge when is decided by
``cluster.flow.FlowControl`` (and nowhere else; its docstring has the rules):
at most ``max_inflight_batches`` batches between "read" and "written", one
write at a time in read order, and the slot confirmed only up to what is
written.  The loop here only turns its actions into Ray calls and the
results of those calls into its events.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import ray

from actors.changes import format_lsn
from actors.logs import error_line, setup_logging
from actors.retry import Backoff
from actors.source_schema import connect, lag_warning, slot_info
from cluster.autoscale import AutoscalePolicy, EmbeddingPool, PoolAutoscaler
from cluster.config import Config
from cluster.flow import Ack, Action, Apply, Embed, Entry, FlowControl, Read
from serve_apps.metrics import FRESHNESS_BUCKETS, Histogram

log = logging.getLogger(__name__)

NAMESPACE = "embedcluster"
PIPELINE_ACTOR = "pipeline"
WRITER_ACTOR = "writer"
READ_TIMEOUT_S = 0.2  # how long an idle read waits for a change
RATE_WINDOW_S = 10.0  # changes_per_second: over this many seconds
LAG_WARNING_INTERVAL_S = 60.0  # at most one WARNING a minute while the slot lags past source.max_lag_bytes


def _marked(exc: BaseException, flag: str) -> bool:
    """Whether ``exc``, or an error it wraps (a Ray call's ``cause``), has ``flag`` set."""
    while True:
        if getattr(exc, flag, False):
            return True
        cause = getattr(exc, "cause", None)
        if cause is None or cause is exc:
            return False
        exc = cause


def is_permanent(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error a Ray call wraps) says retrying cannot help (``permanent = True``)."""
    return _marked(exc, "permanent")


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error a Ray call wraps) must end the run (``fatal = True``):
    permanent, and nothing is left to serve for (no publication, the slot taken or
    dropped by someone else).  A schema change is permanent but not fatal: the
    pipeline halts and search keeps serving until the config is fixed."""
    return _marked(exc, "fatal")


#: the coordinator's state after a fatal error: ``embedcluster run`` exits with ``last_error``
FAILED = "failed"


class StoreBehind(RuntimeError):
    """The store missed changes the slot has confirmed; refused by ``pipeline.on_store_behind``."""

    permanent = True


def store_behind(state: dict[str, Any], slot: dict[str, Any]) -> str | None:
    """Why the store must not resume from the slot (one line), or None when it may.

    The writer records the WAL position the store reflects before any position
    is confirmed to the slot, so a store whose position is behind the slot's
    confirmed one missed changes: restored from a backup, another store given
    the same collection/table, or a slot dropped and created again.  A store
    that followed another server or database is not this slot's either.  A
    store from before positions were recorded has neither; it is trusted, and
    records them from now on.
    """
    theirs, ours = state.get("identity") or {}, slot["identity"]
    for key, what in (("system_id", "PostgreSQL server (system identifier)"), ("database", "database")):
        if theirs.get(key) and theirs[key] != ours[key]:
            return f"the store followed another {what}: {theirs[key]}, not {ours[key]}"
    position, confirmed = state.get("position"), slot["confirmed_lsn"]
    if position is not None and confirmed is not None and int(position) < confirmed:
        return (f"the store reflects changes up to {format_lsn(int(position))} but slot {ours['slot']} has confirmed "
                f"{format_lsn(confirmed)}: it missed the changes between (a store restored from a backup, another "
                "store, or a slot created again)")
    return None


def apply_partitioned(writer: Any, partition_writers: list[Any], batch: Any, vectors: Any,
                      generation: int | None) -> ray.ObjectRef:
    """Start writing one batch; the returned ref completes once every partition is durable.

    With partitioned writers (``[sink] writers``, actors/writer.py) each writer gets the
    batch and writes its share of the keys, all at once; the primary is handed the
    others' refs and records the position only after they completed, so an acknowledged
    position is durable in every partition.  The caller starts the next batch only after
    that (one apply in flight: cluster/flow.py), so no partition runs ahead of the
    primary's bookkeeping.  ``generation``: what the primary stamps points with (the
    others are told it here).
    """
    if not partition_writers:
        return writer.apply.remote(batch, vectors)
    count = len(partition_writers) + 1
    others = [w.apply.remote(batch, vectors, (i, count), generation) for i, w in enumerate(partition_writers, start=1)]
    return writer.apply.remote(batch, vectors, (0, count), generation, others)


class PipelineCoordinator:
    """Drives one pipeline.  Plain class; ``PipelineActor`` runs it in the cluster."""

    def __init__(self, config: Config, reader: Any, embedders: list[Any], writer: Any, dimension: int,
                 partition_writers: list[Any] | None = None, embedder_factory: Any = None) -> None:
        self.config = config
        self.dimension = dimension
        self.reader = reader
        #: the embedding actors; with [embedding] min_actors < max_actors the autoscaler resizes it
        #: each turn (cluster/autoscale.py), creating actors with ``embedder_factory``
        self.pool = EmbeddingPool(embedder_factory, handles=embedders)
        emb = config.embedding
        # without a factory (a coordinator built by hand) the pool keeps the actors it was given
        low, high = (emb.pool_min, emb.pool_max) if embedder_factory is not None else (max(1, len(embedders)),) * 2
        self.autoscaler = PoolAutoscaler(self.pool, AutoscalePolicy(
            low, high, target=len(embedders), trend_window_s=emb.scale_up_after_s,
            grow_cooldown_s=1.5 * emb.scale_up_after_s, shrink_after_idle_s=emb.scale_down_after_s))
        #: the primary writer (partition 0 of ``[sink] writers``: the bookkeeping, searches, verify)
        self.writer = writer
        #: writers 1..W-1 of partitioned writers (actors/writer.py), each with its share of the keys
        self.partition_writers = list(partition_writers or [])
        #: the generation the primary stamps points with; the partition writers are told it per batch
        self._generation: int | None = None
        self.slot = config.source.slot
        self.window = config.inflight_batches
        self._stop = threading.Event()
        self.state = "starting"
        self.last_error: str | None = None
        self.rows_applied = 0
        self.backfill_rows = 0
        #: {"rows", "estimate"} of the snapshot being backfilled (None: no backfill in this run)
        self.backfill_total: dict[str, Any] | None = None
        self._backfill_since = 0.0
        self._backfill_rows_before = 0
        self._backfill_took: float | None = None
        self.batches_applied = 0
        self.acked_lsn = 0
        # notified whenever acked_lsn advances (wait_acked)
        self._acked_changed = threading.Condition()
        self.errors = 0
        #: changes set aside by the writer (in the store now; see actors/deadletter.py)
        self.dead_letters = 0
        self._slot_stats: dict[str, Any] = {"confirmed_lsn": None, "lag_bytes": None, "lag_warning": None}
        self._stats_conn = None
        self._stats_at = 0.0
        self._stats_lock = threading.Lock()  # stats() may refresh too, from the actor's other threads
        self._lag_warned_at: float | None = None  # last WARNING about the lag (at most one a minute)
        self._stats_failing = False  # the slot status could not be read last time (warned once)
        #: commit -> written, per batch that completes a transaction (``/metrics``)
        self.freshness = Histogram(FRESHNESS_BUCKETS)
        #: (monotonic time, rows_applied) after each batch of the last RATE_WINDOW_S seconds
        self._rate_window: collections.deque[tuple[float, int]] = collections.deque()

    # -- start-up -------------------------------------------------------------

    def _start_source(self) -> None:
        """Resume the slot if its backfill completed, else take a fresh snapshot."""
        tables = sorted(t.name for t in self.config.tables)
        # Idempotent; after a failure the writer may be a restarted actor whose
        # sink is not open yet, and its batch sequence starts over with the reader's.
        ray.get([w.open.remote(self.dimension) for w in self.writers])
        self._generation = None
        state = ray.get(self.writer.backfill_state.remote())
        slot = ray.get(self.reader.slot_status.remote())
        # a table added to the config is backfilled beside the resumed stream (below); one
        # removed, or a store of other tables, is not this one's: it is indexed afresh
        resume = slot["exists"] and state is not None and set(state.get("tables", [])) <= set(tables)
        behind = store_behind(state, slot) if resume else None
        if behind:
            if self.config.pipeline.on_store_behind == "refuse":
                raise StoreBehind(
                    f"{behind}; not resuming (pipeline.on_store_behind = 'refuse'): point sink at the store that "
                    "followed this slot, or set pipeline.on_store_behind = 'backfill' to index it again"
                )
            log.warning("slot %s: %s; backfilling again (pipeline.on_store_behind = 'backfill')", self.slot, behind)
            resume = False
        added = sorted(set(tables) - set(state.get("tables", []))) if resume else []
        if resume and not state.get("backfill_complete"):
            # A chunked backfill under way: the stream resumes from the slot, the chunks from
            # the plan stored with the last one written (an empty plan: none was).
            self._generation = ray.get(self.writer.resume_backfill.remote())
            plan = state.get("plan") or {}
            info = ray.get(self.reader.start.remote(False, plan, state.get("backfill_tables") or state.get("tables")))
            self._began_backfill(info, int(plan.get("rows") or 0))
            log.info("slot %s: resuming stream and backfill", self.slot)
            self._backfill_added(added)
            return
        if resume:
            ray.get(self.reader.start.remote(False))
            self.state = "streaming"
            log.info("slot %s: resuming stream", self.slot)
            self._backfill_added(added)
            return
        # Writer first: it must forget the old completion marker before any
        # row is written, so a crash mid-backfill backfills again (a snapshot
        # from its start; chunks from the last one stored).
        chunked = self.config.source.backfill_mode == "chunks"
        self._generation = ray.get(
            self.writer.begin_backfill.remote(tables, self.config.source.publication, slot["identity"], chunked))
        info = ray.get(self.reader.start.remote(True))
        # a fresh backfill is written from its first row again: progress starts over
        self._began_backfill(info, 0)
        log.info("slot %s: backfill %s at %s", self.slot, "in key chunks from" if chunked else "from snapshot",
                 info.get("consistent_lsn"))

    def _backfill_added(self, added: list[str]) -> None:
        if not added:
            return
        # through the WAL, like `embedcluster backfill`: where the stream reaches the request,
        # the new tables' chunks start (a crash before that replays it)
        ray.get(self.reader.request_backfill.remote(added))
        log.info("slot %s: %s added to the config: backfilling beside the stream", self.slot, ", ".join(added))

    def _began_backfill(self, info: dict[str, Any], rows: int, state: str = "backfilling") -> None:
        self.backfill_rows = rows
        self._backfill_rows_before = rows  # written by an earlier run (a resumed chunked backfill)
        self.backfill_total = info.get("backfill_total")
        self._backfill_since = time.monotonic()
        self._backfill_took = None
        self.state = state

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`stop`; restarts from the slot after any failure."""
        backoff = Backoff(base=0.5, cap=self.config.pipeline.max_retry_delay_s)
        while not self._stop.is_set():
            acked_before = self.acked_lsn
            try:
                self._start_source()
                self._pump()
                break  # clean stop
            except Exception as exc:  # noqa: BLE001 - recover by replaying from the slot
                if self._stop.is_set():
                    # stopping while the sink was away: what was not written stays
                    # unacknowledged, and the next start replays it from the slot
                    log.warning("slot %s: stopped before the write in flight finished (%s); it is replayed "
                                "from confirmed LSN %s on the next start", self.slot, error_line(exc),
                                format_lsn(self.acked_lsn or None))
                    try:
                        ray.get(self.reader.close.remote(), timeout=10)
                    except Exception:  # noqa: BLE001
                        pass
                    break
                self.errors += 1
                if self.acked_lsn > acked_before:
                    backoff.reset()  # it had recovered: this is a new failure, retried soon
                if is_permanent(exc):
                    # Replaying cannot help (a schema change, say): stop on purpose,
                    # keep answering stats and searches, say why and how to fix it.
                    # A fatal one (the slot dropped or taken, no publication) ends the
                    # run: cluster/runtime.py exits when it sees FAILED.
                    self.last_error = error_line(exc)
                    self.state = FAILED if is_fatal(exc) else "halted"
                    log.error("slot %s: pipeline stopped: %s", self.slot, self.last_error)
                    try:
                        ray.get(self.reader.close.remote(), timeout=10)
                    except Exception:  # noqa: BLE001
                        pass
                    return
                self.last_error = error_line(exc, with_type=True)
                self.state = "recovering"
                delay = backoff.next()
                log.error(
                    "slot %s: pipeline failed (%s); replaying from confirmed LSN %s in %.1f s",
                    self.slot, self.last_error, format_lsn(self.acked_lsn or None), delay,
                )
                try:
                    ray.get(self.reader.close.remote(), timeout=10)
                except Exception:  # noqa: BLE001
                    pass
                if self._stop.wait(delay):
                    break
        self.state = "stopped"

    def _pump(self) -> None:
        cfg = self.config
        flow = FlowControl(self.window, self.acked_lsn)
        halt: Exception | None = None  # a permanent error of the reader, raised once drained
        read: tuple[ray.ObjectRef, ray.ObjectRef] | None = None  # (meta, batch) of the read in flight
        applying: tuple[Entry, ray.ObjectRef] | None = None

        def execute(actions: list[Action]) -> None:
            nonlocal read, applying
            for action in actions:
                if isinstance(action, Read):
                    read = self.reader.read_batch.remote(cfg.source.max_batch_changes, READ_TIMEOUT_S, action.ack_lsn)
                elif isinstance(action, Embed):
                    action.entry.vectors = self.pool.submit(action.entry.batch)
                elif isinstance(action, Apply):
                    # the writer waits for the vectors ref itself
                    applying = (action.entry, self._apply(action.entry))
                elif isinstance(action, Ack):
                    self._advance_acked(action.lsn)
                    if action.confirm:
                        self.reader.ack.remote(action.lsn)

        interrupted = False
        while True:
            if self._stop.is_set():
                flow.stop()
                if applying is not None and not interrupted:
                    # a write waiting for an absent sink gives up (unacknowledged: replayed
                    # on the next start); a write that succeeds is not affected
                    for writer in self.writers:
                        writer.interrupt.remote()
                    interrupted = True
            if flow.drained:
                break
            execute(flow.next_actions())
            waits = [r for r in (read[0] if read else None, applying[1] if applying else None) if r is not None]
            if not waits:
                continue
            ready, _ = ray.wait(waits, num_returns=1, timeout=1.0)
            self._refresh_slot_stats()
            # also forgets the pool's finished calls (their refs would pin vectors in the object store)
            self.autoscaler.step(self._slot_stats.get("lag_bytes"))
            if not self.autoscaler.policy.fixed:
                # the window follows the pool: 2 batches per actor (unless set), as at start
                flow.window = cfg.pipeline.max_inflight_batches or 2 * len(self.pool) + 2
            if read is not None and read[0] in ready:
                meta_ref, batch_ref = read
                read = None
                try:
                    meta = ray.get(meta_ref)
                except Exception as exc:  # noqa: BLE001
                    if not is_permanent(exc):
                        raise
                    # Write and confirm everything read before it, then stop:
                    # the slot then sits right before the change that stopped us.
                    halt = halt or exc
                    flow.on_read_failed()
                    continue
                execute(flow.on_read(meta, batch_ref))
            if applying is not None and applying[1] in ready:
                entry, ref = applying
                result = ray.get(ref)  # raises if the write failed: nothing is acked then
                applying = None
                self._applied(entry, result)
                execute(flow.on_applied(entry, result))
        if self.acked_lsn:
            ray.get(self.reader.ack.remote(self.acked_lsn))
        if halt is not None:
            raise halt
        ray.get(self.reader.close.remote())
        log.info("slot %s: stopped after confirming %s", self.slot, format_lsn(self.acked_lsn or None))

    @property
    def writers(self) -> list[Any]:
        """Every writer: the primary first."""
        return [self.writer, *self.partition_writers]

    def _apply(self, entry: Entry) -> ray.ObjectRef:
        """Start writing ``entry`` (see :func:`apply_partitioned`); a batch that acts on whole
        tables (``barrier``), or holds no change, goes to the primary alone."""
        whole = bool(entry.meta.get("barrier") or not entry.meta["changes"])
        return apply_partitioned(self.writer, [] if whole else self.partition_writers, entry.batch, entry.vectors,
                                 self._generation)

    def _advance_acked(self, lsn: int) -> None:
        with self._acked_changed:
            self.acked_lsn = lsn
            self._acked_changed.notify_all()

    def wait_acked(self, lsn: int, timeout: float) -> int:
        """Block until every change up to ``lsn`` is durably written (and being
        confirmed to the slot); returns the acknowledged LSN then (>= ``lsn``),
        or 0 if ``timeout`` s passed first.

        For callers that need "caught up to this commit" without polling the
        slot or the sink (benchmarks, tests): a blocked waiter costs no CPU.
        """
        deadline = time.monotonic() + timeout
        with self._acked_changed:
            while self.acked_lsn < lsn:
                left = deadline - time.monotonic()
                if left <= 0:
                    return 0
                self._acked_changed.wait(left)
            return self.acked_lsn

    def _applied(self, entry: Entry, result: Any) -> None:
        self.dead_letters = result.dead_letters
        self._generation = result.generation
        rows = result.upserts + result.deletes
        self.rows_applied += rows
        commit_time = entry.meta.get("commit_time")
        if commit_time is not None and rows:
            # commit (the source's clock) -> written durably, i.e. acknowledgeable: what a reader of the
            # index waits for a row.  Clocks of different machines may differ: never below 0.
            self.freshness.observe(max(0.0, time.time() - commit_time))
        now = time.monotonic()
        self._rate_window.append((now, self.rows_applied))
        while len(self._rate_window) > 2 and now - self._rate_window[1][0] > RATE_WINDOW_S:
            self._rate_window.popleft()
        self.batches_applied += 1
        begin = entry.meta.get("backfill_begin")
        if begin:
            # A backfill requested while streaming (embedcluster backfill, a table added): the
            # index keeps serving meanwhile, so the state (and /healthz) stays "streaming";
            # /stats shows its progress.
            if self.state == "streaming" or self.backfill_total is None:
                self._began_backfill({"backfill_total": begin["total"]}, 0, state=self.state)
            else:  # joins the one under way
                self.backfill_total = {"rows": self.backfill_total["rows"] + begin["total"]["rows"],
                                       "estimate": self.backfill_total.get("estimate") or begin["total"]["estimate"]}
            log.info("slot %s: backfilling %s beside the stream", self.slot, ", ".join(begin["tables"]))
        if entry.meta["phase"] == "backfill":
            self.backfill_rows += rows
        else:  # rows of a chunked backfill, handed out between the stream's changes
            self.backfill_rows += entry.meta.get("backfill_rows", 0)
        if result.snapshot_complete:
            self._backfill_took = time.monotonic() - self._backfill_since
            self.state = "streaming"
            log.info("slot %s: backfill written (%d rows); streaming", self.slot, self.backfill_rows)

    # -- status -------------------------------------------------------------------

    def _refresh_slot_stats(self, force: bool = False) -> None:
        with self._stats_lock:
            now = time.monotonic()
            if not force and now - self._stats_at < 1.0:
                return
            self._stats_at = now
            try:
                if self._stats_conn is None or self._stats_conn.closed:
                    self._stats_conn = connect(
                        self.config.source.dsn_value, self.config.source.dsn_masked, autocommit=True
                    )
                info = slot_info(self._stats_conn, self.slot)
            except Exception as exc:  # noqa: BLE001 - stats must never stop the pipeline
                # (PostgreSQL restarting, say: the next refresh connects again; warned once per outage)
                if not self._stats_failing:
                    log.warning("slot %s: cannot read slot status: %s", self.slot, error_line(exc, with_type=True))
                self._stats_failing = True
                if self._stats_conn is not None:
                    try:
                        self._stats_conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                self._stats_conn = None
                return
            self._stats_failing = False
            warning = lag_warning(info, self.config.source.max_lag_bytes)
            self._slot_stats = {"confirmed_lsn": format_lsn(info.confirmed_lsn), "lag_bytes": info.lag_bytes,
                                "lag_warning": warning}
            if warning and (self._lag_warned_at is None or now - self._lag_warned_at >= LAG_WARNING_INTERVAL_S):
                self._lag_warned_at = now
                log.warning("%s", warning)
            elif not warning and self._lag_warned_at is not None:
                self._lag_warned_at = None
                log.info("slot %s: lag back under source.max_lag_bytes (%s bytes)", self.slot, info.lag_bytes)

    def stats(self) -> dict[str, Any]:
        if self._stop.is_set() or self.state in ("stopped", "halted", FAILED, "recovering"):
            # the loop that refreshes them is not running: current figures (at most one query a second)
            self._refresh_slot_stats(force=self.state == "stopped" or self._stop.is_set())
        return {
            "state": self.state,
            "slot": self.slot,
            "rows_applied": self.rows_applied,
            "backfill_rows": self.backfill_rows,
            "batches_applied": self.batches_applied,
            "writers": len(self.writers),
            "embedding_actors": len(self.pool),
            "acked_lsn": format_lsn(self.acked_lsn or None),
            **self._slot_stats,
            "errors": self.errors,
            "dead_letters": self.dead_letters,
            "last_error": self.last_error,
            "changes_per_second": self._changes_per_second(),
            "backfill": self._backfill_progress(),
            "freshness_seconds": self.freshness.as_dict(),
        }

    def _backfill_progress(self) -> dict[str, Any] | None:
        """The backfill of this run: rows written of the snapshot's total, rows/s and the
        time left (None when this run resumed the stream instead)."""
        if self.backfill_total is None:
            return None
        total, done = self.backfill_total["rows"], self.backfill_rows
        finished = self._backfill_took is not None
        if finished:
            took = self._backfill_took or 0.0
            rate = round((done - self._backfill_rows_before) / took, 1) if took > 0 else 0.0
            eta: float | None = 0.0
        else:
            rate = self._changes_per_second()
            eta = round(max(0, total - done) / rate, 1) if rate > 0 else None
        return {
            "rows_done": done,
            "rows_total": total,
            "total_is_estimate": bool(self.backfill_total.get("estimate")),
            "percent": 100.0 if finished else round(min(100.0, 100.0 * done / total), 1) if total else 0.0,
            "rows_per_second": rate,
            "eta_seconds": eta,
            "finished": finished,
        }

    def _changes_per_second(self) -> float:
        """Rows written per second over the last :data:`RATE_WINDOW_S` (0 when nothing was)."""
        window = list(self._rate_window)
        now = time.monotonic()
        window = [w for w in window if now - w[0] <= RATE_WINDOW_S]
        if not window:
            return 0.0
        first_t, first_rows = window[0]
        span = max(now - first_t, 1.0)
        return round((self.rows_applied - first_rows) / span, 1)

    def stop(self) -> None:
        self._stop.set()


#: the embedding actors' and the writer's figures in ``stats()`` are at most this old (see _part_stats)
PART_STATS_MAX_AGE_S = 1.0


@ray.remote(num_cpus=0, max_concurrency=8)
class PipelineActor:
    """Runs a :class:`PipelineCoordinator` on a thread; answers ``stats`` meanwhile."""

    def __init__(self, config: Config, reader: Any, embedders: list[Any], writer: Any, dimension: int,
                 log_level: str = "INFO", partition_writers: list[Any] | None = None,
                 embedder_factory: Any = None) -> None:
        setup_logging(log_level)
        self.coordinator = PipelineCoordinator(config, reader, embedders, writer, dimension, partition_writers,
                                               embedder_factory)
        self.thread: threading.Thread | None = None
        self.exporter: Any = None
        self._parts_lock = threading.Lock()
        self._parts: dict[str, Any] = {}
        self._parts_at = float("-inf")
        self._parts_key: Any = None

    def start(self) -> None:
        if self.thread is None:
            self._start_exporter()
            self.thread = threading.Thread(target=self.coordinator.run, name="pipeline", daemon=True)
            self.thread.start()

    def _start_exporter(self) -> None:
        """``[serve] metrics_port``: /metrics and /stats from this process (serve_apps/exporter.py)."""
        serve = self.coordinator.config.serve
        if not serve.metrics_port:
            return
        from serve_apps.exporter import StatsExporter

        try:
            self.exporter = StatsExporter(self.stats, serve.host, serve.metrics_port, serve.api_key_value).start()
        except OSError as exc:
            raise RuntimeError(f"serve.metrics_port {serve.metrics_port} on {serve.host} cannot be used: "
                               f"{exc.strerror or exc}; pick a free port or set serve.metrics_port = 0") from None
        log.info("metrics for frequent scraping on http://%s:%d/metrics (and /stats)", serve.host, self.exporter.port)

    def stats(self) -> dict[str, Any]:
        stats = self.coordinator.stats()
        stats.update(self._part_stats(stats.get("batches_applied")))
        return stats

    def _part_stats(self, batches_applied: Any) -> dict[str, Any]:
        """The embedding actors' and the writer's figures, asked for at most every
        :data:`PART_STATS_MAX_AGE_S` while no batch was written meanwhile.

        A client polling ``/stats`` or ``/metrics`` many times a second would otherwise add as
        many calls into the busy embedding actors and writer.  Texts are embedded and dead
        letters set aside only on the way to a write, so figures read since the last written
        batch are still exact once the pipeline has caught up.
        """
        with self._parts_lock:
            now = time.monotonic()
            if self._parts_key == batches_applied and now - self._parts_at < PART_STATS_MAX_AGE_S:
                return dict(self._parts)
            parts: dict[str, Any] = {}
            try:
                embed = ray.get([e.stats.remote() for e in self.coordinator.pool.all_handles()], timeout=2)
                parts["embedding"] = {
                    k: sum(s.get(k, 0) for s in embed)
                    for k in ("texts", "unique_texts", "tokens", "truncated", "forward_passes", "seconds")
                }
                parts["truncated_texts"] = parts["embedding"]["truncated"]
            except Exception:  # noqa: BLE001 - busy actors: stats without embedding figures
                pass
            try:
                writer = ray.get(self.coordinator.writer.stats.remote(), timeout=2)
                parts["dead_letters"] = writer["dead_letters"]
                parts["sink_unavailable_s"] = writer["sink_unavailable_s"]
            except Exception:  # noqa: BLE001 - a writer being restarted: the coordinator's figures
                pass
            self._parts, self._parts_at, self._parts_key = parts, now, batches_applied
            return dict(parts)

    def wait_acked(self, lsn: int, timeout: float = 60.0) -> int:
        """See :meth:`PipelineCoordinator.wait_acked`."""
        return self.coordinator.wait_acked(lsn, timeout)

    def stop(self, timeout: float = 60.0) -> dict[str, Any]:
        """Stop reading, write what is in flight, confirm it, close the stream."""
        self.coordinator.stop()
        if self.thread is not None:
            self.thread.join(timeout)
        # the actors the pool added (and the request for room made for them) go with it
        self.coordinator.pool.close()
        if self.exporter is not None:
            self.exporter.close()
            self.exporter = None
        return self.coordinator.stats()
