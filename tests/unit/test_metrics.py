"""serve_apps/metrics.py: the Prometheus exposition of the pipeline's stats."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from serve_apps.metrics import render


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_figures_and_state_are_exposed():
    stats = {"state": "streaming", "rows_applied": 42, "dead_letters": 3, "lag_bytes": 1024, "errors": 1,
             "sink_unavailable_s": None, "embedding": {"texts": 40, "truncated": 2},
             "last_error": "password=hunter2 would never be a metric"}
    samples = _samples(render(stats))
    assert samples[("embedcluster_rows_applied", ())] == 42
    assert samples[("embedcluster_dead_letters", ())] == 3
    assert samples[("embedcluster_slot_lag_bytes", ())] == 1024
    assert samples[("embedcluster_sink_unavailable_seconds", ())] == 0
    assert samples[("embedcluster_texts_embedded", ())] == 40
    assert samples[("embedcluster_state", (("state", "streaming"),))] == 1
    assert samples[("embedcluster_state", (("state", "halted"),))] == 0
    assert b"hunter2" not in render(stats)


def test_unknown_figures_are_left_out():
    samples = _samples(render({"state": "starting", "lag_bytes": None}))
    assert ("embedcluster_slot_lag_bytes", ()) not in samples
    assert samples[("embedcluster_state", (("state", "starting"),))] == 1


def test_freshness_histogram_travels_in_the_stats_and_renders_cumulative():
    from serve_apps.metrics import FRESHNESS_BUCKETS, Histogram

    h = Histogram(FRESHNESS_BUCKETS)
    for value in (0.004, 0.02, 0.02, 0.3, 1000.0):
        h.observe(value)
    data = h.as_dict()
    assert data["count"] == 5 and sum(data["counts"]) == 5 and data["sum"] == 1000.344
    assert h.quantile(0.5) == 0.025 and h.quantile(1.0) == float("inf")
    samples = _samples(render({"state": "streaming", "freshness_seconds": data,
                               "embedding": {"unique_texts": 30, "forward_passes": 3, "tokens": 900, "seconds": 1.5},
                               "changes_per_second": 12.5}))
    assert samples[("embedcluster_freshness_seconds_bucket", (("le", "0.005"),))] == 1
    assert samples[("embedcluster_freshness_seconds_bucket", (("le", "0.025"),))] == 3
    assert samples[("embedcluster_freshness_seconds_bucket", (("le", "0.5"),))] == 4
    assert samples[("embedcluster_freshness_seconds_bucket", (("le", "+Inf"),))] == 5
    assert samples[("embedcluster_freshness_seconds_count", ())] == 5
    assert samples[("embedcluster_embedding_batch_texts_mean", ())] == 10
    assert samples[("embedcluster_embedding_tokens", ())] == 900
    assert samples[("embedcluster_changes_per_second", ())] == 12.5
    assert Histogram((1.0,)).quantile(0.5) is None


def test_search_latency_is_this_replicas_histogram():
    from serve_apps.metrics import SEARCH_SECONDS

    SEARCH_SECONDS.labels(mode="dense").observe(0.007)
    samples = _samples(render({"state": "streaming"}))
    assert samples[("embedcluster_search_seconds_bucket", (("le", "0.01"), ("mode", "dense")))] >= 1
    assert not any(name.startswith("embedcluster_search") for name, _ in _samples(render({}, replica=False)))
