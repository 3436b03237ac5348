"""Bundle export/load: hashes verified, FeatureSpace mismatches refused naming both hashes, the
user tower equal to the trained model's, the pipeline's prepare equal to the training transform."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch

from widedeep.errors import CheckpointError
from widedeep.export.bundle_writer import write_bundle
from widedeep.serve.bundle import load_bundle
from widedeep.serve.manifest import file_hashes, sha256_file
from widedeep.serve.pipeline import RecommendPipeline, RequestError


def test_bundle_loads_and_describes_itself(bundles):
    b = load_bundle(bundles[0])
    assert b.version == "v1" and len(b.item_keys) == 300 and b.items.num_rows == 300
    assert b.manifest["feature_space_hash"] == b.fs.content_hash
    assert set(b.manifest["files"]) >= {"ranker.safetensors", "items.parquet", "index/item_embeddings.safetensors"}
    assert b.users is not None and len(b.user_rows) == 60


def test_tampered_file_is_refused(bundles, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundles[0], d)
    with open(d / "ranker.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(CheckpointError, match=r"ranker.safetensors: sha256 .* does not match"):
        load_bundle(d)


def test_mismatched_feature_space_is_refused_naming_both_hashes(bundles, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(bundles[0], d)
    shutil.copy(bundles[1] / "feature_space.json", d / "feature_space.json")
    m = json.loads((d / "manifest.json").read_text())
    m["files"]["feature_space.json"] = sha256_file(d / "feature_space.json")  # a consistent-looking manifest
    (d / "manifest.json").write_text(json.dumps(m))
    h1 = json.loads((bundles[0] / "manifest.json").read_text())["feature_space_hash"]
    h2 = json.loads((bundles[1] / "manifest.json").read_text())["feature_space_hash"]
    assert h1 != h2
    with pytest.raises(CheckpointError) as e:
        load_bundle(d)
    assert h1 in str(e.value) and h2 in str(e.value)


def _as_written_by_format_1(bundle, dest, kind: str):
    """A copy of ``bundle`` whose item index is laid out as index format 1 wrote it, manifest consistent.

    Format 1 stored an HNSW graph as hnswlib's ``hnsw.bin``; an exact index was the same files as now.
    """
    shutil.copytree(bundle, dest)
    idx = dest / "index"
    meta = json.loads((idx / "index.json").read_text())
    meta.update(format=1, kind=kind)
    (idx / "index.json").write_text(json.dumps(meta))
    if kind == "hnsw":
        (idx / "hnsw.bin").write_bytes(b"an hnswlib graph")
    m = json.loads((dest / "manifest.json").read_text())
    m["files"] = file_hashes(dest)
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_bundle_with_an_hnswlib_index_is_refused_with_what_to_do(bundles, tmp_path):
    d = _as_written_by_format_1(bundles[0], tmp_path / "old", "hnsw")
    with pytest.raises(CheckpointError, match=r"index\.json: this HNSW index was built with hnswlib .* re-export"):
        load_bundle(d)


def test_bundle_with_a_format_1_exact_index_still_loads(bundles, tmp_path):
    d = _as_written_by_format_1(bundles[0], tmp_path / "old", "exact")
    b = load_bundle(d)
    assert b.generator.index.kind == "exact" and b.version == "v1"


def test_write_refuses_models_of_another_feature_space(bundles, tmp_path):
    from widedeep.export.bundle_writer import BundleContents
    from widedeep.serve.scoring import load_ranker

    b1, b2 = load_bundle(bundles[0]), load_bundle(bundles[1])
    spec, tensors = load_ranker(bundles[1])
    c = BundleContents(
        b1.fs,
        (spec, tensors),
        (b1.user_tower.spec, b1.user_tower.t),
        b1.item_keys,
        b1.items,
        np.zeros((300, b1.user_tower.spec.output_dim), np.float32),
        np.zeros(300, np.float32),
    )
    with pytest.raises(CheckpointError) as e:
        write_bundle(tmp_path / "x", c)
    assert b1.fs.content_hash in str(e.value) and b2.fs.content_hash in str(e.value)


def _small_fs():
    from widedeep.export.synthetic import SPEC, raw_tables
    from widedeep.features import parse_spec
    from widedeep.features.fit import fit_tables

    raw = raw_tables(n_items=40, n_users=12, n_rows=200, seed=3)
    return fit_tables(parse_spec(SPEC), [raw]), raw


def test_user_tower_matches_two_tower_model():
    from widedeep.kernels import OptimizerConfig
    from widedeep.model.two_tower import TwoTower, TwoTowerConfig
    from widedeep.retrieval.data import embed
    from widedeep.serve.towers import UserTower, extract_user_tower

    fs, raw = _small_fs()
    prepared = fs.transform(raw)
    model = TwoTower(
        fs,
        TwoTowerConfig(embedding_dim=4, hidden=[8], output_dim=6),
        OptimizerConfig("rowwise_adagrad", lr=0.05),
        seed=1,
    )
    for tbe in model.embedding_bags():
        tbe.weight.data.normal_(0, 0.5)
    want = embed(model, "user", prepared)
    got = UserTower(*extract_user_tower(model, fs)).embed(prepared)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_prepare_uses_the_training_transform(bundles):
    """A request's query-side ids equal what ``fs.transform`` gives the same raw row."""
    p = RecommendPipeline(load_bundle(bundles[0]))
    raw = {"country": "c4", "interests": ["i1", "i2", "nope"], "age": 33.0, "device": "web"}
    q = p.prepare({k: raw[k] for k in ("country", "interests", "age")}, {"device": "web"})
    full = {**raw, "item_id": "i1", "genre": "g1", "tags": ["t1"], "price": 3.0, "user_id": "zz", "clicked": 0}
    want = p.fs.transform(pa.Table.from_pylist([full]), require_label=False)
    for col in ("country", "interests", "age", "device", "device_x_country"):
        assert q.row.column(col).to_pylist() == want.column(col).to_pylist(), col
    assert q.oov["interests"] == (1, 3) and q.oov["country"] == (0, 1)
    assert q.vector is not None and not q.known_user
    cold = p.prepare({"user_id": "nobody"}, {})
    assert cold.vector is None  # no key match and no features: popularity (cold start)
    with pytest.raises(RequestError, match=r"user\.age"):
        p.prepare({"age": "old"}, {})
    with pytest.raises(RequestError, match=r"context\.genre: unknown field"):
        p.prepare({}, {"genre": "g1"})


def test_known_user_row_comes_from_the_user_table(bundles):
    p = RecommendPipeline(load_bundle(bundles[0]))
    b = p.bundle
    r = b.user_rows["u5"]
    q = p.prepare({"user_id": "u5"}, {"device": "ios"})
    assert q.known_user
    for col in ("country", "interests", "age"):
        assert q.row.column(col).to_pylist() == b.users.column(col).slice(r, 1).to_pylist()
    vocab = p.fs.vocabulary("country")
    mine = q.row.column("country")[0].as_py()
    other = next(i for i, v in enumerate(vocab) if i != mine)
    over = p.prepare({"user_id": "u5", "country": vocab[other]}, {"device": "ios"})
    assert over.row.column("country").to_pylist() == [other]  # the request field wins
    assert over.row.column("age").to_pylist() == q.row.column("age").to_pylist()  # the rest: the table
    assert not torch.equal(over.part.hidden, q.part.hidden)
