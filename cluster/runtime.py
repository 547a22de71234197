"""The run lifecycle and the Ray wiring: check, start (or join) Ray, create the actors,
deploy the search app, serve until told to stop, stop cleanly.

``cluster/cli.py`` parses arguments and prints; everything between "here is a
valid config" and "stopped" happens here (:func:`run`).  :func:`start_ray` is the
one Ray start-up of the project: the pipeline and the benchmarks use it alike.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from actors.logs import error_line
from actors.source_schema import TableSpec
from cluster.config import Config
from cluster.pipeline import FAILED, NAMESPACE, PIPELINE_ACTOR, WRITER_ACTOR

log = logging.getLogger(__name__)

#: how often the serving loop checks that the coordinator still answers
WATCH_INTERVAL_S = 2.0
#: how long a failed start-up waits for the search app's deployment to settle before shutting down
DEPLOY_WAIT_S = 60.0
#: set while this process runs a private local Ray (see :func:`shutdown`)
_STARTED_LOCAL_RAY = threading.Event()


class StartupError(RuntimeError):
    """A component failed to start; the message is the cause in one line."""


class PipelineLost(RuntimeError):
    """The coordinator stopped answering while serving; the message is the cause in one line."""


class PipelineFailed(PipelineLost):
    """The coordinator stopped for good (state ``failed``: an error retrying cannot fix, such as the
    slot dropped or taken by someone else); the message is its one line: what, and how to fix it.
    A :class:`PipelineLost`, so the CLI exits non-zero as for that."""


#: Ray Serve settings every worker gets unless the environment sets them (``benchmarks/bench_search.py``
#: over 3,000 points, four clients: 81 -> 104 q/s, p50 49 -> 38 ms on 2 cores).  Handles and the HTTP
#: proxy reach replicas over gRPC instead of passing each request and answer through Ray's object
#: store, and the request path runs on the replica's and the handle's own event loop instead of
#: hopping to a second thread.  The front's handlers never block that loop (the store runs in a
#: thread or in the writer); the query model blocks its replica's loop during a pass, on purpose
#: (``serve_apps/search.py: QueryEmbedder.embed``).
SERVE_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def start_ray(address: str = "", num_cpus: int | None = None, env_vars: dict[str, str] | None = None,
              quiet: bool = False) -> None:
    """Join the Ray cluster at ``address``, or (``""``) start a private one on 127.0.0.1.

    Every Ray worker gets the variables the model needs offline, :data:`SERVE_ENV`, and
    ``env_vars``.  ``quiet`` keeps Ray's own logs out of the caller's output
    (benchmarks print tables).  A no-op when Ray is already up.
    """
    import ray

    if ray.is_initialized():
        return
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false",
           **{name: os.environ.get(name, value) for name, value in SERVE_ENV.items()}, **(env_vars or {})}
    options: dict[str, Any] = {"namespace": NAMESPACE, "runtime_env": {"env_vars": env}, "log_to_driver": not quiet}
    if quiet:
        options.update(logging_level="WARNING", configure_logging=True)
    if address:
        ray.init(address=address, **options)
        log.info("joined Ray cluster at %s", address)
        return
    # loopback only: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set by the cluster package (cluster/__init__.py)
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **options)
    _STARTED_LOCAL_RAY.set()
    log.info("started a local Ray on 127.0.0.1 with %s CPUs", num_cpus or "all")


def init_ray(config: Config, log_level: str) -> None:
    """Ray for a pipeline: ``[ray] address``, or a local Ray with enough CPUs for the embedding actors."""
    if config.ray.address:
        start_ray(config.ray.address, env_vars={"EMBEDCLUSTER_LOG_LEVEL": log_level})
        return
    cores = config.ray.num_cpus or os.cpu_count() or 1
    # room for the most actors the pool may grow to ([embedding] max_actors)
    needed = math.ceil(config.embedding.pool_max * config.embedding.cpus_per_actor)
    start_ray(num_cpus=max(cores, needed), env_vars={"EMBEDCLUSTER_LOG_LEVEL": log_level})


def preflight(config: Config) -> dict[str, TableSpec]:
    """Everything a user can get wrong, checked before Ray starts; StartupError (one line) otherwise.

    The source (reachable, ``wal_level``, tables, keys, columns), then the model's
    dimension against the sink (which is created, or rejected for a wrong dimension).
    A relative embedded-store path is made absolute, since actors may run
    with another working directory.
    """
    from actors.embedder import EmbedderError, model_dimension
    from actors.sinks.base import SinkError, open_sink
    from actors.source_schema import SourceError, inspect_source

    exposure = config.serve.exposure_error()  # validated with the file; again here, host may have been assigned since
    if exposure:
        raise StartupError(exposure)
    try:
        specs = inspect_source(config.source, config.tables)
    except SourceError as exc:
        raise StartupError(str(exc)) from None
    absolute_store_path(config)
    try:
        dimension = model_dimension(config.embedding.model)
        sink = open_sink(config.sink)  # connects: bad URL, credentials or a locked store fail here
        try:
            sink.ensure_ready(dimension)  # creates the collection/table, or rejects a wrong dimension
        finally:
            sink.close()
    except (EmbedderError, SinkError) as exc:
        raise StartupError(str(exc)) from None
    return specs


def absolute_store_path(config: Config) -> None:
    """Make a relative embedded-store path (``sink.path``) absolute, in place: actors may run
    with another working directory, and ``verify`` finds the store's owner by its path."""
    if config.sink.kind == "qdrant" and not config.sink.url and config.sink.path != ":memory:":
        config.sink.path = str(Path(config.sink.path).resolve())


