"""serve_apps/search.py: query validation, result JSON, the API key, errors, the OpenAPI document (no Ray started)."""

from __future__ import annotations

import json

import types

import pytest

from actors.sinks.base import SearchHit
from serve_apps import search
from serve_apps.search import (
    MAX_BODY_BYTES, MAX_K, MAX_QUERY_CHARS, bearer_token_ok, hit_json, page_html, parse_body, parse_query,
)


def test_default_k():
    assert parse_query({"q": "sand planet"})[:2] == ("sand planet", 5)


def test_query_is_stripped_and_k_parsed():
    assert parse_query({"q": "  dune  ", "k": "7"})[:2] == ("dune", 7)


@pytest.mark.parametrize("k", ["1", "100", " 3"])
def test_k_bounds_accepted(k):
    assert parse_query({"q": "x", "k": k})[1] == int(k)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({}, "missing query"),
        ({"q": ""}, "missing query"),
        ({"q": "   \t\n"}, "missing query"),
        ({"k": "5"}, "missing query"),
        ({"q": "x", "k": "abc"}, "integer"),
        ({"q": "x", "k": "2.5"}, "integer"),
        ({"q": "x", "k": ""}, "integer"),
        ({"q": "x", "k": "0"}, "from 1 to 100"),
        ({"q": "x", "k": "-1"}, "from 1 to 100"),
        ({"q": "x", "k": "101"}, "from 1 to 100"),
    ],
)
def test_bad_params(params, needle):
    with pytest.raises(ValueError) as info:
        parse_query(params)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_max_k_is_100():
    assert MAX_K == 100


def test_k_error_shows_value():
    with pytest.raises(ValueError, match="101"):
        parse_query({"q": "x", "k": "101"})
    with pytest.raises(ValueError, match="'abc'"):
        parse_query({"q": "x", "k": "abc"})


def test_hit_json_single_column_key_is_scalar():
    hit = SearchHit(table="public.books", key=[7], score=0.875, payload={"name": "Dune"})
    assert hit_json(hit) == {"table": "public.books", "id": 7, "score": 0.875, "payload": {"name": "Dune"}}


def test_hit_json_single_text_key_is_scalar():
    assert hit_json(SearchHit("public.t", ["abc"], 0.5, {}))["id"] == "abc"


def test_hit_json_composite_key_is_list():
    hit = SearchHit(table="public.t", key=["acme", 7], score=0.5, payload={})
    out = hit_json(hit)
    assert out["id"] == ["acme", 7]
    assert isinstance(out["id"], list)
    assert out["table"] == "public.t" and out["score"] == 0.5 and out["payload"] == {}


def test_hit_json_is_json_serialisable():
    import json

    out = json.loads(json.dumps(hit_json(SearchHit("public.t", [1, "x"], 0.25, {"a": [1, None]}))))
    assert out == {"table": "public.t", "id": [1, "x"], "score": 0.25, "payload": {"a": [1, None]}}



def test_query_length_is_bounded():
    assert parse_query({"q": "x" * MAX_QUERY_CHARS})[0] == "x" * MAX_QUERY_CHARS
    with pytest.raises(ValueError, match=f"at most {MAX_QUERY_CHARS}"):
        parse_query({"q": "x" * (MAX_QUERY_CHARS + 1)})


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b'{"q": "dune"}', ("dune", 5)), (b'{"q": "  dune ", "k": 7}', ("dune", 7)), ('{"q": "\u00e9t\u00e9"}'.encode(), ("été", 5))],
)
def test_body_accepted(body, expected):
    assert parse_body(body)[:2] == expected


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "must be JSON"), (b"nope", "must be JSON"), (b"\xff\xfe", "must be JSON"), (b"[" * 100_000, "must be JSON"),
        (b"[1]", "JSON object"), (b'"q"', "JSON object"), (b"{}", "missing query"), (b'{"q": "  "}', "missing query"),
        (b'{"q": 7}', "q must be a string"), (b'{"q": null}', "missing query"), (b'{"q": "x", "k": "5"}', "integer"),
        (b'{"q": "x", "k": true}', "integer"), (b'{"q": "x", "k": 2.0}', "integer"), (b'{"q": "x", "k": 0}', "from 1 to 100"),
        (b'{"q": "x", "extra": 1}', "unknown key 'extra'"), (b'{"q": "a\\ud800b"}', "unpaired surrogate"),
        (b'{"q": "x", "k": 1' + b"0" * 5000 + b"}", "must be JSON"),
    ],
)
def test_bad_bodies(body, needle):
    with pytest.raises(ValueError) as info:
        parse_body(body)
    assert needle in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 200


