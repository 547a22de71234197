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
