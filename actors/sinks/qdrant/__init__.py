"""Qdrant sinks: their settings (``config.py``), the embedded store on Qdrant Edge (``edge.py``, an empty
``sink.url``), the sink over qdrant-client for a server (``sink.py``) and the layout both store (``layout.py``)."""

from actors.lazy import lazy_exports

# loaded on first use: see actors/lazy.py
_EXPORTS = {
    "QdrantSinkConfig": "actors.sinks.qdrant.config",
    "QdrantSink": "actors.sinks.qdrant.sink",
    "EdgeSink": "actors.sinks.qdrant.edge",
    "_CallTransaction": "actors.sinks.qdrant.sink",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["EdgeSink", "QdrantSink", "QdrantSinkConfig", "_CallTransaction"]
