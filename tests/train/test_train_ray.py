"""End-to-end training on Ray Train (V2) with tiny data: local mode through the CLI, and real
worker groups for multi-worker equivalence, resume and fault tolerance.

The ``DeterministicShards`` test hook (``widedeep.train.hooks``) makes the global batches identical
for any number of workers and any restart point, so these tests can compare final weights, not
just metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from widedeep.cli import main
from widedeep.train.config import load_train_config
from widedeep.train.driver import run_training
from widedeep.train.hooks import DeterministicShards, KillAtStep

pytestmark = pytest.mark.ray
JOB = Path(__file__).resolve().parents[2] / "platform" / "jobs" / "adult.yaml"
DETERMINISTIC = DeterministicShards()

# tiny + deterministic: 2,400 train rows, global batch 128 -> 18 steps/epoch
DET = [
    "model.hidden=[16,8]",
    "epochs=2",
    "eval_batch_size=1024",
    "early_stopping.enabled=false",
    "checkpoint_every_steps=5",
    "log_every_steps=5",
    "cpus_per_worker=0.5",
]


def _cfg(data, storage, name, *extra):
    return load_train_config(JOB, [f"data={data}", f"storage_path={storage}", f"run_name={name}", *DET, *extra])


def _weights(ckpt: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / "model.safetensors"))


def _assert_same_model(a: str, b: str, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=atol, rtol=1e-4), (k, (wa[k] - wb[k]).abs().max())


def _train_state(ckpt: str) -> dict:
    return json.loads((Path(ckpt) / "checkpoint.json").read_text())["train_state"]


def _checkpoint_names(storage: Path, name: str) -> list[str]:
    return sorted(p.name for p in (storage / name).iterdir() if (p / "checkpoint.json").exists())


def test_train_cli_local_mode_then_evaluate(ray_session, adult_small, tmp_path):
    out, ev = tmp_path / "train.json", tmp_path / "eval.json"
    rc = main(
        [
            "train",
            "--config",
            str(JOB),
            "--set",
            f"data={adult_small}",
            "--set",
            "num_workers=0",
            "--set",
            f"storage_path={tmp_path}",
            "--set",
            "run_name=local",
            "--set",
            "epochs=2",
            "--set",
            "shuffle=files",
            "--set",
            "early_stopping.patience=0",
            "--metrics-out",
            str(out),
        ]
    )
    assert rc == 0
    m = json.loads(out.read_text())
    for key in ("auc", "logloss", "accuracy", "calibration", "train_samples_per_s", "checkpoint"):
        assert key in m, key
    assert 0.8 < m["auc"] <= 1.0 and m["train_samples_per_s"] > 0
    assert m["data_cache"] == "memory"  # data_cache: auto, a small split
    t = m["timings"]
    assert 0 < t["ray_start_s"] and len(t["epochs"]) == m["epochs_completed"] == 2
    for i, e in enumerate(t["epochs"], start=1):
        assert e["epoch"] == i and e["samples"] == 2400 and e["samples_per_s"] > 0
        assert all(e[k] > 0 for k in ("data_wait_s", "compute_s", "validate_s", "checkpoint_s")), e
    assert t["steady_samples_per_s"] > 0
    ck = Path(m["checkpoint"])
    assert ck.is_dir() and (ck / "model.safetensors").exists()
    assert m["best_epoch"] == max(m["history"], key=lambda r: r["valid_auc"])["epoch"]  # restore-best
    rc = main(["evaluate", "--checkpoint", str(ck), "--data", str(adult_small / "test"), "--metrics-out", str(ev)])
    assert rc == 0
    e = json.loads(ev.read_text())
    assert 0.8 < e["auc"] <= 1.0 and 0.7 < e["accuracy"] <= 1.0 and e["rows"] == 300


@pytest.fixture(scope="module")
def baseline(ray_session, adult_small, tmp_path_factory):
    """One uninterrupted 1-worker run (the reference for the tests below)."""
    storage = tmp_path_factory.mktemp("runs")
    summary = run_training(_cfg(adult_small, storage, "base", "num_workers=1", "batch_size=128"), hooks=DETERMINISTIC)
    return storage, summary


@pytest.mark.slow
def test_two_workers_match_one_worker_on_the_same_global_batches(baseline, adult_small, tmp_path):
    _, base = baseline
    two = run_training(_cfg(adult_small, tmp_path, "two", "num_workers=2", "batch_size=64"), hooks=DETERMINISTIC)
    assert two["global_step"] == base["global_step"]
    _assert_same_model(two["latest_checkpoint"], base["latest_checkpoint"], atol=1e-5)
    assert two["auc"] == pytest.approx(base["auc"], abs=1e-5)


@pytest.mark.slow
def test_same_run_name_resumes_from_the_latest_checkpoint(baseline, adult_small, tmp_path):
    _, base = baseline
    first = run_training(
        _cfg(adult_small, tmp_path, "again", "num_workers=1", "batch_size=128", "epochs=1"), hooks=DETERMINISTIC
    )
    assert first["epochs_completed"] == 1
    mtime = (Path(first["latest_checkpoint"]) / "model.safetensors").stat().st_mtime
    second = run_training(_cfg(adult_small, tmp_path, "again", "num_workers=1", "batch_size=128"), hooks=DETERMINISTIC)
    assert second["epochs_completed"] == 2
    st = _train_state(second["latest_checkpoint"])
    assert st["resumes"] == [{"epoch": 1, "global_step": first["global_step"]}]  # not from epoch 0
    assert (Path(first["latest_checkpoint"]) / "model.safetensors").stat().st_mtime == mtime  # epoch 1 not redone
    _assert_same_model(second["latest_checkpoint"], base["latest_checkpoint"], atol=1e-5)


@pytest.mark.slow
def test_killed_worker_resumes_from_last_checkpoint(baseline, adult_small, tmp_path):
    base_storage, base = baseline
    run = run_training(
        _cfg(adult_small, tmp_path, "ft", "num_workers=1", "batch_size=128", "max_failures=1"),
        hooks=KillAtStep(step=12, inner=DETERMINISTIC),
    )
    st = _train_state(run["latest_checkpoint"])
    # one restart, mid-epoch, from the latest checkpoint the controller had committed when the
    # worker died at step 12 (step 10, or step 5 if step 10's report was still in flight)
    assert len(st["resumes"]) == 1 and st["resumes"][0]["epoch"] == 0
    assert st["resumes"][0]["global_step"] in (5, 10)
    # no checkpoint lost: the same checkpoints as the uninterrupted run, all complete
    assert _checkpoint_names(tmp_path, "ft") == _checkpoint_names(base_storage, "base")
    assert run["global_step"] == base["global_step"]
    assert run["auc"] == pytest.approx(base["auc"], abs=1e-3)
    _assert_same_model(run["latest_checkpoint"], base["latest_checkpoint"], atol=1e-4)


@pytest.mark.slow
def test_cached_and_streamed_data_train_the_same_model_in_file_order(ray_session, adult_small, tmp_path):
    """``shuffle: none``: the in-memory split and the Ray Data stream give the same batches, so the
    same model; with shuffling they differ only in the (seeded) order."""
    same = ["num_workers=1", "batch_size=128", "shuffle=none", "checkpoint_every_steps=0"]
    mem = run_training(_cfg(adult_small, tmp_path, "mem", *same, "data_cache=memory"))
    stream = run_training(_cfg(adult_small, tmp_path, "stream", *same, "data_cache=stream"))
    assert (mem["data_cache"], stream["data_cache"]) == ("memory", "stream")
    assert mem["global_step"] == stream["global_step"] == 2 * 19  # 2,400 rows, batch 128: no row dropped
    _assert_same_model(mem["latest_checkpoint"], stream["latest_checkpoint"], atol=1e-5)
