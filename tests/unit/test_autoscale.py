"""cluster/autoscale.py: the pool-size policy, driven with scripted observations and times.

The pool itself (actors, draining, the autoscaler request) needs Ray: tests/integration/test_autoscale.py.
"""

from __future__ import annotations

import pytest

from cluster.autoscale import ActorFactory, AutoscalePolicy, Observation, resource_bundle

MB = 1 << 20


def policy(**kw):
    defaults = dict(min_actors=1, max_actors=4, busy_window_s=5, trend_window_s=10, min_lag_growth_bytes=MB,
                    grow_cooldown_s=15, shrink_after_idle_s=30)
    return AutoscalePolicy(**{**defaults, **kw})


def run(p, start, seconds, busy, lag=None, pending=0, step=1.0):
    """Feed one observation per ``step`` s from ``start`` for ``seconds``; returns (end time, sizes seen).

    ``lag`` is a function of time (None: unknown); ``busy`` a number or a function of time.
    """
    sizes = []
    t = start
    while t < start + seconds:
        b = busy(t) if callable(busy) else busy
        sizes.append(p.decide(Observation(now=t, actors=p.target, busy=b, pending=pending,
                                          lag_bytes=None if lag is None else int(lag(t)))))
        t += step
    return t, sizes


def growing(rate_mb_per_s):
    return lambda t: 10 * MB + rate_mb_per_s * MB * t


def test_a_fixed_pool_never_changes():
    p = policy(min_actors=2, max_actors=2)
    _, sizes = run(p, 0, 200, busy=1.0, lag=growing(5))
    assert set(sizes) == {2} and p.fixed


def test_growing_lag_with_a_busy_pool_adds_one_actor_at_a_time_with_a_cool_down():
    p = policy()
    t, sizes = run(p, 0, 5, busy=1.0, lag=growing(1))
    assert set(sizes) == {1}, "half a trend window (5 s) of evidence is needed first"
    t, sizes = run(p, t, 1, busy=1.0, lag=growing(1))
    assert sizes == [2] and "lag grew" in p.reason
    # still growing: the next actor only after the cool-down (15 s), not at the next turn
    t2, sizes = run(p, t, 14, busy=1.0, lag=growing(1))
    assert set(sizes) == {2}
    t2, sizes = run(p, t2, 2, busy=1.0, lag=growing(1))
    assert sizes[-1] == 3
    # and never beyond max_actors
    _, sizes = run(p, t2, 200, busy=1.0, lag=growing(1))
    assert max(sizes) == 4 and sizes[-1] == 4


