"""ray-cluster.yaml (Google Cloud) and ray-cluster-aws.yaml against Ray's own cluster-config schema,
after Ray fills in its defaults as ``ray up`` does, and against what the pipeline's actors request."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.config import load_config

REPO = Path(__file__).resolve().parents[2]
FILES = {"gcp": REPO / "ray-cluster.yaml", "aws": REPO / "ray-cluster-aws.yaml"}
CLUSTER_CONFIG = REPO / "cluster" / "gpu-cluster.toml"
#: the reader, the writer and the coordinator each request [ray] control_resources
CONTROL_ACTORS = 3


def _prepared(name: str) -> dict[str, Any]:
    raw = yaml.safe_load(FILES[name].read_text())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_file_passes_rays_schema_once_its_defaults_are_filled(name: str) -> None:
    config = _prepared(name)
    assert config["provider"]["type"] == name
    assert config["head_node_type"] in config["available_node_types"]
    assert config["idle_timeout_minutes"] > 0
    assert any(t.get("min_workers", 0) >= 1 for t in config["available_node_types"].values())


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_wrong_key_is_caught_by_the_same_check(name: str) -> None:
    raw = yaml.safe_load(FILES[name].read_text())
    raw["available_node_types"]["gpu_l4"]["min_worker"] = 1  # a typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


@pytest.mark.parametrize("name", sorted(FILES))
def test_the_node_types_offer_what_the_pipelines_actors_request(name: str) -> None:
    config = _prepared(name)
    pipeline = load_config(CLUSTER_CONFIG, environ={})
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    workers = {n: t["resources"] for n, t in types.items() if n != config["head_node_type"]}
    # reader, writer and coordinator fit on the head, and only there (the embedded store is on its disk)
    assert pipeline.ray.control_resources
    for resource, amount in pipeline.ray.control_resources.items():
        assert head.get(resource, 0) >= CONTROL_ACTORS * amount
        assert all(resource not in r for r in workers.values())
    # an embedding actor fits on some GPU worker type, which has a GPU type of the list
    emb = pipeline.embedding
    fits = [n for n, r in workers.items()
            if r.get("GPU", 0) >= emb.gpus_per_actor and all(r.get(k, 0) >= v for k, v in emb.resources.items())]
    assert {"gpu_l4", "gpu_a100"} <= set(fits)
    assert "GPU" not in head and all(k not in head for k in emb.resources)
    assert sum(types[n].get("max_workers", 0) for n in fits) >= emb.actors


@pytest.mark.parametrize("name", sorted(FILES))
def test_nothing_but_ssh_is_exposed_and_the_project_is_installed_with_a_cuda_torch(name: str) -> None:
    config = _prepared(name)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    pipeline = load_config(CLUSTER_CONFIG, environ={})
    assert pipeline.serve.host == "127.0.0.1" and pipeline.ray.address == "auto"
    setup = " ".join(config["setup_commands"])
    assert "pip install -q torch==" in setup and "--index-url" not in setup  # PyPI's Linux wheel: CUDA
    assert "pip install -q -e /home/ubuntu/embedcluster" in setup
    assert config["file_mounts"]["/home/ubuntu/embedcluster"] == "."
