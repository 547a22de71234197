"""The search app: a Ray Serve deployment with a FastAPI ingress.

Routes (the public HTTP API):

* ``POST /search`` with ``{"q": TEXT, "k": 5, "table": "public.books",
  "filter": {"year": {"gte": 1950}}, "score_threshold": 0.2, "mode": "dense"}``
  (all but ``q`` optional; ``serve_apps/query.py`` says what each accepts) ->
  ``{"query", "k", "mode", "results": [{"table", "id", "score", "payload"}],
  "took_ms", "timings_ms": {"embed", "model", "query_batch", "store"}}``, best
  first.  ``GET /search?q=TEXT&k=5`` takes the same as query parameters,
  ``filter`` as JSON.  Filters and ``table`` run inside the store.  A filter on
  a field that is not a payload column, an unknown table, or a ``mode`` the
  sink cannot run (MySQL: only ``dense``) is a 400 naming it.
* ``GET /docs`` -> interactive API docs (Swagger UI, served from the installed
  package, never a CDN).
* ``GET /healthz`` -> ``{"status": "ok"}`` once the pipeline is streaming
  (503 with the current state before that).
* ``GET /metrics`` -> the same figures for Prometheus (``embedcluster_dead_letters``, ...).
* ``GET /stats`` -> pipeline counters (``rows_applied``, ``confirmed_lsn``,
  ``lag_bytes``, ...).
* ``GET /`` -> a small search page.
* ``GET /openapi.json`` -> the OpenAPI document of these routes.

Every error is JSON, ``{"error": "<what is wrong>"}``.  With ``[serve] api_key``
set, every route but ``/healthz`` needs ``Authorization: Bearer <key>``
(:class:`BearerAuth`); a request without it gets 401 and ``WWW-Authenticate:
Bearer``.  A browser asking for ``/`` gets the page itself with that 401: the page
asks for the key and sends it with each of its requests.

Queries are embedded with the same model as the rows by a deployment of its
own, :class:`QueryEmbedder`, in small dynamic batches (``@serve.batch``).
With a shared sink (Qdrant server, MySQL) each replica searches directly;
with embedded Qdrant the writer actor owns the store and answers the search.
"""



import asyncio
import functools
import json
import logging
import time
from importlib import resources
from typing import Any, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import SecretStr
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.embedder import NULL_MODEL, Embedder, EmbeddingConfig, NullEmbedder
from actors.logs import error_line, register_secret, scrub, scrub_json, setup_logging
from actors.sinks.base import SEARCH_MODES, SearchHit, UnsupportedSearch, open_sink
from serve_apps import metrics as pipeline_metrics
from serve_apps.auth import bearer_token_ok
from serve_apps.query import (  # noqa: F401 - MAX_* re-exported: the API's limits
    MAX_FILTER_FIELDS, MAX_K, MAX_QUERY_CHARS, SearchRequest, parse_json_body, parse_params,
)

log = logging.getLogger(__name__)

#: largest ``POST /search`` body read, in bytes (a query at its longest, JSON-escaped, fits)
MAX_BODY_BYTES = 256 * 1024
#: routes answered without the API key: load balancers and orchestrators probe /healthz; the
#: interactive docs are a static page and its assets (the OpenAPI document they load needs the key)
PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"})


def _keep_replica_grpc_on_loopback() -> None:
    """Bind Serve's inter-deployment gRPC server to 127.0.0.1 on a loopback node.

    Ray Serve 2.60 binds that server to ``[::]:0`` unconditionally (replica.py,
    ``_on_initialized``), i.e. on every interface, even when the whole cluster
    runs on 127.0.0.1.  The replica looks the helper up at call time, after our
    constructor ran, so rewriting the address here keeps a single-node cluster
    on loopback.  Multi-node clusters (node IP not loopback) are left alone.
    """
    import ray
    from ray.serve._private import replica

    if not ray.util.get_node_ip_address().startswith("127."):
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_embedcluster_loopback", False):
        return

    def add_port_on_loopback(server: Any, address: str) -> int:
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return original(server, address)

    add_port_on_loopback._embedcluster_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port_on_loopback


# --- authentication ---------------------------------------------------------------