def run(config: Config, log_level: str, on_ready: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        on_stats: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
    """Check, start everything, serve until SIGINT/SIGTERM (or ``stop`` is set), stop cleanly.

    ``on_ready(url)`` is called once search answers, ``on_stats(stats)`` with the coordinator's
    figures every :data:`WATCH_INTERVAL_S` (the CLI's backfill progress).  Returns the coordinator's
    final stats, or None when the clean stop itself failed (logged).  Raises
    :class:`StartupError` when something cannot start, :class:`PipelineLost`
    when the coordinator stops answering and :class:`PipelineFailed` (after a clean
    stop) when it failed for good; Ray is shut down either way.
    """
    specs = preflight(config)
    stop = stop or threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    init_ray(config, log_level)
    # after ray.init, which may install handlers of its own
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        # The search app is deployed while the pipeline's actors start: both mostly load the model
        # (start-up takes the longer of the two, not their sum). The app finds the writer and the
        # coordinator by name once they exist; /healthz says 503 until then.
        deploying = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="deploy-search")
        search = deploying.submit(deploy_search, config, log_level)
        deploying.shutdown(wait=False)
        try:
            running = launch_pipeline(config, specs, log_level)
        except BaseException:
            with contextlib.suppress(BaseException):  # the start-up error is the one to report
                search.result(timeout=DEPLOY_WAIT_S)
            raise
        try:
            url = search.result()
            if on_ready:
                on_ready(url)
            failed: str | None = None
            while not stop.wait(WATCH_INTERVAL_S):
                try:
                    state = running.stats(timeout=30)
                except Exception as exc:  # noqa: BLE001 - the coordinator itself is gone
                    raise PipelineLost(error_line(exc)) from None
                if on_stats:
                    try:
                        on_stats(state)
                    except Exception as exc:  # noqa: BLE001 - a display, never a reason to stop
                        log.debug("progress display failed: %s", error_line(exc))
                if state.get("state") == FAILED:
                    # Retrying cannot fix it and nothing is left to serve for: end the run
                    # (a schema change is "halted" instead, and keeps serving).
                    failed = state.get("last_error") or "the pipeline failed (see the log above)"
                    break
        except PipelineLost:
            raise  # nothing left to stop: the coordinator is what writes and confirms
        except BaseException:
            _stop_cleanly(running)  # a failure on the way: still write and confirm what is in flight
            raise
        final = _stop_cleanly(running)
        if failed is not None:
            raise PipelineFailed(failed)
        return final
    finally:
        shutdown()


def _stop_cleanly(running: "RunningPipeline") -> dict[str, Any] | None:
    try:
        return running.stop()
    except Exception as exc:  # noqa: BLE001 - report, then shut down anyway
        log.error("clean stop failed: %s", error_line(exc))
        return None


@dataclass
class RunningPipeline:
    reader: Any
    embedders: list[Any]
    writer: Any
    pipeline: Any
    dimension: int
    #: writers 1..W-1 of ``[sink] writers`` (the primary is ``writer``)
    partition_writers: list[Any] = field(default_factory=list)

    def stats(self, timeout: float = 30.0) -> dict[str, Any]:
        import ray

        return ray.get(self.pipeline.stats.remote(), timeout=timeout)

    def stop(self, timeout: float = 120.0) -> dict[str, Any]:
        import ray

        stats = ray.get(self.pipeline.stop.remote(timeout), timeout=timeout + 10)
        try:
            ray.get([w.close.remote() for w in (self.writer, *self.partition_writers)], timeout=30)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        for handle in [self.pipeline, self.reader, self.writer, *self.partition_writers, *self.embedders]:
            ray.kill(handle)
        return stats


