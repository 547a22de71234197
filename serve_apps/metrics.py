"""``GET /metrics``: the pipeline's figures in the Prometheus text format (prometheus-client).

Built from the coordinator's ``stats`` on every scrape (a fresh registry each time: the
figures live in the pipeline actor, not in this replica).  Numbers and the pipeline
state only: no error text, DSN or key can reach a metric.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - the route's media type

#: the pipeline's states (``embedcluster_state{state=...}`` is 1 for the current one)
STATES = ("starting", "backfilling", "streaming", "recovering", "halted", "stopped")

#: metric name -> (help, how to read it from the stats)
_FIGURES: dict[str, tuple[str, Any]] = {
    "embedcluster_rows_applied": ("Changes written to the store since the pipeline started", lambda s: s.get("rows_applied")),
    "embedcluster_backfill_rows": ("Rows written by the backfill", lambda s: s.get("backfill_rows")),
    "embedcluster_batches_applied": ("Batches written to the store", lambda s: s.get("batches_applied")),
    "embedcluster_errors": ("Pipeline attempts that failed and were replayed from the slot", lambda s: s.get("errors")),
    "embedcluster_dead_letters": ("Changes set aside as dead letters (embedcluster deadletter list)",
                                  lambda s: s.get("dead_letters")),
    "embedcluster_slot_lag_bytes": ("WAL bytes the replication slot has not confirmed", lambda s: s.get("lag_bytes")),
    "embedcluster_sink_unavailable_seconds": ("How long the sink has not answered (0: it answers)",
                                              lambda s: s.get("sink_unavailable_s") or 0),
    "embedcluster_texts_embedded": ("Texts embedded", lambda s: (s.get("embedding") or {}).get("texts")),
    "embedcluster_texts_truncated": ("Texts cut to the model's maximum length",
                                     lambda s: (s.get("embedding") or {}).get("truncated")),
}


def render(stats: dict[str, Any]) -> bytes:
    """The Prometheus exposition of ``stats`` (what ``/stats`` returns)."""
    registry = CollectorRegistry()
    for name, (help_text, read) in _FIGURES.items():
        value = read(stats)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            Gauge(name, help_text, registry=registry).set(value)
    state = Gauge("embedcluster_state", "1 for the pipeline's current state", ["state"], registry=registry)
    current = stats.get("state")
    for name in STATES:
        state.labels(state=name).set(1 if name == current else 0)
    return generate_latest(registry)