def test_k_error_does_not_echo_a_huge_value():
    with pytest.raises(ValueError) as info:
        parse_query({"q": "x", "k": "9" * 5000})
    assert len(str(info.value)) < 200


# -- the API key (BearerAuth), routes and the OpenAPI document, on the real FastAPI app ----------

KEY = "test-key-0123456789abcdef"
WRONG = "test-key-0123456789abcdeX"  # same length, last character differs
assert len(WRONG) == len(KEY)


class _Remote:
    def __init__(self, fn):
        self.fn = fn

    async def remote(self, *args):
        return self.fn(*args)


class _FakeReplica:
    """What the routes read from the Serve replica (``servable_object``): the key, the coordinator, the page."""

    def __init__(self, api_key, stats):
        self._api_key = api_key
        self.pipeline = types.SimpleNamespace(stats=_Remote(lambda: dict(stats)))
        self.page = page_html()
        self.payload_fields = {"public.books": ["year", "author"], "public.films": ["title"]}
        self.model_ready = True

    async def _query_model_ready(self):
        return self.model_ready


@pytest.fixture()
def client(monkeypatch):
    """A TestClient on ``serve_apps.search.api``; ``client(key, stats)`` sets what the replica holds."""
    import ray.serve
    from fastapi.testclient import TestClient

    def make(api_key=KEY, stats=None):
        replica = _FakeReplica(api_key, stats or {"state": "streaming", "rows_applied": 3, "last_error": None})
        monkeypatch.setattr(ray.serve, "get_replica_context", lambda: types.SimpleNamespace(servable_object=replica))
        return TestClient(search.api)

    return make


def _assert_401_json(response, challenge="Bearer"):
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["www-authenticate"] == challenge
    assert set(response.json()) == {"error"} and "\n" not in response.json()["error"]


@pytest.mark.parametrize("path", ["/search?q=x", "/stats", "/", "/openapi.json", "/no-such-route", "/healthz/"])
def test_every_route_but_healthz_needs_the_key(client, path):
    c = client()
    _assert_401_json(c.get(path))
    _assert_401_json(c.get(path, headers={"Authorization": f"Bearer {WRONG}"}), 'Bearer error="invalid_token"')
    _assert_401_json(c.get(path, headers={"Authorization": KEY}), 'Bearer error="invalid_token"')  # no scheme
    _assert_401_json(c.get(path, headers={"Authorization": f"Basic {KEY}"}), 'Bearer error="invalid_token"')


def test_right_key_passes(client):
    c = client()
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} {KEY}"}
        assert c.get("/stats", headers=headers).json()["rows_applied"] == 3
        assert c.get("/", headers=headers).status_code == 200
        assert c.get("/openapi.json", headers=headers).json()["info"]["title"] == "embedcluster search"
        assert c.get("/search", headers=headers).status_code == 400  # past the key: q is missing


def test_healthz_needs_no_key(client):
    assert client().get("/healthz").json() == {"status": "ok"}
    stopped = client(stats={"state": "stopped", "last_error": "boom"}).get("/healthz")
    assert stopped.status_code == 503 and stopped.json() == {"status": "stopped", "error": "boom"}


