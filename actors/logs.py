"""Logging set-up shared by the CLI and the actors."""

from __future__ import annotations

import logging
import os
import re

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


def error_line(exc: BaseException, with_type: bool = False) -> str:
    """One line for an error, looking through Ray's wrappers to the cause.

    Errors raised inside actors reach the caller wrapped (``RayTaskError``
    with ``.cause``, or a text that embeds the remote traceback); users want
    the original message, which is the last line of such a traceback.
    """
    while getattr(exc, "cause", None) is not None:
        exc = exc.cause  # type: ignore[attr-defined]
    message = str(exc)
    remote_traceback = "Traceback" in message
    lines = [line for line in message.strip().splitlines() if line.strip()]
    text = (lines[-1] if remote_traceback else lines[0]).strip() if lines else ""
    remote = re.match(r"^[\w.]+(?:Error|Exception): (.+)$", text)
    if remote and remote_traceback:
        text = remote.group(1)  # "pkg.mod.SinkError: message" from a remote traceback
    if with_type or not text:
        return f"{type(exc).__name__}: {text}".rstrip(": ")
    return text
