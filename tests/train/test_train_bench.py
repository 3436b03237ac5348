"""``widedeep bench train`` and its plain PyTorch W&D contender (issue 12 item 4).

No timing asserts (figures are the benchmark's job): the CLI writes every key the acceptance
check reads for the step contenders, and the plain contender reaches the model quality of
``WideAndDeep`` on the same Adult data, so its speed is the speed of a real competitor.
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import ROOT
from widedeep.cli import main
from widedeep.errors import DataError
from widedeep.features import FeatureSpace, load_spec
from widedeep.features.fit import fit_tables
from widedeep.train.config import load_train_config
from widedeep.train.plain_wide_deep import PlainTrainer, load_plain, train_plain
from widedeep.train.pointwise_metrics import task_metrics
from widedeep.train.tasks import get_task


def test_bench_train_step_contenders_smoke(tmp_path):
    """Tiny Criteo-shaped run without Ray: the three step contenders and their AUC after the same steps."""
    out = tmp_path / "bench.json"
    args = ["bench", "train", "--rows", "12000", "--batch-size", "1024", "--steps", "2", "--repeats", "1"]
    args += ["--warmup", "1", "--no-pipeline", "--no-adult", "--workdir", str(tmp_path), "--json", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())
    c = r["criteo"]
    for k in (
        "model_step_samples_per_s",
        "fair_baseline_samples_per_s",
        "dense_adam_samples_per_s",
        "mlp_only_samples_per_s",
    ):
        assert c[k] > 0
    auc = c["valid_auc_after_steps"]
    assert auc["steps"] == 3 and auc["valid_rows"] == 1024
    assert all(0.0 <= auc[k] <= 1.0 for k in ("model_step", "fair_baseline", "dense_adam"))
    assert r["config"]["tables"]["deep"] == 26 and r["config"]["numeric"] == 13  # Criteo-shaped
    assert "adult" not in r and "pipeline_samples_per_s" not in c


@pytest.fixture(scope="module")
def adult_prepared(adult_path):
    """Adult fitted and transformed in this process (the adult spec), 80/20 train/valid by row hash."""
    spec = load_spec(ROOT / "platform" / "specs" / "adult.yaml")
    raw = pq.read_table(adult_path)
    is_train = np.random.default_rng(0).random(raw.num_rows) < 0.8
    train_raw, valid_raw = raw.filter(is_train), raw.filter(~is_train)
    fs = fit_tables(spec, [train_raw])
    return FeatureSpace.from_json(fs.to_json()), fs.transform(train_raw), fs.transform(valid_raw)


def test_plain_contender_matches_widedeep_quality(adult_prepared):
    """Same recipe (platform/jobs/adult.yaml), 2 epochs each: the plain W&D's validation AUC is
    within 0.02 of WideAndDeep's, and both learn Adult (AUC well above chance)."""
    fs, train_t, valid_t = adult_prepared
    cfg = load_train_config(ROOT / "platform" / "jobs" / "adult.yaml", ["data=/unused"])
    task = get_task("ranking")
    torch.manual_seed(0)
    model = task.build_model(fs, cfg)
    opt = cfg.optim.dense.build([p for p in model.parameters() if p.requires_grad])
    bs = cfg.batch_size
    for epoch in range(2):
        perm = np.random.default_rng(epoch).permutation(train_t.num_rows)
        shuffled = train_t.take(perm)
        for s in range(0, shuffled.num_rows, bs):
            loss = task.loss(model, task.collate(shuffled.slice(s, bs), fs, cfg), cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        vb = task.collate(valid_t, fs, cfg)
        ours = task_metrics("binary", vb.labels.numpy(), model(vb).numpy())["auc"]

    train, valid = load_plain(train_t, fs), load_plain(valid_t, fs)
    plain = train_plain(
        train, valid, PlainTrainer.build(fs, cfg, sparse=True), epochs=2, batch_size=bs, seed=0, patience=None
    )
    assert plain["epochs"] == 2 and plain["samples"] == 2 * train.rows
    assert ours > 0.88 and plain["best_valid_auc"] > 0.88
    assert abs(plain["history"][-1]["auc"] - ours) < 0.02


def test_plain_contender_refuses_multivalent_columns(adult_prepared):
    import pyarrow as pa

    fs, train_t, _ = adult_prepared
    col = fs.deep_tables[0].column
    bad = train_t.set_column(
        train_t.column_names.index(col), col, pa.array([[1]] * train_t.num_rows, pa.list_(pa.int64()))
    )
    with pytest.raises(DataError, match=col):
        load_plain(bad, fs, "train")