def test_healthz_says_starting_until_the_pipeline_and_the_query_model_are_up(client, monkeypatch):
    """The app is deployed while the run still creates its actors (looked up by name) and the
    query model loads: 503 "starting" until both are there."""
    import ray.serve

    from fastapi.testclient import TestClient

    class Starting(_FakeReplica):
        created = False

        @property
        def pipeline(self):
            if not self.created:
                raise LookupError("the pipeline's pipeline actor is not running yet")  # as _NamedActor.get
            return self._pipeline

        @pipeline.setter
        def pipeline(self, value):
            self._pipeline = value

    replica = Starting(None, {"state": "streaming"})
    monkeypatch.setattr(ray.serve, "get_replica_context", lambda: types.SimpleNamespace(servable_object=replica))
    c = TestClient(search.api)
    early = c.get("/healthz")
    assert early.status_code == 503 and early.json()["status"] == "starting", early.json()
    assert c.get("/stats").status_code == 503
    replica.created = True
    replica.model_ready = False
    loading = c.get("/healthz")
    assert loading.status_code == 503 and loading.json() == {"status": "starting",
                                                            "error": "the query model is still loading"}
    replica.model_ready = True
    assert c.get("/healthz").json() == {"status": "ok"}


def test_odd_authorization_headers_are_refused_not_errors(client):
    c = client()
    for value in [b"Bearer", b"Bearer ", f"Bearer  {KEY}x".encode(), b"Bearer \xe9\xff" + KEY.encode(),
                  b"Bearer \x00" + KEY.encode(), f"Bearer {KEY * 400}".encode()]:
        _assert_401_json(c.get("/stats", headers={"Authorization": value}), 'Bearer error="invalid_token"')
    two = c.get("/stats", headers=[("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {KEY}")])
    assert two.status_code == 401


def test_key_is_compared_in_constant_time(monkeypatch):
    calls = []
    from serve_apps import auth

    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert bearer_token_ok(f"Bearer {KEY}".encode(), KEY)
    assert not bearer_token_ok(f"Bearer {WRONG}".encode(), KEY)
    assert calls == [(KEY.encode(), KEY.encode()), (WRONG.encode(), KEY.encode())]


def test_browser_gets_the_page_with_the_401(client):
    page = client().get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 401 and page.headers["www-authenticate"] == "Bearer"
    assert page.headers["content-type"].startswith("text/html")
    # the page asks for the key, keeps it for the tab only and sends it as a bearer token
    assert 'id="keyform"' in page.text and "sessionStorage" in page.text
    assert '"Authorization": "Bearer " + key' in page.text
    assert KEY not in page.text


def test_no_key_configured_means_open(client):
    c = client(api_key=None)
    assert c.get("/stats").status_code == 200
    assert c.get("/").status_code == 200
    assert c.get("/openapi.json").status_code == 200


def test_unknown_key_state_fails_closed():
    """Outside a Serve replica the key cannot be read: requests are refused, never let through."""
    from fastapi.testclient import TestClient

    for path in ("/stats", "/", "/openapi.json"):
        response = TestClient(search.api).get(path)
        assert response.status_code == 503 and set(response.json()) == {"error"}


def test_errors_are_json_with_one_shape(client):
    c = client()
    auth = {"Authorization": f"Bearer {KEY}"}
    for response in (c.get("/no-such-route", headers=auth), c.put("/search", headers=auth),
                     c.get("/search?q=x&k=0", headers=auth), c.get("/search?q=%20%09", headers=auth)):
        assert response.status_code in (400, 404, 405), response.text
        assert response.headers["content-type"].startswith("application/json")
        assert set(response.json()) == {"error"}


def test_post_search_errors(client):
    c = client()
    auth = {"Authorization": f"Bearer {KEY}"}
    too_big = c.post("/search", headers=auth, content=b'{"q": "' + b"x" * MAX_BODY_BYTES + b'"}')
    assert too_big.status_code == 413 and set(too_big.json()) == {"error"}
    long_q = c.post("/search", headers=auth, json={"q": "x" * 100_000})
    assert long_q.status_code == 400 and "at most" in long_q.json()["error"]
    assert c.post("/search", headers=auth, content=b"{").status_code == 400
    _assert_401_json(c.post("/search", json={"q": "x"}))


