"""Ray wiring: start (or join) Ray, create the actors, deploy the search app."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from actors.source_schema import TableSpec
from cluster.config import Config
from cluster.logs import error_line
from cluster.pipeline import NAMESPACE, PIPELINE_ACTOR, WRITER_ACTOR

log = logging.getLogger(__name__)

# Ray binds the machine's non-loopback address unless told otherwise; a
# single-node cluster started here must stay on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


class StartupError(RuntimeError):
    """A component failed to start; the message is the cause in one line."""


def init_ray(config: Config, log_level: str) -> None:
    import ray

    if ray.is_initialized():
        return
    env_vars = {"EMBEDCLUSTER_LOG_LEVEL": log_level, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                "TOKENIZERS_PARALLELISM": "false"}
    if config.ray.address:
        ray.init(address=config.ray.address, namespace=NAMESPACE, runtime_env={"env_vars": env_vars},
                 log_to_driver=True)
        log.info("joined Ray cluster at %s", config.ray.address)
        return
    cores = config.ray.num_cpus or os.cpu_count() or 1
    needed = math.ceil(config.embedding.actors * config.embedding.cpus_per_actor)
    ray.init(
        num_cpus=max(cores, needed),
        namespace=NAMESPACE,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env_vars},
        log_to_driver=True,
    )
    log.info("started a local Ray on 127.0.0.1 with %d CPUs", max(cores, needed))


@dataclass
class RunningPipeline:
    reader: Any
    embedders: list[Any]
    writer: Any
    pipeline: Any
    dimension: int

    def stats(self, timeout: float = 30.0) -> dict[str, Any]:
        import ray

        return ray.get(self.pipeline.stats.remote(), timeout=timeout)

    def stop(self, timeout: float = 120.0) -> dict[str, Any]:
        import ray

        stats = ray.get(self.pipeline.stop.remote(timeout), timeout=timeout + 10)
        try:
            ray.get(self.writer.close.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        for handle in [self.pipeline, self.reader, self.writer, *self.embedders]:
            ray.kill(handle)
        return stats


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
    from cluster.pipeline import PipelineActor

    emb = config.embedding
    cores = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = emb.device == "cuda" or (emb.device == "auto" and gpus > 0)
    threads = emb.threads or max(1, cores // emb.actors)
    # Actors that die are restarted by Ray; the coordinator then replays from
    # the slot's confirmed position (calls in flight fail, none is retried blindly).
    embedders = [
        EmbeddingActor.options(
            name=f"embedder-{i}", num_cpus=emb.cpus_per_actor, num_gpus=emb.gpus_per_actor if use_gpu else 0,
            max_restarts=-1, runtime_env=embedding_runtime_env(),
            max_concurrency=embedding_actor_concurrency(threads, emb.threads_per_worker, use_gpu),
        ).remote(emb, threads, log_level)
        for i in range(emb.actors)
    ]
    writer = WriterActor.options(name=WRITER_ACTOR, max_restarts=-1).remote(config.sink, config.source.slot, log_level)
    reader = CdcReaderActor.options(name="reader", max_restarts=-1).remote(config.source, specs, log_level)
    try:
        infos = ray.get([e.info.remote() for e in embedders])
        dimension = infos[0]["dimension"]
        ray.get(writer.open.remote(dimension))
    except Exception as exc:  # noqa: BLE001 - report the cause in one line
        for handle in [reader, writer, *embedders]:
            ray.kill(handle)
        raise StartupError(error_line(exc)) from None
    log.info(
        "embedding pool: %d actor(s) on %s (%s), %d threads each (%d model worker(s)), dim %d",
        emb.actors, infos[0]["device"], infos[0]["dtype"], threads, infos[0]["workers"], dimension,
    )
    pipeline = PipelineActor.options(name=PIPELINE_ACTOR).remote(config, reader, embedders, writer, dimension, log_level)
    ray.get(pipeline.start.remote())
    return RunningPipeline(reader, embedders, writer, pipeline, dimension)


def deploy_search(config: Config, running: RunningPipeline, log_level: str = "INFO") -> str:
    """Start Serve on ``[serve] host:port`` and deploy the search app; returns its URL."""
    from ray import serve

    from serve_apps.search import SearchApp

    quiet = {"log_level": "WARNING" if log_level != "DEBUG" else "DEBUG"}
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port}, logging_config=quiet)
    app = SearchApp.options(num_replicas=config.serve.replicas).bind(
        config.embedding, config.sink, running.writer, running.pipeline, 1, log_level
    )
    try:
        serve.run(app, name="embedcluster", route_prefix="/", logging_config=quiet)
    except Exception as exc:  # noqa: BLE001
        raise StartupError(f"search app failed to start: {error_line(exc)}") from None
    return f"http://{config.serve.host}:{config.serve.port}"


def shutdown() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    except Exception:  # noqa: BLE001
        pass
    ray.shutdown()
