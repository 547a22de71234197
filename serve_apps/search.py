"""The search app: a Ray Serve deployment with a FastAPI ingress.

Routes (the public HTTP API):

* ``GET /search?q=TEXT&k=5`` -> ``{"query", "k", "results": [{"table", "id",
  "score", "payload"}], "took_ms"}``, best score first.
* ``GET /healthz`` -> ``{"status": "ok"}`` once the pipeline is streaming
  (503 with the current state before that).
* ``GET /stats`` -> pipeline counters (``rows_applied``, ``confirmed_lsn``,
  ``lag_bytes``, ...).
* ``GET /`` -> a small search page.

Queries are embedded with the same model as the rows, in small dynamic
batches (``@serve.batch``).  With a shared sink (Qdrant server, MySQL) each
replica searches directly; with embedded Qdrant the writer actor owns the
store and answers the search.
"""



import asyncio
import logging
import time
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve

from actors.embedder import Embedder, EmbeddingConfig
from actors.logs import setup_logging
from actors.sinks.base import SearchHit, open_sink

log = logging.getLogger(__name__)

MAX_K = 100


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
api = FastAPI(title="embedcluster search", docs_url=None, redoc_url=None)


def parse_query(params: dict[str, str]) -> tuple[str, int]:
    """Validate ``q`` and ``k``; raises ValueError with the message for a 400."""
    q = (params.get("q") or "").strip()
    if not q:
        raise ValueError("missing query: pass ?q=<text to search for>")
    raw_k = params.get("k", "5")
    try:
        k = int(raw_k)
    except ValueError:
        raise ValueError(f"k must be an integer from 1 to {MAX_K}, got {raw_k!r}") from None
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be from 1 to {MAX_K}, got {k}")
    return q, k


def hit_json(hit: SearchHit) -> dict[str, Any]:
    key: Any = hit.key[0] if len(hit.key) == 1 else list(hit.key)
    return {"table": hit.table, "id": key, "score": hit.score, "payload": hit.payload}


#: how long the health check waits for the coordinator and the store
HEALTH_TIMEOUT_S = 10.0


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(api)
class SearchApp:
    def __init__(
        self,
        embedding: EmbeddingConfig,
        sink: Any,
        writer: Any,
        pipeline: Any,
        threads: int = 1,
        log_level: str = "INFO",
    ) -> None:
        setup_logging(log_level)
        _keep_replica_grpc_on_loopback()
        # queries are single sentences: CPU is fine and keeps GPUs for the pool
        device = "cpu" if embedding.device == "auto" else embedding.device
        self.embedder = Embedder(
            model=embedding.model, device=device, threads=threads, max_length=embedding.max_length,
            # float16 is for GPUs; on CPU "auto" picks bf16 or fp32 by what the CPU does natively
            batch_size=32, dtype="auto" if device == "cpu" and embedding.dtype == "float16" else embedding.dtype,
        )
        # a shared store is searched from here; embedded Qdrant only through its owner, the writer
        self.sink = open_sink(sink) if sink.kind == "mysql" or sink.url else None
        self.writer = writer
        self.pipeline = pipeline
        self.page = resources.files("serve_apps").joinpath("search.html").read_text(encoding="utf-8")

    async def check_health(self) -> None:
        """Serve's replica health check (every ``health_check_period_s``): raises unless the
        pipeline coordinator answers and the store can be read, the two things every route
        needs.  The store is this replica's own connection to a shared sink, or the writer
        that owns the embedded store."""
        await asyncio.wait_for(self.pipeline.stats.remote(), HEALTH_TIMEOUT_S)
        if self.sink is not None:
            await asyncio.wait_for(asyncio.to_thread(self.sink.ping), HEALTH_TIMEOUT_S)
        else:
            await asyncio.wait_for(self.writer.ping.remote(), HEALTH_TIMEOUT_S)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _embed(self, texts: list[str]) -> list[np.ndarray]:
        vectors = await asyncio.to_thread(self.embedder.embed, texts)
        return list(vectors)

    async def _search(self, vector: np.ndarray, k: int) -> list[SearchHit]:
        if self.sink is not None:
            return await asyncio.to_thread(self.sink.search, vector, k)
        return await self.writer.search.remote(vector, k)

    @api.get("/search")
    async def search(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        try:
            q, k = parse_query(dict(request.query_params))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        vector = await self._embed(q)
        hits = await self._search(vector, k)
        took = (time.perf_counter() - started) * 1000
        return JSONResponse({"query": q, "k": k, "results": [hit_json(h) for h in hits], "took_ms": round(took, 3)})

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        stats = await self.pipeline.stats.remote()
        if stats.get("state") == "streaming":
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": stats.get("state"), "error": stats.get("last_error")}, status_code=503)

    @api.get("/stats")
    async def stats(self) -> JSONResponse:
        return JSONResponse(await self.pipeline.stats.remote())

    @api.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)
