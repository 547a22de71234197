"""Logging set-up shared by the CLI and the actors; secrets scrubbed from every line.

:func:`scrub` hides secrets in a text: URL passwords (``scheme://user:***@``),
libpq ``password=***``, and every value given to :func:`register_secret` or
:func:`register_dsn` (the configs register what they load: ``actors.config.Section``).  :func:`error_line`
scrubs what it returns, and :func:`setup_logging` installs :class:`ScrubFilter`
on the root logger's handlers, so log lines, ``last_error`` and error lines
never carry a secret.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any
from urllib.parse import unquote

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: what replaces a secret
MASK = "***"
#: registered values shorter than this are not scrubbed (a 1-3 character "secret"
#: would mangle every line); URL and ``password=`` forms are scrubbed at any length
MIN_SECRET_LENGTH = 4

# scheme://user:PASSWORD@host -- the password runs to the last '@' of the authority
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*):([^\s/?#]*)@")
# libpq key/value: password=secret, password = 'quoted \' secret'
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|\S+)", re.IGNORECASE)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secrets_sorted: tuple[str, ...] = ()


def register_secret(value: Any) -> None:
    """Scrub ``value`` (a str or a pydantic ``SecretStr``) from every line this process logs from now on.

    The value is taken whole (an API key, a password), percent-decoded as
    well; for a DSN or URL, whose host and database are no secret, use
    :func:`register_dsn`.  Values under :data:`MIN_SECRET_LENGTH` characters
    and None are ignored.
    """
    value = _plain(value)
    if value:
        _add({value, unquote(value)})


def register_dsn(value: Any) -> None:
    """Register the passwords inside a DSN or URL (``user:password@``, libpq ``password=...``) as secrets.

    A library may print a password on its own, or percent-decoded, away from
    the URL :func:`scrub` recognises; the rest of the DSN stays readable.
    """
    value = _plain(value)
    if not value:
        return
    found = {m.group(2) for m in _URL_PASSWORD.finditer(value)}
    for match in _KV_PASSWORD.finditer(value):
        raw = match.group(2)
        found.add(raw[1:-1] if len(raw) > 1 and raw[0] == raw[-1] == "'" else raw)
    _add(found | {unquote(v) for v in found})


def _plain(value: Any) -> str | None:
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    return value if isinstance(value, str) else None


def _add(values: set[str]) -> None:
    global _secrets_sorted
    values = {v for v in values if len(v) >= MIN_SECRET_LENGTH and v != MASK}
    with _secrets_lock:
        if values - _secrets:
            _secrets.update(values)
            _secrets_sorted = tuple(sorted(_secrets, key=len, reverse=True))  # longest first


def scrub_json(value: Any) -> Any:
    """``value`` with every string in it scrubbed of secrets (for /stats and /healthz)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_json(v) for v in value]
    return value


def scrub(text: str) -> str:
    """``text`` with URL passwords, libpq ``password=`` values and registered secrets replaced by ``***``."""
    if not isinstance(text, str) or not text:
        return text
    for secret in _secrets_sorted:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    return _KV_PASSWORD.sub(rf"\1{MASK}", text)


class ScrubFilter(logging.Filter):
    """A handler filter that scrubs a record's message, exception text and stack (see :func:`scrub`).

    Installed on handlers, not loggers: a logger's filters do not see the
    records its children propagate to it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to the formatter's own error
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


def install_scrub_filter(handler: logging.Handler) -> None:
    """Add a :class:`ScrubFilter` to ``handler`` unless it has one."""
    if not any(isinstance(f, ScrubFilter) for f in handler.filters):
        handler.addFilter(ScrubFilter())


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once per process (actors call it too)."""
    level = (level or os.environ.get("EMBEDCLUSTER_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    if not any(getattr(h, "_embedcluster", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._embedcluster = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for existing in root.handlers:  # ours, and any the process had (Ray's, pytest's)
        install_scrub_filter(existing)
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
        return scrub(f"{type(exc).__name__}: {text}".rstrip(": "))
    return scrub(text)
