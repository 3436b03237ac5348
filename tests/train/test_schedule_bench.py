import json

import pytest

from widedeep.cli import main
from widedeep.train.schedule import lr_factor


def test_lr_factor_shapes():
    assert lr_factor("constant", 5, 10) == 1.0
    assert lr_factor("cosine", 0, 100) == pytest.approx(1.0)
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor("linear", 25, 100) == pytest.approx(0.75)
    assert lr_factor("linear", 0, 100, warmup_steps=4) == pytest.approx(0.25)


def test_bench_train_smoke(tmp_path):
    """The benchmark CLI runs end to end on tiny data and writes its figures (no timing asserts)."""
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "train",
            "--rows",
            "12000",
            "--batch-size",
            "1024",
            "--steps",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--no-pipeline",
            "--buckets",
            "1000",
            "--workdir",
            str(tmp_path),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["model_step_samples_per_s"] > 0 and r["plain_torch_samples_per_s"] > 0
    assert r["config"]["tables"]["deep"] == 26 and r["config"]["tables"]["wide"] >= 26  # Criteo-shaped
    assert r["config"]["numeric"] == 13
