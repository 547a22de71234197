"""Vector sinks: one interface (:class:`VectorSink`), several stores."""

from actors.sinks.base import SearchHit, StoredPoint, VectorPoint, VectorSink, open_sink

__all__ = ["SearchHit", "StoredPoint", "VectorPoint", "VectorSink", "open_sink"]