def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error the app answers: ``{"error": message}`` (scrubbed of secrets)."""
    return JSONResponse({"error": scrub(message)}, status_code=status, headers=headers)


#: Swagger UI's files, served from the installed swagger-ui-bundle package (never from a CDN:
#: the app may run where nothing outside is reachable)
DOCS_ASSETS = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css"}


@functools.lru_cache(maxsize=4)
def docs_asset(name: str) -> bytes:
    from swagger_ui_bundle import swagger_ui_path

    return (swagger_ui_path / name).read_bytes()


@functools.lru_cache(maxsize=1)
def _page_template() -> str:
    return resources.files("serve_apps").joinpath("search.html").read_text(encoding="utf-8")


def page_html(payload_fields: dict[str, list[str]] | None = None) -> str:
    """The search page (``serve_apps/search.html``) with the tables and payload columns its
    filters offer (none on the page a request without the API key gets: it asks for the key,
    then reads them from the page sent with it)."""
    # inside <script>: no "<", ">" or "&" may end the element or start markup
    data = json.dumps(payload_fields or {}).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _page_template().replace("__EMBEDCLUSTER_TABLES__", data)


#: sent with the page: never cached, never framed, no referrer
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer"}


def _wants_html(headers: list[tuple[bytes, bytes]]) -> bool:
    accept = b",".join(v for k, v in headers if k == b"accept").lower()
    return b"text/html" in accept


def replica_api_key() -> str | None:
    """The API key of the :class:`SearchApp` replica serving this request (None: no key).

    Raises when called outside a Serve replica: the caller then refuses the
    request rather than serve it unauthenticated.
    """
    return serve.get_replica_context().servable_object._api_key


class BearerAuth:
    """ASGI middleware: with an API key, every path but :data:`PUBLIC_PATHS` needs
    ``Authorization: Bearer <key>``.

    Anything else is answered 401 ``{"error": ...}`` with ``WWW-Authenticate: Bearer``
    before routing (unknown paths and ``/openapi.json`` included); a browser
    (``Accept: text/html``) asking for ``/`` gets the search page as that 401's
    body, which asks for the key.  ``api_key`` returns the key (None = no key;
    default :func:`replica_api_key`); when it fails, requests are refused (503),
    never let through.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], api_key: Callable[[], str | None] | None = None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        try:
            key = (self.api_key or replica_api_key)()
        except Exception as exc:  # noqa: BLE001 - fail closed
            log.warning("cannot tell the API key: %s", error_line(exc))
            return await error_response(503, "the search app is not ready; retry shortly")(scope, receive, send)
        if key is None:
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or []
        given = [v for k, v in headers if k == b"authorization"]
        if len(given) == 1 and bearer_token_ok(given[0], key):
            return await self.app(scope, receive, send)
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"' if given else "Bearer"}
        if scope.get("path") == "/" and _wants_html(headers):
            response: Any = HTMLResponse(page_html(), status_code=401, headers={**PAGE_HEADERS, **challenge})
        else:
            response = error_response(
                401, "invalid API key" if given else
                "this search app needs its API key: send 'Authorization: Bearer <key>' ([serve] api_key)",
                headers=challenge,
            )
        await response(scope, receive, send)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # 404 for an unknown path, 405 for another method: {"error": ...} like every other error
    return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


