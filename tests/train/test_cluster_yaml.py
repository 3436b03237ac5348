"""cluster.yaml is a valid Ray cluster-launcher config (no cloud calls, no Ray started).

Public interfaces only: the JSON schema shipped in the ray wheel (``ray/autoscaler/ray-schema.json``,
what ``ray up`` validates against) plus the cross-field rules ``ray up`` adds on top of it, written
out here (``cluster_config_problems``) and each shown to catch its mistake.
"""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def cluster_cfg():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def ray_schema():
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def cluster_config_problems(cfg: dict, schema: dict) -> list[str]:
    """Every reason ``ray up`` would refuse ``cfg`` before any cloud call, as readable lines."""
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '$'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(cfg)
    ]
    types = cfg.get("available_node_types", {})
    if cfg.get("head_node_type") not in types:
        problems.append(f"head_node_type {cfg.get('head_node_type')!r} is not one of available_node_types")
    if sum(t.get("min_workers", 0) for t in types.values()) > cfg.get("max_workers", 0):
        problems.append("max_workers is smaller than the sum of min_workers of the node types")
    docker = cfg.get("docker")
    if docker and bool(docker.get("container_name")) != bool(
        docker.get("image") or (docker.get("head_image") and docker.get("worker_image"))
    ):
        problems.append("docker: needs both a container_name and an image")
    return problems


def test_cluster_yaml_passes_the_checks_of_ray_up(cluster_cfg, ray_schema):
    assert cluster_config_problems(cluster_cfg, ray_schema) == []


def test_cluster_yaml_is_a_cpu_head_with_autoscaling_gpu_workers(cluster_cfg):
    types = cluster_cfg["available_node_types"]
    # CPU head, autoscaling GPU workers, setup installs the package
    assert types[cluster_cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t.get("min_workers", 0) < t["max_workers"] for t in gpu)
    assert any("pip install" in c and "widedeep" in c for c in cluster_cfg["setup_commands"])


def _broken(cfg: dict, change) -> dict:
    bad = copy.deepcopy(cfg)
    change(bad)
    return bad


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda c: c["available_node_types"]["gpu_worker"].update(max_worker=3), "max_worker"),
        (lambda c: c.update(cluster_nmae="x"), "cluster_nmae"),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "0.5"),
        (lambda c: c.update(head_node_type="head_gpu"), "head_node_type 'head_gpu'"),
        (lambda c: c["available_node_types"]["gpu_worker"].update(min_workers=9), "sum of min_workers"),
        (lambda c: c.update(docker={"image": "rayproject/ray:2.60.0"}), "container_name"),
    ],
    ids=[
        "typo-in-node-type",
        "typo-at-top-level",
        "fractional-gpu",
        "unknown-head-type",
        "min-over-max",
        "docker-without-container",
    ],
)
def test_each_check_catches_its_mistake(cluster_cfg, ray_schema, change, problem):
    problems = cluster_config_problems(_broken(cluster_cfg, change), ray_schema)
    assert any(problem in p for p in problems), problems
