"""Deployment files in platform/ are what KubeRay, Docker and Serve accept, and deploy the platform.

The KubeRay manifests are validated against the CRD schemas of the KubeRay release they target
(v1.7.0, vendored under tests/assets/kuberay, see its README), with unknown keys rejected as the
API server's strict field validation does; then what a working deployment needs is checked: the
head ports KubeRay builds its Service from, a GPU worker group, a ServiceAccount for object-store
credentials, a RayJob that prepares and then trains. The Serve config inside the RayService must
be the checked-in platform/serve.yaml, so one file is validated (strictly, in tests/serve) and both
`serve deploy` and KubeRay use it.
"""

from __future__ import annotations

import copy
import gzip
import importlib
import json
import re
import shlex
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import ASSETS, ROOT

KUBERAY_VERSION = "v1.7.0"
IMAGE_ROOT = "/home/ray/widedeep/"  # where platform/docker/Dockerfile puts the repository's files
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080}


def _load(rel: str) -> dict[str, dict]:
    """The documents of a manifest file by kind."""
    docs = list(yaml.safe_load_all((ROOT / rel).read_text()))
    return {d["kind"]: d for d in docs}


def closed(schema: Any) -> Any:
    """``schema`` with every object schema that lists ``properties`` closed to other keys (unless it
    says ``x-kubernetes-preserve-unknown-fields``): a CRD's structural schema would silently prune
    a misspelt key, the API server's strict field validation (kubectl's default) refuses it."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: closed(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = closed(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = closed(out[key])
    return out


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict]:
    return {
        kind: closed(json.loads(gzip.open(ASSETS / "kuberay" / f"{kind}.v1.schema.json.gz").read()))
        for kind in ("RayJob", "RayService")
    }


def schema_problems(doc: dict, schema: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '$'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]


@pytest.mark.parametrize(
    ("rel", "kind"), [("platform/k8s/rayjob-train.yaml", "RayJob"), ("platform/k8s/rayservice.yaml", "RayService")]
)
def test_manifests_validate_against_kuberay_crd_schemas(rel, kind, crd_schemas):
    doc = _load(rel)[kind]
    assert doc["apiVersion"] == "ray.io/v1"
    assert schema_problems(doc, crd_schemas[kind]) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda s: s.update(workerGroupSpec=s.pop("workerGroupSpecs")), "'workerGroupSpec' was unexpected"),
        (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "0 is not of type 'string'"),
        (lambda s: s["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0].update(port=1), "'port'"),
        (lambda s: s["workerGroupSpecs"][0].update(replicas="two"), "'two' is not of type 'integer'"),
    ],
    ids=["typo-in-spec", "start-param-not-a-string", "typo-in-a-port", "replicas-not-a-number"],
)
def test_schema_check_catches_each_mistake(crd_schemas, change, problem):
    job = copy.deepcopy(_load("platform/k8s/rayjob-train.yaml")["RayJob"])
    change(job["spec"]["rayClusterSpec"])
    problems = schema_problems(job, crd_schemas["RayJob"])
    assert any(problem in p for p in problems), problems


def _cluster_specs() -> list[tuple[str, dict, dict]]:
    """(file, its RayCluster spec, its ServiceAccount) of both manifests."""
    job, svc = _load("platform/k8s/rayjob-train.yaml"), _load("platform/k8s/rayservice.yaml")
    return [
        ("rayjob-train.yaml", job["RayJob"]["spec"]["rayClusterSpec"], job["ServiceAccount"]),
        ("rayservice.yaml", svc["RayService"]["spec"]["rayClusterConfig"], svc["ServiceAccount"]),
    ]


@pytest.mark.parametrize(
    ("name", "cluster", "account"), _cluster_specs(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_clusters_list_head_ports_have_gpu_workers_and_a_service_account(name, cluster, account):
    assert cluster["rayVersion"] == importlib.import_module("ray").__version__
    head = cluster["headGroupSpec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for c in head["containers"] for p in c.get("ports", [])}
    assert ports == HEAD_PORTS, f"{name}: head ports {ports}"
    pods = [head] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    assert {p.get("serviceAccountName") for p in pods} == {account["metadata"]["name"]}, name
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    gpu = [g for g in cluster["workerGroupSpecs"] if _gpus(g) >= 1]
    assert gpu, f"{name}: no GPU worker group"
    for g in gpu:
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"].get("tolerations", []))
        assert all(c["image"].endswith("-cuda") for c in g["template"]["spec"]["containers"])
    assert all(_gpus(g) == 0 for g in cluster["workerGroupSpecs"] if g not in gpu)


def _gpus(group: dict) -> int:
    return sum(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) for c in group["template"]["spec"]["containers"])


def _commands(entrypoint: str) -> list[list[str]]:
    """The shell commands of an entrypoint joined by ``&&``."""
    return [shlex.split(part) for part in entrypoint.split("&&")]


def _opt(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_rayjob_prepares_then_trains_on_the_object_store():
    spec = _load("platform/k8s/rayjob-train.yaml")["RayJob"]["spec"]
    prepare, train = _commands(spec["entrypoint"])
    assert prepare[:4] == ["python", "-m", "widedeep", "prepare"] and train[:4] == ["python", "-m", "widedeep", "train"]
    sets = dict(s.split("=", 1) for s in (train[i + 1] for i, a in enumerate(train) if a == "--set"))
    assert sets["data"] == _opt(prepare, "--out"), "train reads what prepare wrote"
    for uri in (_opt(prepare, "--input"), _opt(prepare, "--out"), sets["storage_path"]):
        assert uri.startswith("s3://"), uri
    assert sets["use_gpu"] == "true" and int(sets["num_workers"]) == 2
    gpu_workers = sum(g["minReplicas"] for g in spec["rayClusterSpec"]["workerGroupSpecs"] if _gpus(g))
    assert gpu_workers >= int(sets["num_workers"]), "the GPU group's minimum holds every train worker"
    for path in (_opt(prepare, "--spec"), _opt(train, "--config")):
        assert path.startswith(IMAGE_ROOT) and (ROOT / path.removeprefix(IMAGE_ROOT)).is_file(), path
    yaml.safe_load(spec["runtimeEnvYAML"])
    assert spec["shutdownAfterJobFinishes"] is True


def test_dockerfile_pins_dependencies_in_their_own_layer_per_variant():
    text = (ROOT / "platform/docker/Dockerfile").read_text()
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1) == importlib.import_module("ray").__version__
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    bases = dict(re.findall(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-(\w+) AS base-(\w+)$", text, re.M))
    assert bases == {"cpu": "cpu", "gpu": "cuda"}, bases
    assert re.search(r"^FROM base-\$\{VARIANT\}$", text, re.M)
    lines = text.splitlines()
    deps = next(i for i, line in enumerate(lines) if "requirements-${VARIANT}.txt" in line)
    code = next(i for i, line in enumerate(lines) if line.startswith("COPY") and "widedeep ./widedeep" in line)
    assert deps < code, "dependencies must install before the code is copied (their layer stays cached)"
    assert "pip install --no-cache-dir -r /tmp/requirements.txt" in lines[deps + 1]
    assert any("pip install --no-cache-dir --no-deps ." in line for line in lines[code:])
    for src in re.findall(r"^COPY --chown=\S+ (.+) \S+$", text, flags=re.MULTILINE):
        for s in src.split():
            for variant in ("cpu", "cuda"):
                assert (ROOT / s.replace("${VARIANT}", variant)).exists(), (
                    f"Dockerfile copies {s}, which does not exist"
                )
    for variant, torch in (("cpu", "torch==2.13.0+cpu"), ("cuda", "torch==2.13.0")):
        reqs = [
            r.split("#")[0].strip()
            for r in (ROOT / f"platform/docker/requirements-{variant}.txt").read_text().splitlines()
        ]
        pins = [r for r in reqs if r and not r.startswith("--")]
        assert torch in pins and "ray[train,serve,data]==2.60.0" in pins
        assert all(re.fullmatch(r"[\w.\-\[\],]+==[\w.+]+", r) for r in pins), f"{variant}: unpinned {pins}"


def test_rayservice_embeds_the_checked_in_serve_config():
    svc = _load("platform/k8s/rayservice.yaml")["RayService"]
    embedded = yaml.safe_load(svc["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((ROOT / "platform/serve.yaml").read_text()), (
        "platform/k8s/rayservice.yaml serveConfigV2 drifted from platform/serve.yaml"
    )
    for app in embedded["applications"]:
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))


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
