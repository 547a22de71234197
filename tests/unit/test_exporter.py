"""The light metrics endpoint (``[serve] metrics_port``): routes, the API key, scrubbing, errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from actors.logs import register_secret
from serve_apps.auth import bearer_token_ok
from serve_apps.exporter import StatsExporter

KEY = "exp-0123456789abcdef0123"


def _get(port: int, path: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture()
def exporter():
    made = []

    def make(stats, api_key=None, max_age_s=0.0):
        e = StatsExporter(stats, "127.0.0.1", 0, api_key, max_age_s=max_age_s).start()
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def test_metrics_and_stats_from_the_figures(exporter):
    secret = "hunter2-dsn-password"
    register_secret(secret)
    calls = []

    def stats():
        calls.append(1)
        return {"state": "streaming", "rows_applied": 42, "lag_bytes": 0,
                "last_error": f"could not connect with password {secret}"}

    e = exporter(stats)
    status, headers, body = _get(e.port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert "embedcluster_rows_applied 42.0" in body.decode()
    assert 'embedcluster_state{state="streaming"} 1.0' in body.decode()
    status, _, body = _get(e.port, "/stats?x=1")
    doc = json.loads(body)
    assert status == 200 and doc["rows_applied"] == 42
    assert secret not in body.decode() and "***" in doc["last_error"]  # scrubbed
    assert len(calls) == 2  # figures read at each request
    status, _, body = _get(e.port, "/search?q=x")
    assert status == 404 and "GET /metrics or /stats" in json.loads(body)["error"]


def test_the_api_key_is_required_when_set(exporter):
    e = exporter(lambda: {"state": "streaming"}, api_key=KEY)
    status, headers, body = _get(e.port, "/metrics")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "api_key" in json.loads(body)["error"]
    status, headers, _ = _get(e.port, "/stats", key=KEY[:-1] + "X")
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert _get(e.port, "/stats", key=KEY)[0] == 200
    assert _get(e.port, "/metrics", key=KEY)[0] == 200


def test_figures_that_fail_are_a_503_line_and_the_server_keeps_answering(exporter):
    state = {"fail": True}

    def stats():
        if state["fail"]:
            raise RuntimeError("the coordinator is restarting")
        return {"state": "streaming"}

    e = exporter(stats)
    status, _, body = _get(e.port, "/stats")
    assert status == 503 and "the coordinator is restarting" in json.loads(body)["error"]
    state["fail"] = False
    assert _get(e.port, "/stats")[0] == 200


def test_a_taken_port_is_an_error_to_report():
    first = StatsExporter(dict, "127.0.0.1", 0).start()
    try:
        with pytest.raises(OSError):
            StatsExporter(dict, "127.0.0.1", first.port)
    finally:
        first.close()


def test_bearer_comparison():
    assert bearer_token_ok(f"Bearer {KEY}", KEY) and bearer_token_ok(f"bearer  {KEY} ", KEY)
    assert not bearer_token_ok(None, KEY) and not bearer_token_ok(KEY, KEY) and not bearer_token_ok(f"Basic {KEY}", KEY)
    assert not bearer_token_ok("Bearer \udcff", KEY)  # any header byte: refused, not an error


def test_an_answer_is_rendered_at_most_every_max_age(exporter):
    """Scraped many times a second, the figures are read and rendered once per interval."""
    calls = []
    e = exporter(lambda: calls.append(1) or {"state": "streaming", "rows_applied": len(calls)}, max_age_s=60)
    bodies = {_get(e.port, "/metrics")[2] for _ in range(5)}
    assert len(bodies) == 1 and len(calls) == 1
    assert json.loads(_get(e.port, "/stats")[2])["rows_applied"] == 2  # each route its own answer
    assert len(calls) == 2
