"""Vector sinks: one interface (:class:`VectorSink`), several stores."""

from actors.sinks.base import (
    PointError,
    PointTooLarge,
    SearchHit,
    SinkError,
    StoredPoint,
    VectorPoint,
    VectorSink,
    open_sink,
)

__all__ = [
    "PointError", "PointTooLarge", "SearchHit", "SinkError", "StoredPoint", "VectorPoint", "VectorSink", "open_sink",
]
