"""platform/serve.yaml: Serve's schema, a strict unknown-key walk (Serve ignores typos), the
import path, and the batching / autoscaling invariants. No Ray cluster needed."""

from __future__ import annotations

import importlib
import typing

import pytest
import yaml
from pydantic import BaseModel

from tests.conftest import ROOT

CONFIG = ROOT / "platform" / "serve.yaml"


def unknown_keys(data: typing.Any, model: type[BaseModel], path: str = "$") -> list[str]:
    """Keys in ``data`` that ``model`` (and its nested models) would silently ignore."""
    out: list[str] = []
    if not isinstance(data, dict):
        return out
    fields = model.model_fields
    aliases = {f.alias for f in fields.values() if f.alias}
    for k, v in data.items():
        if k not in fields and k not in aliases:
            out.append(f"{path}.{k}")
            continue
        ann = fields[k].annotation
        for t in typing.get_args(ann) or (ann,):
            for tt in typing.get_args(t) or (t,):
                if isinstance(tt, type) and issubclass(tt, BaseModel):
                    items = v if isinstance(v, list) else [v]
                    for i, item in enumerate(items):
                        sub = f"{path}.{k}[{i}]" if isinstance(v, list) else f"{path}.{k}"
                        out += unknown_keys(item, tt, sub)
    return out


@pytest.fixture(scope="module")
def cfg() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_schema_and_no_unknown_keys(cfg):
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(cfg)
    assert unknown_keys(cfg, ServeDeploySchema) == []


def test_walker_catches_typos(cfg):
    from ray.serve.schema import ServeDeploySchema

    bad = yaml.safe_load(CONFIG.read_text())
    bad["applications"][0]["route_prefx"] = "/"
    bad["applications"][0]["deployments"][2]["max_ongoing_request"] = 3
    bad["applications"][0]["deployments"][2]["autoscaling_config"]["min_replica"] = 1
    bad["applications"][0]["deployments"][2]["ray_actor_options"]["num_gpu"] = 1
    ServeDeploySchema.model_validate(bad)  # Serve accepts all four...
    assert sorted(unknown_keys(bad, ServeDeploySchema)) == [  # ...the walker names them
        "$.applications[0].deployments[2].autoscaling_config.min_replica",
        "$.applications[0].deployments[2].max_ongoing_request",
        "$.applications[0].deployments[2].ray_actor_options.num_gpu",
        "$.applications[0].route_prefx",
    ]


def test_import_path_args_and_deployments(cfg):
    from ray import serve

    from widedeep.serve.schemas import AppArgs

    (app,) = cfg["applications"]
    module, attr = app["import_path"].split(":")
    builder = getattr(importlib.import_module(module), attr)
    args = AppArgs.model_validate(app["args"])  # strict: unknown args fail (extra="forbid")
    assert isinstance(builder(args), serve.Application)
    names = [d["name"] for d in app["deployments"]]
    assert names == (["Ingress", "Retriever", "Ranker"] if args.pipeline == "chain" else ["Ingress"])
    for d in app["deployments"]:
        auto = d["autoscaling_config"]
        assert "num_replicas" not in d
        assert auto["target_ongoing_requests"] < d["max_ongoing_requests"], d["name"]
        assert d["max_queued_requests"] > 0, f"{d['name']}: unbounded queue (no fast 503 under overload)"
    ranker = next(d for d in app["deployments"] if d["name"] == "Ranker")
    assert ranker["max_ongoing_requests"] >= args.max_batch_size, "batches could never fill"


def test_unknown_app_args_are_rejected():
    from pydantic import ValidationError

    from widedeep.serve.schemas import AppArgs

    with pytest.raises(ValidationError, match="candidatez"):
        AppArgs.model_validate({"bundle": "/b", "candidatez": 5})
    with pytest.raises(ValidationError, match="max_k"):
        AppArgs.model_validate({"bundle": "/b", "candidates": 10, "max_k": 50})