def _error_schema(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


#: how the routes are described in /openapi.json (they read their parameters themselves,
#: so that every error is a 400 with {"error"}, not FastAPI's 422)
_UNAUTHORIZED = {"401": _error_schema("no or a wrong API key (only when [serve] api_key is set)")}
_SEARCH_RESPONSES: dict[str, Any] = {
    "200": {"description": "hits, best cosine similarity first", "content": {"application/json": {"schema": {
        "type": "object", "required": ["query", "k", "results", "took_ms"], "properties": {
            "query": {"type": "string"}, "k": {"type": "integer"}, "took_ms": {"type": "number"},
            "results": {"type": "array", "items": {"type": "object", "properties": {
                "table": {"type": "string"}, "id": {}, "score": {"type": "number"},
                "payload": {"type": "object"}}}}}}}}},
    "400": _error_schema("a missing or empty q, q too long, k outside 1..100, an unknown table, a filter on a field "
                          "not in the payload or a malformed one, or a mode the sink cannot run"),
    **_UNAUTHORIZED,
    "503": _error_schema("the store or the embedding failed"),
}
_FILTER_SCHEMA: dict[str, Any] = {
    "type": "object", "maxProperties": MAX_FILTER_FIELDS,
    "description": 'payload field -> condition, all ANDed: a value ({"author": "Herbert"}), {"in": [...]}, '
                   'or a range ({"year": {"gte": 1950, "lt": 2000}}); fields must be payload columns',
    "additionalProperties": {"oneOf": [
        {"type": ["string", "number", "boolean"]},
        {"type": "object", "required": ["in"], "additionalProperties": False,
         "properties": {"in": {"type": "array", "items": {"type": ["string", "number", "boolean"]}}}},
        {"type": "object", "minProperties": 1, "additionalProperties": False,
         "properties": {op: {"type": "number"} for op in ("gt", "gte", "lt", "lte")}},
    ]},
}
_MODE_SCHEMA: dict[str, Any] = {"type": "string", "enum": list(SEARCH_MODES), "default": "dense",
                                "description": "dense vectors, hybrid (BM25 fused with dense by reciprocal rank), "
                                               "or keyword (BM25 alone); hybrid and keyword need a Qdrant sink"}
_SEARCH_BODY_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["q"], "additionalProperties": False, "properties": {
            "q": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS, "description": "the text to search for"},
            "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 5,
                  "description": "how many hits to return"},
            "table": {"type": "string", "description": "only rows of this source table, e.g. public.books"},
            "filter": _FILTER_SCHEMA,
            "score_threshold": {"type": "number", "minimum": -1, "maximum": 1,
                                "description": "leave out hits under this cosine similarity (dense only)"},
            "mode": _MODE_SCHEMA}}}}},
    "responses": {**_SEARCH_RESPONSES, "413": _error_schema(f"a body over {MAX_BODY_BYTES} bytes")},
}
_SEARCH_DOC: dict[str, Any] = {
    "parameters": [
        {"name": "q", "in": "query", "required": True, "description": "the text to search for",
         "schema": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}},
        {"name": "k", "in": "query", "required": False, "description": "how many hits to return",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 5}},
        {"name": "table", "in": "query", "required": False, "description": "only rows of this source table",
         "schema": {"type": "string"}},
        {"name": "filter", "in": "query", "required": False, "description": "the filter of POST /search, as JSON",
         "content": {"application/json": {"schema": _FILTER_SCHEMA}}},
        {"name": "score_threshold", "in": "query", "required": False,
         "schema": {"type": "number", "minimum": -1, "maximum": 1}},
        {"name": "mode", "in": "query", "required": False, "schema": _MODE_SCHEMA},
    ],
    "responses": _SEARCH_RESPONSES,
}


class SearchAPI(FastAPI):
    """The FastAPI app; its OpenAPI document adds the error schema and the bearer scheme to FastAPI's."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema:
            return self.openapi_schema
        doc = super().openapi()
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {})["Error"] = {
            "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                    "description": "[serve] api_key, when one is set"}}
        for path, methods in doc.get("paths", {}).items():
            for operation in methods.values():
                # the key is optional by configuration: bearer, or nothing when no key is set
                operation["security"] = [] if path in PUBLIC_PATHS else [{"bearer": []}, {}]
                operation.get("responses", {}).pop("422", None)
        self.openapi_schema = doc
        return doc


api = SearchAPI(
    title="embedcluster search", version="1", docs_url=None, redoc_url=None, openapi_url="/openapi.json",
    description="Semantic search over the tables embedcluster keeps indexed. With [serve] api_key set, every "
                "route but /healthz needs 'Authorization: Bearer <key>' (401 otherwise). Errors are "
                '{"error": "<what is wrong>"}.',
)
api.add_middleware(BearerAuth)
api.add_exception_handler(StarletteHTTPException, _http_error)


def parse_query(params: dict[str, str], payload_fields: dict[str, list[str]] | None = None) -> SearchRequest:
    """``GET /search`` parameters (:func:`serve_apps.query.parse_params`); ValueError: the 400's message."""
    return parse_params(params, payload_fields)


