"""A light endpoint for frequent scraping: ``GET /metrics`` and ``GET /stats`` served by the
process that holds the figures (the pipeline's coordinator), on ``[serve] metrics_port``.

The search app's own ``/metrics`` and ``/stats`` cross Ray Serve's HTTP proxy and a replica,
then call the coordinator: about 10 ms of CPU per request on a 2-core machine, which a client
polling 20 times a second takes from the pipeline (``benchmarks/bench_scrape.py``).  Here a
request is a Python HTTP server thread reading figures in the same process: no proxy, no
replica, no call across processes.

Same rules as the search app: the ``[serve] host`` (loopback by default; another host needs
the API key), ``Authorization: Bearer <key>`` on both routes when ``api_key`` is set, secrets
scrubbed from every string, errors as ``{"error": ...}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from actors.logs import error_line, scrub, scrub_json
from serve_apps import metrics
from serve_apps.auth import bearer_token_ok

log = logging.getLogger(__name__)

#: how long a rendered answer is sent again before the figures are read anew (seconds)
MAX_AGE_S = 0.25


class StatsExporter:
    """Serves ``stats()`` as ``/metrics`` (Prometheus text) and ``/stats`` (JSON) on ``host:port``
    from a daemon thread; :meth:`close` stops it.  ``port = 0`` takes a free port (:attr:`port`)."""

    def __init__(self, stats: Callable[[], dict[str, Any]], host: str, port: int, api_key: str | None = None,
                 max_age_s: float = MAX_AGE_S) -> None:
        exporter = self
        #: an answer is rendered at most every max_age_s and sent again meanwhile: many scrapers,
        #: or one scraping many times a second, cost one rendering per interval
        self.max_age_s = max_age_s
        self._rendered: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            server_version = "embedcluster"
            sys_version = ""

            def log_message(self, *args: Any) -> None:  # one line per scrape would flood the log
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                exporter._answer(self)

        self._stats = stats
        self._api_key = api_key
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-exporter", daemon=True)

    def start(self) -> "StatsExporter":
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _send(self, handler: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(body)

    def _error(self, handler: BaseHTTPRequestHandler, status: int, message: str,
               headers: dict[str, str] | None = None) -> None:
        self._send(handler, status, json.dumps({"error": scrub(message)}).encode(), "application/json", headers)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        if self._api_key is not None:
            given = handler.headers.get_all("Authorization") or []
            if len(given) != 1 or not bearer_token_ok(given[0], self._api_key):
                self._error(handler, 401, "invalid API key" if given else
                            "this endpoint needs the API key: send 'Authorization: Bearer <key>' ([serve] api_key)",
                            {"WWW-Authenticate": 'Bearer error="invalid_token"' if given else "Bearer"})
                return
        if path not in ("/metrics", "/stats"):
            self._error(handler, 404, f"no route {path[:100]!r} here: GET /metrics or /stats")
            return
        with self._lock:
            at, body = self._rendered.get(path, (float("-inf"), b""))
            if time.monotonic() - at >= self.max_age_s:
                try:
                    stats = self._stats()
                except Exception as exc:  # noqa: BLE001 - answer, do not kill the server thread
                    self._error(handler, 503, f"the pipeline's figures are unavailable: {error_line(exc)}")
                    return
                body = (metrics.render(stats, replica=False) if path == "/metrics"
                        else json.dumps(scrub_json(stats)).encode())
                self._rendered[path] = (time.monotonic(), body)
        self._send(handler, 200, body, metrics.CONTENT_TYPE_LATEST if path == "/metrics" else "application/json")