def test_stats_and_healthz_are_scrubbed(client):
    from actors.logs import register_secret

    register_secret("registered-sink-secret")
    stats = {"state": "stopped", "last_error": "mysql://root:pw-in-url@db/v: registered-sink-secret refused"}
    c = client(stats=stats)
    shown = c.get("/stats", headers={"Authorization": f"Bearer {KEY}"}).text + c.get("/healthz").text
    assert "pw-in-url" not in shown and "registered-sink-secret" not in shown
    assert "mysql://root:***@db/v" in shown


def test_openapi_describes_the_real_routes():
    doc = search.api.openapi()
    assert {path: set(methods) for path, methods in doc["paths"].items()} == {
        "/search": {"get", "post"}, "/healthz": {"get"}, "/stats": {"get"}, "/metrics": {"get"}, "/": {"get"}}
    body = doc["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["q"] and set(body["properties"]) == {"q", "k", "table", "filter", "score_threshold", "mode"}
    params = {p["name"]: p for p in doc["paths"]["/search"]["get"]["parameters"]}
    assert params["q"]["required"] is True and params["q"]["schema"]["maxLength"] == MAX_QUERY_CHARS
    assert params["k"]["schema"] == {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 5}
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/stats"]["get"]["security"] == [{"bearer": []}, {}]
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "[serve] api_key, when one is set"}
    responses = doc["paths"]["/search"]["get"]["responses"]
    assert {"200", "400", "401", "503"} <= set(responses) and "422" not in responses


def test_metrics_route_needs_the_key_and_exposes_the_figures(client):
    c = client(stats={"state": "streaming", "rows_applied": 7, "dead_letters": 2, "last_error": None})
    _assert_401_json(c.get("/metrics"))
    shown = c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/plain")
    assert "embedcluster_dead_letters 2.0" in shown.text and 'embedcluster_state{state="streaming"} 1.0' in shown.text


# -- search parameters: table, filter, score_threshold, mode --------------------------------------

FIELDS = {"public.books": ["year", "author", "odd.name"], "public.films": ["title"]}


def test_full_body_is_parsed_into_store_filters():
    from actors.sinks.base import FieldFilter

    body = json.dumps({"q": " dune ", "k": 10, "table": "public.books", "score_threshold": 0.2, "mode": "dense",
                       "filter": {"year": {"gte": 1950, "lt": 2000}, "author": {"in": ["Herbert", "Le Guin"]},
                                  "odd.name": True}}).encode()
    req = parse_body(body, FIELDS)
    assert req == ("dune", 10, "public.books", (
        FieldFilter("year", range=(("gte", 1950), ("lt", 2000))),
        FieldFilter("author", any_of=("Herbert", "Le Guin")),
        FieldFilter("odd.name", equals=True)), 0.2, "dense")
    same = parse_query({"q": "dune", "k": "10", "table": "public.books", "score_threshold": "0.2",
                        "filter": json.dumps({"year": {"gte": 1950, "lt": 2000}, "author": {"in": ["Herbert", "Le Guin"]},
                                              "odd.name": True})}, FIELDS)
    assert same == req
    assert parse_query({"q": "x", "mode": "keyword"}, FIELDS).mode == "keyword"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"filter": {"isbn": 1}}, "filter field 'isbn' is not in the payload"),
        ({"table": "public.films", "filter": {"year": 1}}, "filter field 'year' is not in the payload (payload fields: title)"),
        ({"table": "public.nope"}, "table 'public.nope' is not indexed"),
        ({"filter": [1]}, "filter must be a JSON object"),
        ({"filter": {"year": {"gte": "1950"}}}, "filter field 'year': gte must be a number"),
        ({"filter": {"year": {"between": [1, 2]}}}, "filter field 'year': a condition is"),
        ({"filter": {"year": {}}}, "filter field 'year': a condition is"),
        ({"filter": {"year": None}}, "filter field 'year': a condition is"),
        ({"filter": {"year": [1950]}}, "filter field 'year': a condition is"),
        ({"filter": {"author": {"in": "Herbert"}}}, "'in' takes a list"),
        ({"filter": {"author": {"in": [{"x": 1}]}}}, "'in' takes a list"),
        ({"score_threshold": 2}, "score_threshold must be a number from -1 to 1"),
        ({"score_threshold": "0.5"}, "score_threshold must be a number"),
        ({"mode": "fuzzy"}, "mode must be one of dense, hybrid, keyword"),
        ({"mode": "hybrid", "score_threshold": 0.1}, "score_threshold applies to mode 'dense' only"),
        ({"filters": {}}, "unknown key 'filters'"),
    ],
)
def test_bad_search_options_are_400_lines_naming_the_field(body, needle):
    with pytest.raises(ValueError) as info:
        parse_body(json.dumps({"q": "x", **body}).encode(), FIELDS)
    assert needle in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 300