#: seconds the actors may wait for a node before the wait is logged (the autoscaler may be adding one)
PLACEMENT_WARN_S = 30.0
#: how often the actors' start (placement, model load, opening the store) is asked for when one of
#: them dies meanwhile (launch_pipeline)
STARTUP_ATTEMPTS = 3


def _placed(refs: list[Any], emb: Any, control: dict[str, float]) -> list[Any]:
    """``refs`` once ready; while actors wait for a node that offers what they request, say once
    which of those resources no node of the cluster has now (an autoscaler may still add one)."""
    import ray

    _, pending = ray.wait(refs, num_returns=len(refs), timeout=PLACEMENT_WARN_S)
    if pending:
        have = ray.cluster_resources()
        wanted = {**emb.resources, **control}
        if emb.device == "cuda" and emb.gpus_per_actor:
            wanted["GPU"] = emb.gpus_per_actor
        missing = sorted(name for name in wanted if name not in have)
        log.warning("actors of the pipeline are still waiting for a node after %.0f s%s", PLACEMENT_WARN_S,
                    f"; no node offers {', '.join(missing)} now (embedding.resources, ray.control_resources: "
                    "declare them with ray start --resources, or let the autoscaler add such a node)"
                    if missing else "")
    return refs


def launch_pipeline(config: Config, specs: dict[str, TableSpec], log_level: str = "INFO") -> RunningPipeline:
    """Create reader, embedders, writer and coordinator; start streaming."""
    import ray

    from actors.remote import (
        CdcReaderActor,
        EmbeddingActor,
        WriterActor,
        embedding_actor_concurrency,
        embedding_runtime_env,
    )
    from cluster.autoscale import ActorFactory
    from cluster.pipeline import PipelineActor

    emb = config.embedding
    cores = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = emb.device == "cuda" or (emb.device == "auto" and gpus > 0)
    # threads = 0: the cores shared out among the actors, but never more than one node has (the
    # cluster's total counts every node's cores, and an actor's threads run on its own node)
    node_cores = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=cores)
    threads = emb.threads or max(1, min(cores // emb.actors, node_cores or cores))
    # Actors that die are restarted by Ray; the coordinator then replays from
    # the slot's confirmed position (calls in flight fail, none is retried blindly).
    # The factory goes to the coordinator too: actors the pool adds ([embedding] max_actors,
    # cluster/autoscale.py) are created exactly like these.
    factory = ActorFactory(EmbeddingActor, dict(
        num_cpus=emb.cpus_per_actor, num_gpus=emb.gpus_per_actor if use_gpu else 0,
        max_restarts=-1, runtime_env=embedding_runtime_env(), resources=dict(emb.resources) or None,
        max_concurrency=embedding_actor_concurrency(threads, emb.threads_per_worker, use_gpu),
    ), (emb, threads, log_level), name_prefix="embedder")
    embedders = [factory(i) for i in range(emb.actors)]
    # reader, writer and coordinator go where [ray] control_resources says (the head of ray-cluster.yaml):
    # a restarted writer must come back to the node that holds the embedded store
    control = dict(config.ray.control_resources) or None
    writer = WriterActor.options(name=WRITER_ACTOR, max_restarts=-1, resources=control).remote(
        config.sink, config.source.slot, log_level, config.pipeline.writer_retries(), payload_indexes(specs))
    # [sink] writers = W: W-1 more, each with its own connection and share of the keys (actors/writer.py);
    # like the primary they restart, and the coordinator replays from the slot meanwhile
    partition_writers = [
        WriterActor.options(name=f"{WRITER_ACTOR}-{i}", max_restarts=-1, resources=control).remote(
            config.sink, config.source.slot, log_level, config.pipeline.writer_retries(), None, i)
        for i in range(1, config.sink.writers)
    ]
    reader = CdcReaderActor.options(name="reader", max_restarts=-1, resources=control).remote(
        config.source, specs, log_level)
    try:
        for attempt in range(1, STARTUP_ATTEMPTS + 1):
            try:
                # the reader and the writers too: a control resource no node offers would leave them waiting
                placed = [e.info.remote() for e in embedders]
                placed += [w.__ray_ready__.remote() for w in (writer, *partition_writers, reader)]
                infos = ray.get(_placed(placed, emb, config.ray.control_resources))[: len(embedders)]
                dimension = infos[0]["dimension"]
                ray.get([w.open.remote(dimension) for w in (writer, *partition_writers)])
                break
            except ray.exceptions.RayActorError as exc:
                # An actor's process died while it started (Ray restarts it: max_restarts=-1), and the
                # call it was running fails with it.  Once running, the coordinator recovers from such
                # a death by itself; at start-up it is asked again, a few times, before giving up.
                if attempt == STARTUP_ATTEMPTS:
                    raise
                log.warning("an actor of the pipeline died while starting (%s); asking again (%d of %d)",
                            error_line(exc), attempt + 1, STARTUP_ATTEMPTS)
    except Exception as exc:  # noqa: BLE001 - report the cause in one line
        for handle in [reader, writer, *partition_writers, *embedders]:
            ray.kill(handle)
        raise StartupError(error_line(exc)) from None
    log.info(
        "embedding pool: %d actor(s) on %s (%s), %d threads each (%d model worker(s)), dim %d",
        emb.actors, infos[0]["device"], infos[0]["dtype"], threads, infos[0]["workers"], dimension,
    )
    pipeline = PipelineActor.options(name=PIPELINE_ACTOR, resources=control).remote(
        config, reader, embedders, writer, dimension, log_level, partition_writers, factory)
    try:
        ray.get(pipeline.start.remote())
    except Exception as exc:  # noqa: BLE001 - e.g. serve.metrics_port taken: one line
        for handle in [pipeline, reader, writer, *partition_writers, *embedders]:
            ray.kill(handle)
        raise StartupError(error_line(exc)) from None
    return RunningPipeline(reader, embedders, writer, pipeline, dimension, partition_writers)


def deploy_search(config: Config, log_level: str = "INFO") -> str:
    """Start Serve on ``[serve] host:port`` and deploy the search app (the HTTP front and the
    query model, each with its ``[serve]`` replica count); returns its URL.  The app looks up the
    pipeline's writer and coordinator by name, so this may run while they are being created."""
    from ray import serve

    from serve_apps.search import QueryEmbedder, SearchApp

    settings = config.serve
    exposure = settings.exposure_error()
    if exposure:
        raise StartupError(exposure)
    where = f"{settings.host}:{settings.port}"
    if settings.api_key is not None:
        log.info("search app on %s: API key required ('Authorization: Bearer <key>') on every route but /healthz", where)
    elif settings.loopback:
        log.info("search app on %s: no API key (loopback only; set [serve] api_key to require one)", where)
    else:
        log.warning("search app on %s answers WITHOUT an API key (serve.allow_unauthenticated = true): anyone who "
                    "can reach this address can search and read /stats; set [serve] api_key", where)
    quiet = {"log_level": "WARNING" if log_level != "DEBUG" else "DEBUG"}
    # one HTTP proxy, on the head node: the endpoint users reach (through SSH on a cloud cluster);
    # a proxy on every node would also bind host:port on each of them
    serve.start(proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port},
                logging_config=quiet)
    embedder = QueryEmbedder.options(num_replicas=settings.embedding_replicas).bind(config.embedding, 1, log_level)
    app = SearchApp.options(num_replicas=settings.replicas).bind(
        embedder, config.sink, WRITER_ACTOR, PIPELINE_ACTOR, NAMESPACE, log_level, settings.api_key,
        {t.name: list(t.payload) for t in config.tables},
    )
    try:
        serve.run(app, name="embedcluster", route_prefix="/", logging_config=quiet)
    except Exception as exc:  # noqa: BLE001
        raise StartupError(f"search app failed to start: {error_line(exc)}") from None
    return f"http://{config.serve.host}:{config.serve.port}"


def payload_indexes(specs: dict[str, Any]) -> dict[str, str]:
    """The payload fields to index (``[[tables]] filterable``) with the kind each column's type
    needs; a field filterable in several tables takes the first table's kind (logged when they differ)."""
    out: dict[str, str] = {}
    for spec in specs.values():
        for field, kind in spec.payload_indexes().items():
            if out.setdefault(field, kind) != kind:
                log.warning("payload field %s is filterable in several tables with different types (%s, %s): "
                            "indexed as %s", field, out[field], kind, out[field])
    return out


def shutdown() -> None:
    """Stop Serve and leave Ray.  A private local Ray goes with every process in it (Serve's
    too), so Serve's own graceful shutdown, seconds long, is only needed on a shared cluster."""
    import ray
    from ray import serve

    if not _STARTED_LOCAL_RAY.is_set():
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001
            pass
    _STARTED_LOCAL_RAY.clear()
    ray.shutdown()
