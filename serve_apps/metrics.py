"""``GET /metrics``: the pipeline's figures in the Prometheus text format (prometheus-client).

Built from the coordinator's ``stats`` on every scrape (a fresh registry each time: the
figures live in the pipeline actor, not in this replica).  Numbers and the pipeline
state only: no error text, DSN or key can reach a metric.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any, Sequence

from prometheus_client import CollectorRegistry, Gauge, Histogram as _PromHistogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401 - the route's media type

#: the pipeline's states (``embedcluster_state{state=...}`` is 1 for the current one)
STATES = ("starting", "backfilling", "streaming", "recovering", "halted", "stopped")

#: metric name -> (help, how to read it from the stats)
_FIGURES: dict[str, tuple[str, Any]] = {
    "embedcluster_rows_applied": ("Changes written to the store since the pipeline started", lambda s: s.get("rows_applied")),
    "embedcluster_backfill_rows": ("Rows written by the backfill", lambda s: s.get("backfill_rows")),
    "embedcluster_backfill_rows_total": ("Rows of the snapshot this run backfills (an estimate above 1M rows)",
                                         lambda s: (s.get("backfill") or {}).get("rows_total")),
    "embedcluster_backfill_eta_seconds": ("Seconds the backfill still needs at its current rate",
                                          lambda s: (s.get("backfill") or {}).get("eta_seconds")),
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
    "embedcluster_changes_per_second": ("Changes written per second over the last 10 s",
                                        lambda s: s.get("changes_per_second")),
    "embedcluster_embedding_tokens": ("Tokens through the model (real, not padding)",
                                      lambda s: (s.get("embedding") or {}).get("tokens")),
    "embedcluster_embedding_forward_passes": ("Model forward passes (texts / passes: the mean batch size)",
                                              lambda s: (s.get("embedding") or {}).get("forward_passes")),
    "embedcluster_embedding_seconds": ("Seconds the embedding actors spent in the model",
                                       lambda s: (s.get("embedding") or {}).get("seconds")),
    "embedcluster_embedding_batch_texts_mean": ("Mean texts per forward pass since start",
                                                lambda s: _mean_batch(s.get("embedding") or {})),
}


def _mean_batch(embedding: dict[str, Any]) -> float | None:
    passes = embedding.get("forward_passes")
    return embedding.get("unique_texts", 0) / passes if passes else None


#: seconds: from 5 ms (a single-row commit on an idle pipeline) to 10 minutes (a backlog)
FRESHNESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
#: seconds a search takes in this replica, request to answer
SEARCH_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Histogram:
    """Counts of observations per bucket, kept where they happen (the coordinator) and carried
    in ``/stats`` as plain numbers: :meth:`as_dict` -> ``{"buckets", "counts", "sum", "count"}``
    (``counts[i]``: observations <= ``buckets[i]``, not cumulative; the last one: above all)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"buckets": list(self.buckets), "counts": list(self.counts), "sum": round(self.sum, 6),
                    "count": self.count}

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None before any observation)."""
        with self._lock:
            if not self.count:
                return None
            rank, seen = q * self.count, 0
            for bound, n in zip((*self.buckets, float("inf")), self.counts):
                seen += n
                if seen >= rank:
                    return bound
            return float("inf")


class _StatsHistograms(Collector):
    """The histograms carried in the stats (see :class:`Histogram`), as Prometheus histograms."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def collect(self):  # noqa: ANN201 - prometheus_client's protocol
        for name, help_text in _HISTOGRAMS.items():
            data = self.stats.get(name.removeprefix("embedcluster_"))
            if not isinstance(data, dict) or "buckets" not in data:
                continue
            cumulative, buckets = 0, []
            for bound, n in zip([*data["buckets"], float("inf")], data["counts"]):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
            yield HistogramMetricFamily(name, help_text, buckets=buckets, sum_value=data["sum"])


_HISTOGRAMS = {
    "embedcluster_freshness_seconds": "Source commit to durably written (acknowledgeable to the slot), per batch",
}

#: this replica's search latency (a process-wide metric: each replica answers for its own requests)
SEARCH_REGISTRY = CollectorRegistry()
SEARCH_SECONDS = _PromHistogram("embedcluster_search_seconds", "Search requests answered by this replica, "
                                "request to answer", ["mode"], buckets=SEARCH_BUCKETS, registry=SEARCH_REGISTRY)


def render(stats: dict[str, Any], replica: bool = True) -> bytes:
    """The Prometheus exposition of ``stats`` (what ``/stats`` returns), plus this replica's search
    latency when ``replica``."""
    registry = CollectorRegistry()
    registry.register(_StatsHistograms(stats))
    for name, (help_text, read) in _FIGURES.items():
        value = read(stats)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            Gauge(name, help_text, registry=registry).set(value)
    state = Gauge("embedcluster_state", "1 for the pipeline's current state", ["state"], registry=registry)
    current = stats.get("state")
    for name in STATES:
        state.labels(state=name).set(1 if name == current else 0)
    out = generate_latest(registry)
    return out + generate_latest(SEARCH_REGISTRY) if replica else out