def parse_body(body: bytes, payload_fields: dict[str, list[str]] | None = None) -> SearchRequest:
    """A ``POST /search`` body (:func:`serve_apps.query.parse_json_body`); ValueError: the 400's message."""
    return parse_json_body(body, payload_fields)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The request body, or None when it is longer than ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _is_unsupported(exc: BaseException) -> bool:
    """An UnsupportedSearch raised in the writer actor (it arrives wrapped in a Ray error)."""
    return isinstance(getattr(exc, "cause", None), UnsupportedSearch) or "UnsupportedSearch" in type(exc).__name__


def _unsupported_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else error_line(exc)


def hit_json(hit: SearchHit) -> dict[str, Any]:
    """One hit as the API returns it: a single-column key as a scalar, a composite one as a list."""
    key: Any = hit.key[0] if len(hit.key) == 1 else list(hit.key)
    return {"table": hit.table, "id": key, "score": hit.score, "payload": hit.payload}


#: how long the health check waits for the store
HEALTH_TIMEOUT_S = 10.0


#: queries one forward pass takes at most, and how long the first waits for others to join it
QUERY_BATCH_SIZE = 32
QUERY_BATCH_WAIT_S = 0.002


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256, health_check_period_s=10)
class QueryEmbedder:
    """The query model, a deployment of its own (``[serve] embedding_replicas``): concurrent
    queries from every :class:`SearchApp` replica share forward passes (``@serve.batch``), and the
    HTTP replicas stay light, so each side is scaled on its own."""

    def __init__(self, embedding: EmbeddingConfig, threads: int = 1, log_level: str = "INFO") -> None:
        setup_logging(log_level)
        _keep_replica_grpc_on_loopback()
        # queries are single sentences: CPU is fine and keeps GPUs for the pool
        device = "cpu" if embedding.device == "auto" else embedding.device
        self.embedder: Embedder | NullEmbedder = NullEmbedder() if embedding.model == NULL_MODEL else Embedder(
            model=embedding.model, device=device, threads=threads, max_length=embedding.max_length,
            # float16 is for GPUs; on CPU "auto" picks bf16 or fp32 by what the CPU does natively
            batch_size=QUERY_BATCH_SIZE,
            dtype="auto" if device == "cpu" and embedding.dtype == "float16" else embedding.dtype,
        )

    async def ready(self) -> bool:
        """True: answered once the model is loaded (the constructor has returned)."""
        return True

    @serve.batch(max_batch_size=QUERY_BATCH_SIZE, batch_wait_timeout_s=QUERY_BATCH_WAIT_S)
    async def embed(self, texts: list[str]) -> list[tuple[np.ndarray, float, int]]:
        """One query's ``(vector, model milliseconds, batch size)``; the calls that arrive
        together are embedded as one batch (the milliseconds are that batch's)."""
        started = time.perf_counter()
        # on this replica's event loop, not in a thread: while a pass runs the loop would take the
        # GIL from the model for the requests arriving, one at a time, and batches stayed near one
        # query; blocked here, the loop gathers those requests into the next batch (4 clients on 2
        # cores: 1.1 -> 2.1 queries a pass, 18.3 -> 16.7 ms of CPU a query, benchmarks/bench_search.py)
        vectors = self.embedder.embed(texts)
        took = (time.perf_counter() - started) * 1000
        return [(v, took, len(texts)) for v in vectors]


