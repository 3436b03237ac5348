"""``widedeep export`` end to end: training-format checkpoints + a prepared directory -> a bundle
whose pipeline scores like the checkpoint's model."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from widedeep.cli import main
from widedeep.data.collate import collate_prepared
from widedeep.serve.bundle import load_bundle
from widedeep.serve.pipeline import RecommendPipeline


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from widedeep.export.synthetic import SPEC, raw_tables
    from widedeep.features import parse_spec
    from widedeep.features.fit import fit_tables
    from widedeep.model.checkpoint import save_checkpoint
    from widedeep.train.config import config_from_dict
    from widedeep.train.tasks import get_task

    root = tmp_path_factory.mktemp("export")
    raw = raw_tables(n_items=80, n_users=20, n_rows=400, seed=5)
    fs = fit_tables(parse_spec(SPEC), [raw])
    data = root / "prepared"
    (data / "train").mkdir(parents=True)
    fs.save(data / "feature_space.json")
    prepared = fs.transform(raw)
    pq.write_table(prepared, data / "train" / "part-00000.parquet")
    ckpts = {}
    for task, extra in (
        ("ranking", {"model": {"hidden": [8, 4]}}),
        ("retrieval", {"task_config": {"embedding_dim": 4, "hidden": [8], "output_dim": 6}}),
    ):
        raw_cfg = {"data": str(data), "task": task, **extra}
        model = get_task(task).build_model(fs, config_from_dict(raw_cfg))
        for tbe in model.embedding_bags():
            tbe.weight.data.normal_(0, 0.3)
        ckpts[task] = save_checkpoint(
            root / task,
            model=model,
            optimizer=None,
            feature_space=fs,
            config=raw_cfg,
            metrics={"auc": 0.5},
            task=task,
            state={"epoch": 1, "step": 10},
        )
    return root, fs, prepared, ckpts


def test_export_cli_builds_a_bundle_that_scores_like_the_checkpoint(trained, capsys):
    from widedeep.model.checkpoint import load_checkpoint

    root, fs, prepared, ckpts = trained
    out = root / "bundle"
    assert (
        main(
            [
                "export",
                "--ranker",
                str(ckpts["ranking"]),
                "--retriever",
                str(ckpts["retrieval"]),
                "--out",
                str(out),
                "--version",
                "e2e",
            ]
        )
        == 0
    )
    assert "version e2e, 80 items, 20 users" in capsys.readouterr().out
    m = json.loads((out / "manifest.json").read_text())
    assert m["sources"]["ranker"]["meta"]["task"] == "ranking" and m["feature_space_hash"] == fs.content_hash
    pipe = RecommendPipeline(load_bundle(out))
    # score 5 rows of the prepared data through the bundle and through the checkpoint's model
    model = load_checkpoint(ckpts["ranking"]).model
    rows = prepared.slice(0, 5)
    with torch.no_grad():
        want = torch.sigmoid(model(collate_prepared(rows, fs, require_label=False))).numpy()
    raw = pa.table({"user_id": rows.column("user_key")})
    for i in range(5):
        user_key = raw.column("user_id")[i].as_py()
        q = pipe.prepare({"user_id": user_key}, {})
        # the user table keeps each user's first row; rows of the same user agree on user features
        ctx_ids = rows.column("device")[i].as_py()
        device = fs.vocabulary("device")[ctx_ids] if ctx_ids < len(fs.vocabulary("device")) else None
        got = pipe.rank({"user_id": user_key}, {"device": device}, [rows.column("item_key")[i].as_py()])
        assert got[0] == pytest.approx(float(want[i]), rel=1e-4), i
        assert q.known_user


def test_export_refuses_checkpoints_of_different_feature_spaces(trained, tmp_path, capsys):
    import shutil

    from widedeep.export.synthetic import SPEC, raw_tables
    from widedeep.features import parse_spec
    from widedeep.features.fit import fit_tables

    _, fs, _, ckpts = trained
    other = tmp_path / "retrieval"
    shutil.copytree(ckpts["retrieval"], other)
    fs2 = fit_tables(parse_spec(SPEC), [raw_tables(n_items=81, n_users=20, n_rows=400, seed=6)])
    fs2.save(other / "feature_space.json")
    meta = json.loads((other / "checkpoint.json").read_text())
    meta["feature_space_hash"] = fs2.content_hash
    (other / "checkpoint.json").write_text(json.dumps(meta))
    rc = main(["export", "--ranker", str(ckpts["ranking"]), "--retriever", str(other), "--out", str(tmp_path / "b")])
    assert rc == 2
    err = capsys.readouterr().err
    assert fs.content_hash in err and fs2.content_hash in err, err
    assert not (tmp_path / "b").exists()


def test_export_to_a_uri_uploads_a_loadable_bundle(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_BUNDLE_CACHE", str(tmp_path / "cache"))
    _, fs, _, ckpts = trained
    uri = (tmp_path / "store" / "bundles" / "e2e").as_uri()
    args = [
        "export",
        "--ranker",
        str(ckpts["ranking"]),
        "--retriever",
        str(ckpts["retrieval"]),
        "--out",
        uri,
        "--version",
        "e2e-uri",
    ]
    assert main(args) == 0
    assert f"bundle {uri}: version e2e-uri, 80 items" in capsys.readouterr().out
    b = load_bundle(uri)  # copied back to the cache and verified
    assert b.version == "e2e-uri" and b.fs.content_hash == fs.content_hash and len(b.item_keys) == 80
    assert main(args) == 2  # refused before any work: the destination is not empty
    assert f"{uri}: exists and is not empty" in capsys.readouterr().err


def test_export_reads_checkpoints_and_data_at_uris(trained, tmp_path, capsys):
    """Checkpoints and prepared data on shared storage: ``file://`` URIs export the same bundle as
    local paths (the FeatureSpace hashes are read from the URIs before any model is built)."""
    root, fs, _, ckpts = trained
    out = tmp_path / "bundle"
    assert (
        main(
            [
                "export",
                "--ranker",
                ckpts["ranking"].as_uri(),
                "--retriever",
                ckpts["retrieval"].as_uri(),
                "--data",
                (root / "prepared").as_uri(),
                "--out",
                str(out),
                "--version",
                "from-uris",
            ]
        )
        == 0
    ), capsys.readouterr().err
    b = load_bundle(out)
    assert b.version == "from-uris" and b.fs.content_hash == fs.content_hash and len(b.item_keys) == 80
    m = json.loads((out / "manifest.json").read_text())
    assert m["sources"]["ranker"]["path"] == ckpts["ranking"].as_uri()