def test_a_flat_or_shrinking_lag_does_not_grow_the_pool():
    p = policy()
    wobble = lambda t: 50 * MB + (MB // 2 if int(t) % 2 else 0)  # noqa: E731 - a pipeline keeping up
    _, sizes = run(p, 0, 100, busy=1.0, lag=wobble)
    assert set(sizes) == {1}
    p = policy()
    _, sizes = run(p, 0, 100, busy=1.0, lag=lambda t: 500 * MB - MB * t)  # catching up
    assert set(sizes) == {1}


def test_growing_lag_with_idle_actors_does_not_grow_the_pool():
    # the bottleneck is elsewhere (the writer, the sink): more actors would not help
    p = policy()
    _, sizes = run(p, 0, 100, busy=0.3, lag=growing(5))
    assert set(sizes) == {1}


def test_an_actor_still_starting_holds_further_growth():
    p = policy(min_actors=1, max_actors=4, target=2)
    _, sizes = run(p, 0, 100, busy=1.0, lag=growing(5), pending=1)
    assert set(sizes) == {2}
    _, sizes = run(p, 100, 12, busy=1.0, lag=growing(5), pending=0)
    assert sizes[-1] == 3


def test_an_unknown_lag_never_grows_the_pool():
    p = policy()
    _, sizes = run(p, 0, 100, busy=1.0, lag=None)
    assert set(sizes) == {1}


def test_a_sustained_idle_pool_shrinks_one_step_per_idle_period_down_to_min():
    p = policy(min_actors=1, max_actors=4, target=4)
    t, sizes = run(p, 0, 30, busy=0.0, lag=lambda t: 0)
    assert set(sizes) == {4}, "not before shrink_after_idle_s of idleness"
    t, sizes = run(p, t, 1, busy=0.0, lag=lambda t: 0)
    assert sizes[-1] == 3 and "busy" in p.reason
    t, sizes = run(p, t, 29, busy=0.0, lag=lambda t: 0)
    assert set(sizes) == {3}, "each step waits for another idle period"
    _, sizes = run(p, t, 200, busy=0.0, lag=lambda t: 0)
    assert sizes[-1] == 1 and min(sizes) == 1


def test_work_between_the_thresholds_resets_the_idle_period():
    p = policy(min_actors=1, max_actors=4, target=3)
    # half busy 5 s in every 30: never idle for 30 s in a row
    busy = lambda t: 0.5 if 20 <= t % 30 < 25 else 0.0  # noqa: E731
    _, sizes = run(p, 0, 30 * 6, busy=busy, lag=lambda t: 0)
    assert set(sizes) == {3}


def test_no_flapping_after_a_growth_with_the_pool_half_busy():
    p = policy(target=2)
    t, sizes = run(p, 0, 8, busy=1.0, lag=growing(2))
    assert sizes[-1] == 3
    # the new actor takes its share: the pool is half busy and the lag stops growing; it neither
    # grows nor shrinks, however long that lasts
    level = growing(2)(t)
    _, sizes = run(p, t, 300, busy=0.5, lag=lambda t: level)
    assert set(sizes) == {3}


def test_a_growing_lag_blocks_shrinking_even_with_idle_actors():
    p = policy(target=3)
    _, sizes = run(p, 0, 200, busy=0.1, lag=growing(2))
    assert set(sizes) == {3}


def test_lag_high_bytes_grows_a_busy_pool_under_a_flat_backlog_but_not_a_shrinking_one():
    p = policy(lag_high_bytes=100 * MB)
    _, sizes = run(p, 0, 12, busy=1.0, lag=lambda t: 200 * MB)
    assert sizes[-1] == 2 and "not shrinking" in p.reason
    p = policy(lag_high_bytes=100 * MB)
    _, sizes = run(p, 0, 100, busy=1.0, lag=lambda t: 400 * MB - 2 * MB * t)
    assert set(sizes) == {1}


def test_busy_average_is_time_weighted():
    p = policy(busy_window_s=100)
    # busy for 9 s, then idle sampled ten times within 1 s: still mostly busy
    p.decide(Observation(now=0, actors=1, busy=1.0))
    for i in range(10):
        p.decide(Observation(now=9 + i / 10, actors=1, busy=0.0))
    assert p.busy_average() == pytest.approx(9 / 9.9)


def test_lag_growth_is_the_fitted_trend_across_the_window():
    p = policy(trend_window_s=10)
    for t in range(11):
        p.decide(Observation(now=t, actors=1, busy=0.0, lag_bytes=1000 * t + (300 if t % 2 else 0)))
    assert p.lag_growth() == pytest.approx(10_000, rel=0.1)


@pytest.mark.parametrize(("kw", "words"), [
    (dict(min_actors=0, max_actors=2), "min_actors"),
    (dict(min_actors=3, max_actors=2), "min_actors <= max_actors"),
    (dict(busy_low=0.8, busy_high=0.5), "busy_low < busy_high"),
])
def test_bad_settings_are_refused(kw, words):
    with pytest.raises(ValueError, match=words):
        policy(**kw)


def test_initial_target_is_clamped_to_the_bounds():
    assert policy(min_actors=2, max_actors=4).target == 2
    assert policy(min_actors=1, max_actors=4, target=9).target == 4


def test_resource_bundle_leaves_out_zero_amounts():
    assert resource_bundle(1, 0, None) == {"CPU": 1.0}
    assert resource_bundle(0, 1, {"embedcluster_gpu": 1}) == {"GPU": 1.0, "embedcluster_gpu": 1.0}
    assert resource_bundle(None) == {"CPU": 1.0}  # Ray's default for an actor's placement
    assert resource_bundle(0, 0, {}) == {}


def test_actor_factory_bundle_is_what_its_options_reserve():
    factory = ActorFactory(object, {"num_cpus": 0.5, "num_gpus": 1, "resources": {"embedcluster_gpu": 1},
                                    "max_concurrency": 3}, ())
    assert factory.bundle() == {"CPU": 0.5, "GPU": 1.0, "embedcluster_gpu": 1.0}
