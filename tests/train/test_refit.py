"""``refit`` (widedeep.train.config.RefitConfig): the job trains, chooses its epochs on valid, then
trains again from scratch on train + valid for those epochs, and that model is the job's result.

Real Ray Train runs on the tiny prepared Adult data, streamed through Ray Data so the refit's two
split directories go through ``read_parquet`` together.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from widedeep.errors import CheckpointError, ConfigError
from widedeep.model.checkpoint import load_checkpoint
from widedeep.train.config import load_train_config
from widedeep.train.driver import run_training
from widedeep.train.evaluate import evaluate_split

pytestmark = pytest.mark.ray
JOB = Path(__file__).resolve().parents[2] / "platform" / "jobs" / "adult.yaml"


def _rows(split: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in split.glob("*.parquet"))


def _samples_per_epoch(ckpt: str) -> float:
    state = json.loads((Path(ckpt) / "checkpoint.json").read_text())["train_state"]
    return state["samples"] / state["epoch"]


def test_refit_trains_on_train_and_valid_for_the_chosen_epochs(ray_session, adult_small, tmp_path):
    cfg = load_train_config(
        JOB,
        [
            f"data={adult_small}",
            f"storage_path={tmp_path}",
            "run_name=job",
            "model.hidden=[16,8]",
            "epochs=3",
            "batch_size=128",
            "eval_batch_size=1024",
            "num_workers=1",
            "cpus_per_worker=0.5",
            "data_cache=stream",
            "refit.enabled=true",
        ],
    )
    out = run_training(cfg, metrics_out=str(tmp_path / "m.json"))
    assert json.loads((tmp_path / "m.json").read_text())["checkpoint"] == out["checkpoint"]

    # the selection run chose the epochs on valid; the refit ran exactly that many, under its own name
    sel, refit = load_checkpoint(out["selection_checkpoint"]), load_checkpoint(out["checkpoint"])
    assert Path(out["selection_checkpoint"]).parent.name == "job"
    assert Path(out["checkpoint"]).parent.name == "job-refit"
    assert Path(out["checkpoint"]).name == f"epoch={out['best_epoch']:04d}"
    assert out["refit"]["epochs"] == out["best_epoch"] and out["refit"]["fit_splits"] == ["train", "valid"]
    assert "auc" in out and out["split"] == "valid"  # the selection run's validation figures
    assert sel.fit_splits == ("train",) and sel.selected_by is None
    assert refit.fit_splits == ("train", "valid") and refit.selected_by == out["selection_checkpoint"]
    assert refit.config["early_stopping"]["enabled"] is False

    # every epoch of the refit saw the train and the valid rows, the selection's the train rows
    n_train, n_valid = _rows(adult_small / "train"), _rows(adult_small / "valid")
    assert _samples_per_epoch(out["selection_checkpoint"]) == n_train
    assert _samples_per_epoch(out["checkpoint"]) == n_train + n_valid
    a, b = (
        load_file(str(Path(out["checkpoint"]) / "model.safetensors")),
        load_file(str(Path(out["selection_checkpoint"]) / "model.safetensors")),
    )
    assert any(not torch.equal(a[k], b[k]) for k in a)

    # a split the refit was trained on is refused; the one after it is scored
    with pytest.raises(CheckpointError, match="in-sample"):
        evaluate_split(out["checkpoint"], str(adult_small / "valid"))
    assert 0.5 < evaluate_split(out["checkpoint"], str(adult_small / "test"))["auc"] <= 1.0


def test_refit_settings_are_checked():
    with pytest.raises(ConfigError, match="nothing to stop on"):
        load_train_config(JOB, ["data=/d", "refit.fit_splits=[train,valid]"])
    with pytest.raises(ConfigError, match=r"refit\.fit_splits"):
        load_train_config(JOB, ["data=/d", "refit.fit_splits=[valid]", "early_stopping.enabled=false"])
    with pytest.raises(ConfigError, match=r"refit\.enabled"):
        load_train_config(
            JOB, ["data=/d", "refit.enabled=true", "refit.fit_splits=[train,valid]", "early_stopping.enabled=false"]
        )