def test_bad_get_filter_json_and_unknown_parameters():
    with pytest.raises(ValueError, match="filter must be JSON"):
        parse_query({"q": "x", "filter": "{year: 1}"}, FIELDS)
    with pytest.raises(ValueError, match="unknown parameter 'filters'"):
        parse_query({"q": "x", "filters": "{}"}, FIELDS)
    with pytest.raises(ValueError, match="score_threshold must be a number"):
        parse_query({"q": "x", "score_threshold": "nan"}, FIELDS)


def test_filter_errors_over_http_are_json_400s(client):
    c = client(api_key=None)
    r = c.post("/search", json={"q": "x", "filter": {"isbn": 1}})
    assert r.status_code == 400 and "isbn" in r.json()["error"]
    r = c.get("/search", params={"q": "x", "filter": json.dumps({"year": {"gte": "x"}})})
    assert r.status_code == 400 and "gte must be a number" in r.json()["error"]


def test_interactive_docs_are_served_locally_without_the_key(client):
    c = client()
    page = c.get("/docs")
    assert page.status_code == 200 and "/docs/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
    assert "cdn" not in page.text.lower()
    js = c.get("/docs/swagger-ui-bundle.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("application/javascript") and len(js.content) > 100_000
    assert c.get("/docs/swagger-ui.css").status_code == 200
    _assert_401_json(c.get("/docs/other.js"))  # only the two assets are public
    doc = c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    body = doc["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"q", "k", "table", "filter", "score_threshold", "mode"}


def test_concurrent_queries_share_one_forward_pass_of_the_query_model(monkeypatch):
    """QueryEmbedder (its own deployment) batches the calls that arrive together (``@serve.batch``):
    five concurrent queries, one pass of five; each vector is the one its text gets alone."""
    import asyncio

    import numpy as np

    from actors.embedder import Embedder, EmbeddingConfig
    from serve_apps.search import QueryEmbedder

    import ray.serve

    # what @serve.batch reads from the replica it runs in (outside Serve here)
    context = types.SimpleNamespace(_deployment_config=types.SimpleNamespace(max_ongoing_requests=256))
    monkeypatch.setattr(ray.serve, "get_replica_context", lambda: context)
    model = QueryEmbedder.func_or_class(EmbeddingConfig(), 1, "WARNING")
    texts = ["battle in space", "a baker", "time travel", "desert planet", "virtual reality"]

    async def together():
        return await asyncio.gather(*(model.embed(t) for t in texts))

    answers = asyncio.run(together())
    assert [batch for _, _, batch in answers] == [5] * 5
    assert all(ms > 0 for _, ms, _ in answers)
    alone = Embedder(device="cpu", threads=1).embed(texts)
    for (vector, _, _), expected in zip(answers, alone):
        assert float(np.dot(vector, expected)) > 0.999
