"""Logging set-up shared by the CLI and the actors."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once per process (actors call it too)."""
    level = (level or os.environ.get("EMBEDCLUSTER_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    if not any(getattr(h, "_embedcluster", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._embedcluster = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    # third-party chatter that would drown the pipeline's own messages
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
