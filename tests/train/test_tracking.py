"""MLflow tracking and the registry (the optional ``mlflow`` extra; installed by the ``dev`` extra).

A training run with ``tracking.enabled`` logs its params and per-epoch metrics, records the
checkpoint URIs and registers the best checkpoint with an alias; ``models:/NAME@ALIAS`` then
resolves to it wherever widedeep takes a checkpoint or a bundle. Without MLflow installed,
nothing but a registry URI (or tracking) needs it, and that says how to install it.
"""

from __future__ import annotations

import json
import sys

import pytest

from widedeep import tracking
from widedeep.errors import ConfigError


def test_without_mlflow_only_registry_uris_need_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    assert tracking.resolve(str(tmp_path), "bundle") == str(tmp_path)  # a path needs nothing
    with pytest.raises(ConfigError, match=r"pip install 'widedeep\[mlflow\]'"):
        tracking.resolve("models:/widedeep-recommender@champion", "bundle")
    from widedeep.cli import main

    rc = main(["serve", "--bundle", "models:/widedeep-recommender@champion"])
    assert rc == 2  # a clear error, not a traceback


def test_registry_round_trip_and_kinds(tmp_path):
    uri = f"file:{tmp_path / 'mlruns'}"
    v1 = tracking.register(uri, "widedeep-recommender", str(tmp_path / "b1"), "bundle", aliases=("champion",))
    v2 = tracking.register(uri, "widedeep-recommender", str(tmp_path / "b2"), "bundle", aliases=("challenger",))
    assert (v1, v2) == ("1", "2")
    assert tracking.resolve("models:/widedeep-recommender@champion", "bundle", uri) == str(tmp_path / "b1")
    assert tracking.resolve("models:/widedeep-recommender/2", "bundle", uri) == str(tmp_path / "b2")
    tracking.set_alias(uri, "widedeep-recommender", "champion", v2)
    assert tracking.resolve("models:/widedeep-recommender@champion", None, uri) == str(tmp_path / "b2")
    with pytest.raises(ConfigError, match="is a bundle, a checkpoint is needed"):
        tracking.resolve("models:/widedeep-recommender@champion", "checkpoint", uri)
    with pytest.raises(ConfigError, match="not found in the registry"):
        tracking.resolve("models:/widedeep-recommender@nope", "bundle", uri)
    assert tracking.model_name("models:/widedeep-recommender@champion") == "widedeep-recommender"


@pytest.mark.ray
def test_training_run_is_tracked_and_its_checkpoint_registered(adult_small, tmp_path, ray_session):
    from mlflow import MlflowClient

    from widedeep.train.config import load_train_config
    from widedeep.train.driver import run_training

    uri = f"file:{tmp_path / 'mlruns'}"
    cfg = load_train_config(
        None,
        [
            f"data={adult_small}",
            f"storage_path={tmp_path / 'runs'}",
            "run_name=tracked",
            "num_workers=0",
            "epochs=2",
            "early_stopping.enabled=false",
            "tracking.enabled=true",
            f"tracking.uri={uri}",
            "tracking.register_as=widedeep-ranker",
            "tracking.aliases=[champion]",
        ],
    )
    summary = run_training(cfg)
    info = summary["mlflow"]
    assert info["registered"] == {"name": "widedeep-ranker", "version": "1"}
    c = MlflowClient(tracking_uri=uri)
    run = c.get_run(info["run_id"])
    assert run.data.params["epochs"] == "2" and run.data.params["optim.dense.kind"]
    assert run.data.tags["widedeep.checkpoint"] == summary["checkpoint"]
    hist = c.get_metric_history(info["run_id"], "valid_auc")
    assert [m.step for m in hist] == [1, 2]
    assert [m.value for m in hist] == pytest.approx([h["valid_auc"] for h in summary["history"]])
    assert run.data.metrics["best_auc"] == pytest.approx(summary["auc"])
    # the alias resolves to the best checkpoint, and a new run can warm-start from it by name
    assert tracking.resolve("models:/widedeep-ranker@champion", "checkpoint", uri) == summary["checkpoint"]
    warm = load_train_config(
        None,
        [
            f"data={adult_small}",
            f"storage_path={tmp_path / 'runs'}",
            "run_name=warm",
            "num_workers=0",
            "epochs=1",
            "warm_start_from=models:/widedeep-ranker@champion",
            f"tracking.uri={uri}",
        ],
    )
    from widedeep.train.driver import resolve

    assert resolve(warm).warm_start_from == summary["checkpoint"]
    json.dumps(info)  # JSON-serialisable for --metrics-out