class _NamedActor:
    """A Ray actor looked up by name when first needed, then kept.

    The search app is deployed while the pipeline's actors are still being created (start-up
    runs both at once), so it cannot be handed their handles; until the actor exists,
    :meth:`get` raises :class:`LookupError`."""

    def __init__(self, name: str, namespace: str) -> None:
        self.name, self.namespace = name, namespace
        self._handle: Any = None

    def get(self) -> Any:
        if self._handle is None:
            import ray

            try:
                self._handle = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                raise LookupError(f"the pipeline's {self.name} actor is not running yet") from None
        return self._handle


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(api)
class SearchApp:
    """The HTTP front (FastAPI): parses and checks requests, asks :class:`QueryEmbedder` for the
    query's vector and the store for the hits.  ``writer`` and ``pipeline`` are actor names in
    ``namespace``, looked up on first use."""

    def __init__(
        self,
        embedder: Any,
        sink: Any,
        writer: str,
        pipeline: str,
        namespace: str,
        log_level: str = "INFO",
        api_key: SecretStr | None = None,
        payload_fields: dict[str, list[str]] | None = None,
    ) -> None:
        setup_logging(log_level)
        register_secret(api_key)
        #: read by :class:`BearerAuth` for every request (None: no key, the host is loopback or allowed)
        self._api_key = api_key.get_secret_value() if api_key is not None else None
        _keep_replica_grpc_on_loopback()
        #: the QueryEmbedder deployment's handle
        self.embedder = embedder
        self._model_ready = False
        # a shared store is searched from here; embedded Qdrant only through its owner, the writer
        self.sink = open_sink(sink) if sink.kind == "mysql" or sink.url else None
        self._writer = _NamedActor(writer, namespace)
        self._pipeline = _NamedActor(pipeline, namespace)
        self.page = page_html(payload_fields)
        #: table -> its payload columns: what a filter may name (None: not checked)
        self.payload_fields = payload_fields

    @property
    def writer(self) -> Any:
        return self._writer.get()

    @property
    def pipeline(self) -> Any:
        return self._pipeline.get()

    async def check_health(self) -> None:
        """Serve's replica health check (every ``health_check_period_s``): raises when this
        replica's own connection to a shared store (MySQL, a Qdrant server) fails, which a new
        replica would open afresh.  The coordinator and the writer are not checked here: they
        are Ray actors restarted by Ray, and a writer busy building the embedded store's index
        (seconds to minutes, holding its process) must not get the search replicas replaced;
        ``/healthz`` reports the pipeline's state to whoever routes traffic."""
        if self.sink is not None:
            await asyncio.wait_for(asyncio.to_thread(self.sink.ping), HEALTH_TIMEOUT_S)

    async def _query_model_ready(self) -> bool:
        """Whether a QueryEmbedder replica answers (once it has, always: Serve replaces a lost one
        and queues the queries meanwhile)."""
        if not self._model_ready:
            try:
                self._model_ready = await asyncio.wait_for(self.embedder.ready.remote(), 1.0)
            except asyncio.TimeoutError:
                return False
        return True

    async def _embed(self, text: str) -> tuple[np.ndarray, float, int]:
        return await self.embedder.embed.remote(text)

    async def _search(self, vector: np.ndarray | None, req: SearchRequest) -> list[SearchHit]:
        options = {"table": req.table, "filters": req.filters, "score_threshold": req.score_threshold,
                   "text": req.q, "mode": req.mode}
        if self.sink is not None:
            return await asyncio.to_thread(functools.partial(self.sink.search, vector, req.k, **options))
        return await self.writer.search.remote(vector, req.k, options)

    @api.get("/search", openapi_extra=_SEARCH_DOC, summary="Semantic search")
    async def search(self, request: Request) -> JSONResponse:
        """The ``k`` rows closest to ``q``, best first; optional ``table``, ``filter`` (JSON),
        ``score_threshold`` and ``mode``, as in ``POST /search``."""
        started = time.perf_counter()
        try:
            req = parse_query(dict(request.query_params), self.payload_fields)
        except ValueError as exc:
            return error_response(400, str(exc))
        return await self._answer(req, started)

    @api.post("/search", openapi_extra=_SEARCH_BODY_DOC, summary="Search (JSON body: filters, table, mode)")
    async def search_body(self, request: Request) -> JSONResponse:
        """``{"q", "k", "table", "filter", "score_threshold", "mode"}``: see the request schema."""
        started = time.perf_counter()
        body = await read_body(request)
        if body is None:
            return error_response(413, f"the body is over {MAX_BODY_BYTES} bytes; send at most {MAX_QUERY_CHARS} "
                                       "characters of query")
        try:
            req = parse_body(body, self.payload_fields)
        except ValueError as exc:
            return error_response(400, str(exc))
        return await self._answer(req, started)

    async def _answer(self, req: SearchRequest, started: float) -> JSONResponse:
        try:
            # keyword search is BM25 alone: no query vector to compute
            vector, model_ms, batch = await self._embed(req.q) if req.mode != "keyword" else (None, 0.0, 0)
            embedded = time.perf_counter()
            hits = await self._search(vector, req)
            searched = time.perf_counter()
        except UnsupportedSearch as exc:  # the request asks what this store cannot do: the client's to change
            return error_response(400, _unsupported_line(exc))
        except Exception as exc:  # noqa: BLE001 - the store or the model, not the request: 503, one line
            if _is_unsupported(exc):
                return error_response(400, _unsupported_line(exc))
            log.warning("search failed: %s", error_line(exc, with_type=True))
            return error_response(503, f"search failed: {error_line(exc)}")
        took = (time.perf_counter() - started) * 1000
        pipeline_metrics.SEARCH_SECONDS.labels(mode=req.mode).observe(took / 1000)
        # where the time went: asking for the query's vector (0 for keyword), of which the model's
        # forward pass over its batch of queries, the store, and the rest (parsing, the answer);
        # benchmarks split the latency with these
        timings = {"embed": round((embedded - started) * 1000, 3), "model": round(model_ms, 3), "query_batch": batch,
                   "store": round((searched - embedded) * 1000, 3)}
        return JSONResponse({"query": req.q, "k": req.k, "mode": req.mode,
                             "results": [hit_json(h) for h in hits], "took_ms": round(took, 3),
                             "timings_ms": timings})

    @api.get("/healthz", summary="Health", responses={"503": {"description": "not streaming (yet): the state"}})
    async def healthz(self) -> JSONResponse:
        """``{"status": "ok"}`` once the pipeline streams; 503 with its state otherwise.  Never needs the key."""
        try:
            stats = await self.pipeline.stats.remote()
        except LookupError as exc:  # the run is still creating its actors
            return JSONResponse({"status": "starting", "error": str(exc)}, status_code=503)
        except Exception as exc:  # noqa: BLE001 - the coordinator is gone
            return JSONResponse({"status": "unavailable", "error": scrub(error_line(exc))}, status_code=503)
        if stats.get("state") == "streaming":
            if not await self._query_model_ready():
                return JSONResponse({"status": "starting", "error": "the query model is still loading"},
                                    status_code=503)
            return JSONResponse({"status": "ok"})
        return JSONResponse(scrub_json({"status": stats.get("state"), "error": stats.get("last_error")}),
                            status_code=503)

    @api.get("/stats", summary="Pipeline counters", responses={**_UNAUTHORIZED, "503": _error_schema("no coordinator")})
    async def stats(self) -> JSONResponse:
        """The coordinator's counters (secrets scrubbed from every string)."""
        try:
            stats = await self.pipeline.stats.remote()
        except Exception as exc:  # noqa: BLE001 - the coordinator is gone
            return error_response(503, f"the pipeline coordinator does not answer: {error_line(exc)}")
        return JSONResponse(scrub_json(stats))

    @api.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={**_UNAUTHORIZED, "503": _error_schema("no coordinator")})
    async def metrics(self) -> Response:
        """The pipeline's figures in the Prometheus text format (numbers and the state only)."""
        try:
            stats = await self.pipeline.stats.remote()
        except Exception as exc:  # noqa: BLE001 - the coordinator is gone
            return error_response(503, f"the pipeline coordinator does not answer: {error_line(exc)}")
        return Response(pipeline_metrics.render(stats), media_type=pipeline_metrics.CONTENT_TYPE_LATEST)

    @api.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs(self) -> HTMLResponse:
        """Swagger UI over /openapi.json (with an API key: "Authorize" first)."""
        return get_swagger_ui_html(openapi_url="/openapi.json", title="embedcluster search API",
                                   swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                                   swagger_favicon_url="data:,")

    @api.get("/docs/{name}", include_in_schema=False)
    async def docs_file(self, name: str) -> Response:
        if name not in DOCS_ASSETS:
            return error_response(404, "Not Found")
        return Response(docs_asset(name), media_type=DOCS_ASSETS[name], headers={"Cache-Control": "max-age=3600"})

    @api.get("/", response_class=HTMLResponse, summary="Search page", responses=_UNAUTHORIZED)
    async def page(self) -> HTMLResponse:
        """The search page (it sends the API key the user types with each request)."""
        return HTMLResponse(self.page, headers=PAGE_HEADERS)
