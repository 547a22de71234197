"""The embedding pool's size: a policy that picks it, and the pool that carries it out.

``[embedding] min_actors / max_actors`` let the pool follow the load: it grows while the slot's
lag grows and the actors are the bottleneck, and shrinks after a sustained idle period.

* :class:`AutoscalePolicy` decides.  A plain state machine, no Ray (like ``cluster/flow.py``):
  observations go in (time, the pool's size and how busy it is, actors still starting, the
  slot's lag in bytes), a target size comes out.  The unit tests drive it with scripted
  observations and times.
* :class:`EmbeddingPool` owns the embedding actor handles: round robin over the actors that are
  up, creation with a factory it is given (the same options ``cluster/runtime.py`` uses), and
  graceful removal: an actor leaving the pool gets no new batch and is killed only once every
  call already sent to it has finished, so no batch in flight is lost.  When it grows it asks
  Ray's autoscaler for room (``ray.autoscaler.sdk.request_resources``); on a Ray without an
  autoscaler that request is a harmless note, and any error of it is logged, never raised.
* :class:`PoolAutoscaler` joins the two for the coordinator: one call per turn.

The rules, and why:

* Grow only when the lag *grows* and the pool is busy.  A large lag that shrinks is being
  caught up; a lag that grows while the actors idle has its bottleneck elsewhere (the writer,
  the sink), where more actors would only cost.
* Grow one actor at a time, at most once per ``grow_cooldown_s``, and not while an actor added
  earlier is still starting (waiting for a node, loading the model): its effect is not visible
  yet, and a cluster adding GPU nodes takes minutes.  The lag's trend is judged only on samples
  taken after the last change, so the growth that caused one change cannot cause the next.
* Shrink one actor after ``shrink_after_idle_s`` of a mostly idle pool (busy below
  ``busy_low``) whose lag is not growing; each further step waits for another idle period.
  ``busy_low`` well under ``busy_high`` keeps it from flapping: the same work on fewer actors
  makes each busier.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """What the coordinator can tell cheaply each turn.

    ``now``: a monotonic clock (seconds).  ``actors``: the pool's size (actors taking batches,
    started or starting).  ``busy``: the share (0..1) of the started actors that have at least one
    call in flight.  ``pending``: actors created that are not up yet.  ``lag_bytes``: the slot's
    lag (``None`` when it could not be read this time).
    """

    now: float
    actors: int
    busy: float
    pending: int = 0
    lag_bytes: int | None = None


@dataclass
class AutoscalePolicy:
    """Target pool size within ``[min_actors, max_actors]`` from a stream of :class:`Observation` s.

    Call :meth:`decide` once per coordinator turn (any rate; it keeps time from the observations).
    ``reason`` says why the last change was made (for the log).
    """

    min_actors: int
    max_actors: int
    #: the pool is this busy (time-weighted over ``busy_window_s``) before lag growth adds an actor
    busy_high: float = 0.75
    #: at most this busy, with the lag not growing, counts as idle
    busy_low: float = 0.25
    busy_window_s: float = 10.0
    #: the lag's trend is a least-squares line through the samples of this many seconds
    trend_window_s: float = 20.0
    #: the trend must add at least this many bytes over the window to count as growing
    #: (a pipeline that keeps up has a lag that wobbles by a few transactions)
    min_lag_growth_bytes: int = 1 << 20
    grow_cooldown_s: float = 30.0
    shrink_after_idle_s: float = 120.0
    #: optional: a busy pool with at least this lag grows even when the lag is flat (a backlog that
    #: is not shrinking); None = only a growing lag adds actors
    lag_high_bytes: int | None = None
    #: the current target (starts at the pool's initial size, clamped)
    target: int = 0
    reason: str = ""
    _busy: collections.deque = field(default_factory=collections.deque, repr=False)
    _lag: collections.deque = field(default_factory=collections.deque, repr=False)
    _changed_at: float | None = field(default=None, repr=False)
    _idle_since: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_actors <= self.max_actors:
            raise ValueError(f"need 1 <= min_actors <= max_actors, got {self.min_actors}, {self.max_actors}")
        if not 0 <= self.busy_low < self.busy_high <= 1:
            raise ValueError(f"need 0 <= busy_low < busy_high <= 1, got {self.busy_low}, {self.busy_high}")
        self.target = self._clamp(self.target or self.min_actors)

    @property
    def fixed(self) -> bool:
        """True when the pool cannot change size (``min_actors == max_actors``)."""
        return self.min_actors == self.max_actors

    def _clamp(self, n: int) -> int:
        return max(self.min_actors, min(self.max_actors, n))

    # -- signals -------------------------------------------------------------------------------

    def busy_average(self) -> float | None:
        """Time-weighted share of busy actors over the last ``busy_window_s`` (None: no sample)."""
        samples = self._busy
        if not samples:
            return None
        if len(samples) == 1 or samples[-1][0] <= samples[0][0]:
            return samples[-1][1]
        # each sample holds until the next one
        total = sum(b * (t2 - t1) for (t1, b), (t2, _) in zip(samples, list(samples)[1:]))
        return total / (samples[-1][0] - samples[0][0])

    def lag_growth(self) -> float | None:
        """Bytes the lag gained across the trend window (least-squares slope x span); None until
        the samples since the last change span at least half the window."""
        samples = self._lag
        if len(samples) < 3:
            return None
        span = samples[-1][0] - samples[0][0]
        if span < self.trend_window_s / 2:
            return None
        n = len(samples)
        mean_t = sum(t for t, _ in samples) / n
        mean_l = sum(v for _, v in samples) / n
        var = sum((t - mean_t) ** 2 for t, _ in samples)
        if var <= 0:
            return None
        slope = sum((t - mean_t) * (v - mean_l) for t, v in samples) / var
        return slope * span

    def _record(self, obs: Observation) -> None:
        self._busy.append((obs.now, min(1.0, max(0.0, obs.busy))))
        while len(self._busy) > 1 and obs.now - self._busy[1][0] >= self.busy_window_s:
            self._busy.popleft()
        if obs.lag_bytes is not None:
            self._lag.append((obs.now, obs.lag_bytes))
            while len(self._lag) > 1 and obs.now - self._lag[1][0] >= self.trend_window_s:
                self._lag.popleft()

    def _change(self, now: float, target: int, reason: str) -> int:
        self.target = target
        self.reason = reason
        self._changed_at = now
        self._idle_since = None
        # judge the next change on what happens from now on only
        self._lag.clear()
        self._busy.clear()
        return target

    # -- the decision --------------------------------------------------------------------------

    def decide(self, obs: Observation) -> int:
        """The pool size to have now (changes by at most one actor per call)."""
        self._record(obs)
        if self.fixed:
            return self.target
        now = obs.now
        busy = self.busy_average() or 0.0
        growth = self.lag_growth()
        growing = growth is not None and growth >= self.min_lag_growth_bytes
        since_change = math.inf if self._changed_at is None else now - self._changed_at

        backlog = (self.lag_high_bytes is not None and obs.lag_bytes is not None
                   and obs.lag_bytes >= self.lag_high_bytes and growth is not None and growth >= 0)
        if (growing or backlog) and busy >= self.busy_high:
            self._idle_since = None
            if self.target < self.max_actors and obs.pending == 0 and since_change >= self.grow_cooldown_s:
                why = (f"lag grew {growth / 1e6:.1f} MB in {self.trend_window_s:g} s" if growing
                       else f"lag {obs.lag_bytes / 1e6:.1f} MB is not shrinking")
                return self._change(now, self.target + 1, f"{why} with the pool {busy:.0%} busy")
            return self.target

        if busy <= self.busy_low and not growing:
            if self._idle_since is None:
                self._idle_since = now
            idle_for = now - self._idle_since
            if self.target > self.min_actors and idle_for >= self.shrink_after_idle_s:
                return self._change(now, self.target - 1,
                                    f"pool {busy:.0%} busy for {idle_for:.0f} s with the lag not growing")
        else:
            self._idle_since = None
        return self.target


# -- the pool ------------------------------------------------------------------------------------


class ActorFactory:
    """Creates one actor of ``actor_class`` per call, with fixed ``options`` and arguments.

    Picklable (a Ray actor class at module level travels by reference), so the runtime can hand
    it to the coordinator's actor: every actor the pool adds later is created exactly like the
    first ones.  Each gets the name ``{name_prefix}-{index}``.
    """

    def __init__(self, actor_class: Any, options: dict[str, Any], args: tuple[Any, ...] = (),
                 name_prefix: str = "embedder") -> None:
        self.actor_class = actor_class
        self.options = dict(options)
        self.args = tuple(args)
        self.name_prefix = name_prefix

    def __call__(self, index: int) -> Any:
        return self.actor_class.options(name=f"{self.name_prefix}-{index}", **self.options).remote(*self.args)

    def bundle(self) -> dict[str, float]:
        """The resources one actor reserves: what the autoscaler is asked to find room for."""
        return resource_bundle(self.options.get("num_cpus"), self.options.get("num_gpus"),
                               self.options.get("resources"))


def resource_bundle(num_cpus: float | None, num_gpus: float | None = None,
                    resources: dict[str, float] | None = None) -> dict[str, float]:
    """A ``request_resources`` bundle: CPU, GPU and custom resources, zero amounts left out.

    ``num_cpus=None`` is Ray's default for an actor's placement: 1 CPU.
    """
    bundle = {"CPU": 1.0 if num_cpus is None else float(num_cpus), "GPU": float(num_gpus or 0)}
    bundle.update({k: float(v) for k, v in (resources or {}).items()})
    return {k: v for k, v in bundle.items() if v > 0}


def _request_resources(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)


@dataclass
class _Member:
    handle: Any
    index: int
    ready_ref: Any = None  # __ray_ready__ of an actor not known to be up yet; None once up
    outstanding: set = field(default_factory=set)  # refs of calls sent to it, not finished


class EmbeddingPool:
    """The embedding actors: who gets the next batch, growing, and removing without losing work.

    ``factory(index)`` creates an actor (e.g. :class:`ActorFactory`).  ``handles`` are actors
    created already (the runtime's first ones, numbered from 0); else ``size`` are created now.
    ``bundle`` is one actor's resources (default: ``factory.bundle()`` when it has one); when
    empty the autoscaler is never asked.  ``request`` replaces the call to
    ``ray.autoscaler.sdk.request_resources`` (it gets the list of bundles).

    Thread-safe: the coordinator's loop calls :meth:`submit` / :meth:`poll` / :meth:`resize`
    while ``stats`` may read :meth:`all_handles` from another thread.
    """

    def __init__(self, factory: Callable[[int], Any], size: int = 0, handles: list[Any] | None = None,
                 bundle: dict[str, float] | None = None,
                 request: Callable[[list[dict[str, float]]], None] | None = None) -> None:
        self.factory = factory
        if bundle is None:
            bundle = factory.bundle() if hasattr(factory, "bundle") else {}
        self.bundle = dict(bundle)
        self._request = request or _request_resources
        self._lock = threading.RLock()
        self._active: list[_Member] = []
        self._draining: list[_Member] = []
        self._next = 0
        self._index = 0
        self._requested: int | None = None  # actors the last autoscaler request covered
        self._request_failed = False
        #: actors killed after draining, and calls they finished meanwhile (for logs and tests)
        self.retired = 0
        for handle in handles or []:
            self._active.append(self._member(handle))
        if not self._active and factory is not None:
            self.resize(max(1, size))

    def _member(self, handle: Any) -> _Member:
        member = _Member(handle, self._index, ready_ref=handle.__ray_ready__.remote())
        self._index += 1
        return member

    # -- who gets work -------------------------------------------------------------------------

    def __len__(self) -> int:
        """Actors taking new batches (started or starting); draining ones not counted."""
        return len(self._active)

    def handles(self) -> list[Any]:
        """The actors taking new batches, oldest first."""
        with self._lock:
            return [m.handle for m in self._active]

    def all_handles(self) -> list[Any]:
        """Every live actor of the pool, draining ones included (stats, shutdown)."""
        with self._lock:
            return [m.handle for m in self._active + self._draining]

    def next(self) -> Any:
        """The next actor, round robin over those that are up (all taking batches while none is
        up yet, at start).  A starting actor may wait minutes for a node: a batch sent to it
        would hold up every later write, since writes go in order."""
        with self._lock:
            return self._pick().handle

    def _pick(self) -> _Member:
        up = [m for m in self._active if m.ready_ref is None] or self._active
        member = up[self._next % len(up)]
        self._next += 1
        return member

    def submit(self, *args: Any, method: str = "embed_batch") -> Any:
        """Call ``method(*args)`` on the next actor and return its object ref (tracked until done)."""
        with self._lock:
            member = self._pick()
            ref = getattr(member.handle, method).remote(*args)
            member.outstanding.add(ref)
            return ref

    def track(self, handle: Any, ref: Any) -> None:
        """Count ``ref`` as in flight at ``handle`` (for calls made on a handle from :meth:`next`)."""
        with self._lock:
            for m in self._active + self._draining:
                if m.handle is handle or m.handle == handle:
                    m.outstanding.add(ref)
                    return
            raise ValueError("not an actor of this pool")

    # -- state ------------------------------------------------------------------------------------

    def poll(self) -> None:
        """Forget finished calls, note actors that came up, kill drained actors.  Cheap (one
        ``ray.wait`` with no timeout and no fetch); call it every turn."""
        import ray

        with self._lock:
            members = self._active + self._draining
            waiting = [r for m in members for r in m.outstanding]
            waiting += [m.ready_ref for m in self._active if m.ready_ref is not None]
            if waiting:
                done, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0, fetch_local=False)
                finished = set(done)
                for m in members:
                    m.outstanding -= finished
                    if m.ready_ref is not None and m.ready_ref in finished:
                        m.ready_ref = None
            for m in [m for m in self._draining if not m.outstanding]:
                # every call it was sent has finished: its results are with their owner (this
                # process, or the object store), so the process can go
                self._draining.remove(m)
                ray.kill(m.handle, no_restart=True)
                self.retired += 1
                log.info("embedding pool: removed actor %d (its calls finished)", m.index)

    def outstanding(self) -> int:
        """Calls in flight at every actor, draining ones included (as of the last :meth:`poll`)."""
        with self._lock:
            return sum(len(m.outstanding) for m in self._active + self._draining)

    def draining(self) -> int:
        """Actors removed from the pool that still finish calls sent to them."""
        with self._lock:
            return len(self._draining)

    def pending(self) -> int:
        """Actors of the pool not up yet (as of the last :meth:`poll`)."""
        with self._lock:
            return sum(1 for m in self._active if m.ready_ref is not None)

    def busy_fraction(self) -> float:
        """Share of the pool's started actors with at least one call in flight (as of the last
        :meth:`poll`; 0 while none is up)."""
        with self._lock:
            up = [m for m in self._active if m.ready_ref is None]
            return sum(1 for m in up if m.outstanding) / len(up) if up else 0.0

    # -- size ---------------------------------------------------------------------------------------

    def resize(self, n: int) -> None:
        """Have ``n`` actors taking batches (at least one).  New ones are created now (Ray starts
        them where there is room, or once the autoscaler added a node); removed ones take no new
        batch and are killed by :meth:`poll` once their calls finished.  Actors not up yet go
        first, then those with the least work in flight, newest first."""
        n = max(1, n)
        with self._lock:
            while len(self._active) < n:
                member = self._member(self.factory(self._index))
                self._active.append(member)
                log.info("embedding pool: added actor %d (%d taking batches)", member.index, len(self._active))
            if len(self._active) > n:
                order = sorted(self._active, key=lambda m: (m.ready_ref is None, len(m.outstanding), -m.index))
                for m in order[: len(self._active) - n]:
                    self._active.remove(m)
                    self._draining.append(m)
                    log.info("embedding pool: removing actor %d after its %d call(s) in flight",
                             m.index, len(m.outstanding))
            self._ask_for_room(len(self._active))
        self.poll()  # an idle actor removed goes now

    def _ask_for_room(self, n: int) -> None:
        """Tell the autoscaler the cluster must fit ``n`` actors' bundles.

        The request is persistent and counts what runs already (Ray's semantics), so it is
        renewed on every size change: raised when growing (Ray adds nodes for actors that do not
        fit), lowered when shrinking (so idle nodes can go).  On a local Ray nothing reads it.
        """
        if not self.bundle or n == self._requested:
            return
        try:
            self._request([dict(self.bundle) for _ in range(n)])
            self._requested = n
        except Exception as exc:  # noqa: BLE001 - a hint to the autoscaler must never stop the pipeline
            if not self._request_failed:
                log.warning("embedding pool: could not ask Ray's autoscaler for %d x %s: %s", n, self.bundle, exc)
            self._request_failed = True

    def close(self) -> None:
        """Kill every actor of the pool now (stop) and withdraw the request for room."""
        import ray

        with self._lock:
            for m in self._active + self._draining:
                try:
                    ray.kill(m.handle, no_restart=True)
                except Exception:  # noqa: BLE001 - dead already
                    pass
            self._active, self._draining = [], []
            if self.bundle and self._requested:
                try:
                    self._request([])
                except Exception:  # noqa: BLE001
                    pass
                self._requested = 0


class PoolAutoscaler:
    """One call per coordinator turn: poll the pool, observe, decide, resize, log the reason."""

    def __init__(self, pool: EmbeddingPool, policy: AutoscalePolicy) -> None:
        self.pool = pool
        self.policy = policy

    def step(self, lag_bytes: int | None, now: float | None = None) -> int:
        """Returns the pool's size after this turn.  ``lag_bytes``: the slot's lag (None if unknown)."""
        import time

        self.pool.poll()
        if self.policy.fixed:
            return len(self.pool)
        obs = Observation(now=time.monotonic() if now is None else now, actors=len(self.pool),
                          busy=self.pool.busy_fraction(), pending=self.pool.pending(), lag_bytes=lag_bytes)
        target = self.policy.decide(obs)
        if target != len(self.pool):
            log.info("embedding pool: %d -> %d actors (%s)", len(self.pool), target, self.policy.reason)
            self.pool.resize(target)
        return len(self.pool)
