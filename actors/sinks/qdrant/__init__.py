"""Qdrant sink: its settings (``config.py``) and the sink over qdrant-client (``sink.py``)."""

from actors.lazy import lazy_exports

# loaded on first use: see actors/lazy.py
_EXPORTS = {
    "QdrantSinkConfig": "actors.sinks.qdrant.config",
    "QdrantSink": "actors.sinks.qdrant.sink",
    "_CallTransaction": "actors.sinks.qdrant.sink",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["QdrantSink", "QdrantSinkConfig", "_CallTransaction"]
