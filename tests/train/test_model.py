"""WideAndDeep, checkpoints and warm start on real (small) Adult data, no Ray."""

import json

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch
from safetensors.torch import load_file

from tests.support import with_changed_vocabulary
from widedeep.errors import CheckpointError, ConfigError
from widedeep.features import FeatureSpace
from widedeep.model.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from widedeep.train.config import load_train_config
from widedeep.train.tasks import get_task
from widedeep.train.warm_start import warm_start


def _setup(data, *overrides):
    cfg = load_train_config(None, [f"data={data}", "model.hidden=[16,8]", *overrides])
    fs = FeatureSpace.load(str(data / "feature_space.json"))
    task = get_task("ranking")
    table = pads.dataset(str(data / "train")).to_table(columns=task.required_columns(fs, cfg))
    return cfg, fs, task, table


def _train(model, task, cfg, fs, table, steps=20, bs=128):
    opt = cfg.optim.dense.build([p for p in model.parameters() if p.requires_grad])
    losses = []
    for s in range(steps):
        b = task.collate(table.slice((s * bs) % (table.num_rows - bs), bs), fs, cfg)
        loss = task.loss(model, b, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return opt, losses


@pytest.mark.parametrize("mode", ["wide", "deep", "wide_deep"])
def test_modes_train_and_have_the_right_parts(adult_small, mode):
    cfg, fs, task, table = _setup(adult_small, f"model.mode={mode}")
    torch.manual_seed(0)
    model = task.build_model(fs, cfg)
    assert (model.wide_tbe is not None) == (mode != "deep")
    assert (model.mlp is not None) == (mode != "wide")
    w0 = model.wide_tbe.weight.clone() if model.wide_tbe is not None else None
    _, losses = _train(model, task, cfg, fs, table, steps=30)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # learns
    if w0 is not None:  # FTRL updated the wide table in place (no dense grad)
        assert not torch.equal(w0, model.wide_tbe.weight)
        assert model.wide_tbe.weight.grad is None
    out = model(task.collate(table.slice(0, 7), fs, cfg))
    assert out.shape == (7,)


def test_checkpoint_round_trip_restores_weights_and_all_optimizer_state(adult_small, tmp_path):
    cfg, fs, task, table = _setup(adult_small)
    torch.manual_seed(0)
    model = task.build_model(fs, cfg)
    opt, _ = _train(model, task, cfg, fs, table)
    ck = save_checkpoint(
        tmp_path / "ck",
        model=model,
        optimizer=opt,
        feature_space=fs,
        config=cfg.to_dict(),
        metrics={"auc": 0.5},
        task="ranking",
        state={"epoch": 1, "global_step": 20},
    )
    files = {p.name for p in ck.iterdir()}
    assert {
        "model.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "feature_space.json",
        "config.yaml",
        "metrics.json",
        "checkpoint.json",
    } <= files
    tensors = load_file(str(ck / "model.safetensors"))
    assert "wide_tbe.ftrl_z" in tensors and "deep_tbe.adagrad_sum" in tensors  # sparse state saved
    loaded = load_checkpoint(ck)
    assert not loaded.model.training and loaded.metrics == {"auc": 0.5}
    b = task.collate(table.slice(0, 64), fs, cfg)
    model.eval()
    assert torch.allclose(model(b), loaded.model(b))
    # a fresh model + optimizer continues exactly like the original
    model2 = task.build_model(fs, cfg)
    opt2 = cfg.optim.dense.build([p for p in model2.parameters() if p.requires_grad])
    load_state_into(ck, model2, opt2)
    model.train()
    model2.train()
    for m, o in ((model, opt), (model2, opt2)):
        loss = task.loss(m, b, cfg)
        o.zero_grad()
        loss.backward()
        o.step()
    for (k, v), (k2, v2) in zip(model.state_dict().items(), model2.state_dict().items(), strict=True):
        assert k == k2 and torch.allclose(v, v2, atol=1e-6), k


def test_checkpoint_hash_mismatch_names_both_hashes(adult_small, tmp_path):
    cfg, fs, task, _ = _setup(adult_small)
    model = task.build_model(fs, cfg)
    ck = save_checkpoint(
        tmp_path / "ck",
        model=model,
        optimizer=None,
        feature_space=fs,
        config=cfg.to_dict(),
        metrics={},
        task="ranking",
        state={},
    )
    meta = json.loads((ck / "checkpoint.json").read_text())
    meta["feature_space_hash"] = "0" * 64
    (ck / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{fs.content_hash}.*{'0' * 64}"):
        load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="not a widedeep checkpoint"):
        load_checkpoint(tmp_path)


def test_warm_start_maps_rows_by_vocabulary_value(adult_small, tmp_path):
    cfg, fs, task, table = _setup(adult_small)
    torch.manual_seed(0)
    old = task.build_model(fs, cfg)
    opt, _ = _train(old, task, cfg, fs, table)
    ck = save_checkpoint(
        tmp_path / "old",
        model=old,
        optimizer=opt,
        feature_space=fs,
        config=cfg.to_dict(),
        metrics={},
        task="ranking",
        state={},
    )
    # a new FeatureSpace whose "education" vocabulary is reversed, with its last value replaced
    vocab, new_vocab, fs_new = with_changed_vocabulary(fs, "education")
    assert fs_new.vocabulary("education") == new_vocab
    torch.manual_seed(1)
    new = task.build_model(fs_new, cfg)
    fresh = new.deep_tbe.table_weight("deep/education").clone()
    summary = warm_start(new, fs_new, str(ck))
    assert "tables mapped" in summary

    def ftrl_z(m, name):
        tbe = m.wide_tbe
        t = tbe.layout.table_index(name)
        lo, rows = tbe.layout.elem_offsets[t], tbe.layout.tables[t].num_rows
        return tbe.ftrl_z[lo : lo + rows].view(rows, 1)

    w_old = old.deep_tbe.table_weight("deep/education")
    w_new = new.deep_tbe.table_weight("deep/education")
    oov = fs.oov_id("education")
    assert torch.equal(w_new[oov], w_old[oov])
    for i, v in enumerate(new_vocab):
        if v in vocab:
            j = vocab.index(v)
            assert torch.equal(w_new[i], w_old[j]), v
            # the wide weight and its FTRL state move together (FTRL's weight is a function of z, n)
            assert torch.equal(
                new.wide_tbe.table_weight("wide/education")[i], old.wide_tbe.table_weight("wide/education")[j]
            )
            assert torch.equal(ftrl_z(new, "wide/education")[i], ftrl_z(old, "wide/education")[j])
        else:
            assert torch.equal(w_new[i], fresh[i])  # a new value keeps its fresh init
    # a table whose vocabulary did not change is copied as is; dense layers copied too
    assert torch.equal(new.deep_tbe.table_weight("deep/race"), old.deep_tbe.table_weight("deep/race"))
    assert torch.equal(new.mlp.first_linear.weight, old.mlp.first_linear.weight)


def test_unknown_config_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.hiden: unknown key"):
        load_train_config(None, ["data=/x", "model.hiden=[1]"])
    cfgfile = tmp_path / "job.yaml"
    cfgfile.write_text("data: /x\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: batchsize: unknown key"):
        load_train_config(cfgfile)
