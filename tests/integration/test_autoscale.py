"""cluster/autoscale.py with a real local Ray and real EmbeddingActors (model "null": the hash embedder).

A loop shaped like the coordinator's ``_pump`` drives an :class:`EmbeddingPool` and the policy:
changes "arrive" at a steady rate (a source whose WAL grows whether or not it is read), at most
two batches per actor are in flight (the pipeline's window), and the lag is what arrived and is
not embedded yet.  The arrival rate is three times what one actor was just measured to sustain,
so the lag grows and the pool grows to ``max_actors``; then arrivals stop, the backlog drains,
the pool idles and shrinks to ``min_actors``.  Every batch's vectors are checked.

Separately, the pool removes actors that still have calls in flight: they finish them first.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import numpy as np
import pytest

from actors.changes import Change, ChangeBatch
from actors.embedder import EmbeddingConfig, NullEmbedder
from cluster.autoscale import ActorFactory, AutoscalePolicy, EmbeddingPool, PoolAutoscaler, _request_resources

TEXTS_PER_BATCH = 2000  # ~40 ms of the hash embedder: enough work per call to keep actors busy
TEMPLATES = 8  # distinct batches, cycled: a result mixed up with another batch's is caught
MIN_ACTORS, MAX_ACTORS = 1, 3


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    import ray

    from cluster.runtime import start_ray

    saved = dict(os.environ)
    start_ray(num_cpus=2, quiet=True)  # the product's own start-up: loopback only
    yield ray
    ray.shutdown()
    # ray.init exports RAY_AUTH_MODE=token (and more) into this process: later tests' subprocesses
    # (a run joining a cluster started without token auth) must not inherit them
    os.environ.clear()
    os.environ.update(saved)


def factory() -> ActorFactory:
    from actors.remote import EmbeddingActor, embedding_runtime_env

    # the options cluster/runtime.py gives its actors, a quarter CPU each so four fit in 2 CPUs
    options = {"num_cpus": 0.25, "max_concurrency": 2, "runtime_env": embedding_runtime_env()}
    return ActorFactory(EmbeddingActor, options, (EmbeddingConfig(model="null"), 1, "WARNING"),
                        name_prefix=f"autoscale-test-{os.getpid()}-{time.monotonic_ns()}")


def templates(ray: Any) -> tuple[list[Any], list[np.ndarray]]:
    """(object refs of the batches, the vectors each must come back with)."""
    refs, expected = [], []
    for k in range(TEMPLATES):
        changes = [Change("upsert", "public.books", (k, j), text=f"template {k} row {j}: a story of ships")
                   for j in range(TEXTS_PER_BATCH)]
        batch = ChangeBatch(seq=k, changes=changes)
        refs.append(ray.put(batch))  # put once: the driver stays cheap, the actors do the work
        expected.append(NullEmbedder().embed(batch.texts_to_embed()))
    return refs, expected


def wait_until(condition: Any, timeout: float, what: str, pool: EmbeddingPool | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        if pool is not None:
            pool.poll()
        time.sleep(0.02)  # polling interval of a condition with a deadline


def one_actor_rate(ray: Any, pool: EmbeddingPool, batches: list[Any]) -> float:
    """Batches/s one actor sustains with two calls in flight (after a warm-up call)."""
    ray.get(pool.submit(batches[0]))
    started, refs = time.monotonic(), [pool.submit(batches[i % TEMPLATES]) for i in range(12)]
    ray.get(refs)
    return 12 / (time.monotonic() - started)


def test_the_pool_grows_to_max_under_a_growing_lag_then_shrinks_to_min_and_loses_no_batch(ray_local):
    ray = ray_local
    batches, expected = templates(ray)
    requests: list[int] = []

    def request(bundles: list[dict[str, float]]) -> None:
        requests.append(len(bundles))  # the real call follows: it must not fail on a local Ray
        _request_resources(bundles)

    pool = EmbeddingPool(factory(), size=MIN_ACTORS, request=request)
    try:
        wait_until(lambda: pool.pending() == 0, 60, "the first actor", pool)
        rate = 3 * one_actor_rate(ray, pool, batches)
        policy = AutoscalePolicy(MIN_ACTORS, MAX_ACTORS, target=MIN_ACTORS, busy_high=0.6, busy_low=0.2,
                                 busy_window_s=0.5, trend_window_s=1.0, min_lag_growth_bytes=1,
                                 grow_cooldown_s=0.3, shrink_after_idle_s=1.0)
        scaler = PoolAutoscaler(pool, policy)

        start = time.monotonic()
        deadline = start + 45
        arrived_total: int | None = None  # set when arrivals stop
        submitted = 0
        inflight: dict[Any, int] = {}
        checked = 0
        sizes: list[int] = []
        while True:
            now = time.monotonic()
            assert now < deadline, f"stuck: sizes {sorted(set(sizes))}, {checked}/{submitted} checked, " \
                                   f"{len(pool)} actors, reason {policy.reason!r}"
            if arrived_total is None and len(pool) == MAX_ACTORS and pool.pending() == 0:
                arrived_total = max(submitted, int((now - start) * rate))  # the load ends
            arrived = arrived_total if arrived_total is not None else int((now - start) * rate)
            while submitted < arrived and len(inflight) < 2 * len(pool):  # the pipeline's window
                inflight[pool.submit(batches[submitted % TEMPLATES])] = submitted
                submitted += 1
            if inflight:
                ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0.05)
                for ref in ready:
                    seq = inflight.pop(ref)
                    vectors = ray.get(ref)
                    assert np.array_equal(vectors, expected[seq % TEMPLATES]), f"batch {seq}: wrong vectors"
                    checked += 1
            else:
                time.sleep(0.02)  # nothing in flight: the next turn, as the coordinator's wait would
            lag = (arrived - checked) * TEXTS_PER_BATCH * 60  # ~60 WAL bytes per change
            sizes.append(scaler.step(lag))
            if arrived_total is not None and checked == arrived_total and len(pool) == MIN_ACTORS \
                    and pool.draining() == 0:
                break

        assert max(sizes) == MAX_ACTORS and sizes[-1] == MIN_ACTORS
        assert checked == submitted == arrived_total and not inflight
        assert pool.retired == MAX_ACTORS - MIN_ACTORS and pool.outstanding() == 0
        # sizes only ever moved one step, up to max, then down to min (no flapping under the steady load)
        steps = [b for a, b in zip(sizes, sizes[1:]) if a != b]
        assert steps == [2, 3, 2, 1], steps
        # the autoscaler was told each size, and the real request did not fail on a local Ray
        assert requests == [1, 2, 3, 2, 1] and not pool._request_failed
        assert len(pool.handles()) == MIN_ACTORS
    finally:
        pool.close()


def test_removed_actors_finish_their_calls_in_flight_before_they_are_killed(ray_local):
    ray = ray_local
    batches, expected = templates(ray)
    pool = EmbeddingPool(factory(), size=3, request=lambda bundles: None)
    try:
        wait_until(lambda: pool.pending() == 0, 60, "three actors", pool)
        actors = pool.handles()
        refs = [pool.submit(batches[i % TEMPLATES]) for i in range(30)]  # ~10 queued calls each
        pool.resize(1)
        # two left the pool with work in flight: they drain instead of dying
        assert len(pool) == 1 and pool.draining() == 2, (len(pool), pool.draining())
        leaving = [a for a in actors if a not in pool.handles()]
        # new work goes to the one that stays only
        extra = [pool.submit(batches[i % TEMPLATES]) for i in range(4)]
        assert pool.handles() == [a for a in actors if a not in leaving]
        for i, ref in enumerate(refs + extra):
            # a call of an actor killed too early would raise ActorDiedError here
            vectors = ray.get(ref, timeout=60)
            assert np.array_equal(vectors, expected[(i if i < 30 else i - 30) % TEMPLATES])
        wait_until(lambda: pool.draining() == 0, 30, "the drained actors to be removed", pool)
        assert pool.retired == 2
        for actor in leaving:  # gone for good (killed, not restarted)
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(actor.__ray_ready__.remote(), timeout=30)
    finally:
        pool.close()
