"""Sharded training end to end on Ray Train: a job whose tables exceed ``sharding.memory_budget_mb``
trains row-wise sharded with no command-line change; its checkpoint (tables by global row range,
pieces from every worker) resumes on 1 worker (replicated) and on 3 workers (sharded 3 ways), and
both end where an uninterrupted 2-worker run ends; export/serving load it into one process.

The ``DeterministicShards`` test hook (``widedeep.train.hooks``) gives every world size the same
global batches (the global batch, 96 rows, is divisible by 1, 2 and 3), so the runs can be
compared by their outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from tests.conftest import ROOT
from tests.train.helpers import make_prepared
from widedeep.data.generate import generate_appstore
from widedeep.errors import WidedeepError
from widedeep.model.checkpoint import load_checkpoint
from widedeep.train.config import load_train_config
from widedeep.train.driver import run_training
from widedeep.train.hooks import DeterministicShards

pytestmark = [pytest.mark.ray, pytest.mark.shard]
JOB = ROOT / "platform" / "jobs" / "appstore-ranker.yaml"
GLOBAL_BATCH = 96
COMMON = [
    "model.hidden=[16]",
    "epochs=2",
    "eval_batch_size=40",  # 241 valid rows: 2, 2 and 3 batches on 3 workers (lockstep evaluation)
    "early_stopping.enabled=false",
    "log_every_steps=10",
    "cpus_per_worker=0.25",
    "torch_threads=1",
    "max_failures=0",
    # the tables (3.0 MiB, mostly the wide installed_x_app cross with FTRL state) exceed this
    # budget: `auto` shards every table of at least min_rows rows; smaller ones stay replicated
    "sharding.memory_budget_mb=2",
    "sharding.min_rows=8",
]


@pytest.fixture(scope="module")
def appstore_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_appstore")
    generate_appstore(root / "raw", 2410, users=300, items=60, seed=0)
    raw = pads.dataset(str(root / "raw"), format="parquet").to_table()
    return make_prepared(raw, root / "prep", ROOT / "platform" / "specs" / "appstore.yaml")


def _cfg(data, storage, workers: int, *extra: str):
    return load_train_config(
        JOB,
        [
            f"data={data}",
            f"storage_path={storage}",
            "run_name=run",
            *COMMON,
            f"num_workers={workers}",
            f"batch_size={GLOBAL_BATCH // workers}",
            *extra,
        ],
    )


def _scores(ckpt: str, data: Path) -> np.ndarray:
    """The checkpoint loaded into one process (as export and serving do), scored on the test split."""
    from widedeep.train.tasks import get_task

    ck = load_checkpoint(ckpt)
    task = get_task("ranking")
    from widedeep.train.config import config_from_dict

    cfg = config_from_dict(ck.config)
    rows = pads.dataset(str(data / "test"), format="parquet").to_table(
        columns=task.required_columns(ck.feature_space, cfg)
    )
    with torch.no_grad():
        return task.eval_outputs(ck.model, task.collate(rows, ck.feature_space, cfg), cfg)["outputs"]


def _meta(ckpt: str) -> dict:
    return json.loads((Path(ckpt) / "checkpoint.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_train_sharded_on_2_resume_on_1_and_3(ray_session, appstore_tiny, tmp_path):
    data = appstore_tiny
    full = run_training(_cfg(data, tmp_path / "full", 2), hooks=DeterministicShards())
    first = run_training(_cfg(data, tmp_path / "a", 2, "epochs=1"), hooks=DeterministicShards())

    meta = _meta(first["latest_checkpoint"])
    plan = meta["tables"]["plan"]
    assert plan["world_size"] == 2
    sharded = {t["name"] for t in plan["tables"] if t["placement"] == "row_wise"}
    replicated = {t["name"] for t in plan["tables"] if t["placement"] == "replicated"}
    assert "wide/installed_x_app" in sharded and "deep/user_gender" in replicated, plan
    files = {p["file"] for m in meta["tables"]["modules"].values() for p in m["pieces"]}
    assert any("rank00001" in f for f in files) and all((Path(first["latest_checkpoint"]) / f).is_file() for f in files)

    # the epoch-1 checkpoint of 2 workers, loaded into one process (export / serving path)
    assert np.isfinite(_scores(first["latest_checkpoint"], data)).all()

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    # one worker: everything replicated (a budget that fits one worker; 2 MiB would not)
    with pytest.raises(WidedeepError, match=r"memory_budget_mb: the tables need 3\.0 MiB per worker with 1 worker"):
        run_training(_cfg(data, tmp_path / "b", 1), hooks=DeterministicShards())
    one = run_training(_cfg(data, tmp_path / "b", 1, "sharding.memory_budget_mb=16"), hooks=DeterministicShards())
    three = run_training(_cfg(data, tmp_path / "a", 3), hooks=DeterministicShards())
    for run, workers in ((one, 1), (three, 3)):
        st = _meta(run["latest_checkpoint"])["train_state"]
        assert st["resumes"] == [{"epoch": 1, "global_step": first["global_step"]}], (workers, st["resumes"])
        assert run["global_step"] == full["global_step"]
    assert "tables" not in _meta(one["latest_checkpoint"])  # replicated: tables packed as before
    assert _meta(three["latest_checkpoint"])["tables"]["plan"]["world_size"] == 3

    want = _scores(full["latest_checkpoint"], data)
    for run, workers in ((one, 1), (three, 3)):
        np.testing.assert_allclose(
            _scores(run["latest_checkpoint"], data),
            want,
            atol=2e-5,
            rtol=1e-4,
            err_msg=f"resumed on {workers} worker(s)",
        )
    assert one["auc"] == pytest.approx(full["auc"], abs=1e-4)
    assert three["auc"] == pytest.approx(full["auc"], abs=1e-4)
