"""Deployment files in platform/ parse and point at files and import paths that exist.

The Serve config inside the RayService manifest must be the checked-in platform/serve.yaml, so one
file is validated (strictly, in tests/serve) and both `serve deploy` and KubeRay use it.
"""

from __future__ import annotations

import importlib
import re
import shlex

import yaml

from tests.conftest import ROOT


def _load(rel: str):
    return list(yaml.safe_load_all((ROOT / rel).read_text()))


def _config_paths(cmd: str) -> list[str]:
    parts = shlex.split(cmd)
    return [parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("--config", "--spec")]


def test_rayjob_points_at_existing_config():
    (job,) = _load("platform/k8s/rayjob-train.yaml")
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    entry = spec["entrypoint"]
    assert entry.startswith("python -m widedeep train")
    paths = _config_paths(entry)
    assert paths, entry
    for p in paths:
        assert (ROOT / p).is_file(), f"RayJob entrypoint names {p}, which does not exist"
    yaml.safe_load(spec["runtimeEnvYAML"])
    assert spec["rayClusterSpec"]["rayVersion"] == importlib.import_module("ray").__version__


def test_dockerfile_installs_the_package():
    text = (ROOT / "platform/docker/Dockerfile").read_text()
    m = re.search(r"ARG RAY_IMAGE=rayproject/ray:([0-9.]+)-", text)
    assert m and m.group(1) == importlib.import_module("ray").__version__
    assert 'pip install --no-cache-dir ".[' in text
    for src in re.findall(r"^COPY --chown=\S+ (.+) \S+$", text, flags=re.MULTILINE):
        for s in src.split():
            assert (ROOT / s).exists(), f"Dockerfile copies {s}, which does not exist"


def test_rayservice_embeds_the_checked_in_serve_config():
    (svc,) = _load("platform/k8s/rayservice.yaml")
    assert svc["kind"] == "RayService"
    embedded = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((ROOT / "platform/serve.yaml").read_text()), (
        "platform/k8s/rayservice.yaml serveConfigV2 drifted from platform/serve.yaml"
    )
    for app in embedded["applications"]:
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
    assert svc["spec"]["rayClusterConfig"]["rayVersion"] == importlib.import_module("ray").__version__


def test_clusters_get_the_serve_throughput_settings_local_ray_gets():
    """cluster.yaml's `ray start` commands and the Docker image (KubeRay) carry exactly
    ``widedeep.ray_runtime.SERVE_ENV``: the serving benchmark's settings are what clusters run."""
    from widedeep.ray_runtime import SERVE_ENV

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cluster[key] if "ray start" in c]
        assert len(start) == 1, cluster[key]
        env = dict(re.findall(r"\b(RAY_SERVE_\w+)=(\S+)", start[0]))
        assert env == SERVE_ENV, f"cluster.yaml {key}: {env}"
    text = (ROOT / "platform/docker/Dockerfile").read_text()
    env = dict(re.findall(r"\b(RAY_SERVE_\w+)=(\S+?)(?:\s|\\|$)", text))
    assert env == SERVE_ENV, f"Dockerfile: {env}"
