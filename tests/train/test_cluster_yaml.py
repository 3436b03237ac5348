"""cluster.yaml is a valid Ray cluster-launcher config (no cloud calls, no Ray started).

Public interfaces only: the JSON schema shipped in the ray wheel (``ray/autoscaler/ray-schema.json``,
what ``ray up`` validates against) plus the cross-field rules ``ray up`` adds on top of it, written
out here (``cluster_config_problems``) and each shown to catch its mistake.
"""

import copy
import fnmatch
import json
import re
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
    # CPU head, autoscaling GPU workers, each node type installs the package
    assert types[cluster_cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t.get("min_workers", 0) < t["max_workers"] for t in gpu)
    assert any("pip install" in c and "/home/ubuntu/widedeep" in c for c in cluster_cfg["head_setup_commands"])
    for t in gpu:
        assert any("pip install" in c and "/home/ubuntu/widedeep" in c for c in t["worker_setup_commands"])


def _commands(cfg: dict, node_type: str) -> list[str]:
    """What `ray up` runs on a node of ``node_type``: the common setup, then the head's or the
    node type's own worker setup (which replaces the top-level list)."""
    t = cfg["available_node_types"][node_type]
    own = cfg["head_setup_commands"] if node_type == cfg["head_node_type"] else None
    if own is None:
        own = t.get("worker_setup_commands", cfg.get("worker_setup_commands", []))
    return list(cfg.get("setup_commands", [])) + list(own)


def test_head_keeps_the_aws_providers_default_setup(cluster_cfg):
    """A head_setup_commands list replaces the AWS provider's default one, which installs boto3
    (the autoscaler on the head launches workers with it): its packages must still be installed."""
    import ray

    defaults = yaml.safe_load((Path(ray.__file__).parent / "autoscaler" / "aws" / "defaults.yaml").read_text())
    assert cluster_cfg["provider"]["type"] == "aws"
    head = " ".join(_commands(cluster_cfg, cluster_cfg["head_node_type"]))
    for cmd in defaults["head_setup_commands"]:
        for req in re.findall(r"'([A-Za-z0-9_.-]+[<>=!~]=?[^']*)'", cmd):
            assert f"'{req}'" in head, f"head setup lost the provider default {cmd!r}"


def test_gpu_extra_and_cuda_torch_only_on_gpu_nodes(cluster_cfg):
    for name, t in cluster_cfg["available_node_types"].items():
        text = " ".join(_commands(cluster_cfg, name))
        has_gpu = t["resources"].get("GPU", 0) >= 1
        assert ("[gpu]" in text) == has_gpu, f"{name}: {text}"
        assert ("requirements-cuda.txt" in text) == has_gpu and ("requirements-cpu.txt" in text) != has_gpu, name


def test_workers_get_an_instance_profile_for_object_storage(cluster_cfg):
    workers = {n: t for n, t in cluster_cfg["available_node_types"].items() if n != cluster_cfg["head_node_type"]}
    for name, t in workers.items():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name


def _excluded(path: str, patterns: list[str]) -> bool:
    """rsync's matching for the pattern forms cluster.yaml uses: a pattern without ``/`` (or
    ``**/name``) matches a path component at any depth; ``a/b`` matches from the top."""
    parts = path.split("/")
    for pat in patterns:
        pat = pat.removeprefix("**/")
        if "/" not in pat:
            if any(fnmatch.fnmatch(part, pat) for part in parts):
                return True
        elif any(fnmatch.fnmatch("/".join(parts[: i + 1]), pat) for i in range(len(parts))):
            return True
    return False


@pytest.mark.parametrize(
    "path",
    [
        ".venv/lib/python3.11/site-packages/torch/lib.so",
        "venv/bin/python",
        "widedeep-quickstart/prepared/x",
        "notebooks/notebook-runs/appstore/y",
        ".git/objects/ab",
        "widedeep/__pycache__/cli.cpython-311.pyc",
    ],
)
def test_rsync_leaves_out_virtualenvs_and_work_dirs(cluster_cfg, path):
    assert _excluded(path, cluster_cfg["rsync_exclude"])


def test_rsync_keeps_the_source(cluster_cfg):
    for path in ("widedeep/cli.py", "platform/jobs/adult.yaml", "platform/docker/requirements-cpu.txt", "setup.py"):
        assert not _excluded(path, cluster_cfg["rsync_exclude"]), path


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
