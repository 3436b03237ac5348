"""The benchmark's machinery on a tiny shape: its baseline computes the same thing as the
reference, its batches are valid, and its report has the keys the acceptance check reads.
(No timing is asserted: timings belong in benchmark output, not in tests.)"""

from __future__ import annotations

import math

import torch

from widedeep.kernels import TableConfig
from widedeep.kernels.bench import (
    BenchConfig,
    PerTableBaseline,
    bench_config,
    format_report,
    make_batch,
    run_benchmark,
)
from widedeep.kernels.reference import reference_forward

TINY = BenchConfig("tiny", tables=3, rows=50, dim=4, ids_per_bag=3, batch=8)


def test_issue_shapes():
    assert bench_config("criteo", "cpu") == BenchConfig("criteo", 26, 100_000, 16, 1, 4096)
    assert bench_config("multihot", "cpu") == BenchConfig("multihot", 26, 100_000, 64, 20, 4096)
    assert bench_config("multihot", "cuda") == BenchConfig("multihot", 26, 1_000_000, 128, 20, 65536)


def test_batches_are_valid_and_zipf_is_skewed():
    for dist in ("zipf", "uniform"):
        ids, offsets = make_batch(TINY, dist, seed=0, device=torch.device("cpu"))
        assert ids.dtype == offsets.dtype == torch.int64
        assert offsets.tolist() == list(range(0, 3 * 8 * 3 + 1, 3))
        assert 0 <= int(ids.min()) and int(ids.max()) < TINY.rows
    big = BenchConfig("z", 1, 10_000, 1, 1, 20_000)
    zipf, _ = make_batch(big, "zipf", seed=1, device=torch.device("cpu"))
    uni, _ = make_batch(big, "uniform", seed=1, device=torch.device("cpu"))
    assert torch.unique(zipf).numel() < 0.5 * torch.unique(uni).numel()


def test_baseline_computes_the_reference():
    base = PerTableBaseline(TINY, torch.device("cpu"))
    ids, offsets = make_batch(TINY, "uniform", seed=2, device=torch.device("cpu"))
    tables = [TableConfig(f"t{i}", TINY.rows, TINY.dim) for i in range(TINY.tables)]
    expected = reference_forward([b.weight for b in base.bags], tables, ids, offsets)
    torch.testing.assert_close(base(ids, offsets), expected)


def test_report_has_the_acceptance_keys():
    report = run_benchmark(TINY, "cpu", steps=1, repeats=2, warmup=1, dists=("zipf", "uniform"))
    assert set(report["results"]) == {"zipf", "uniform"}
    for entry in report["results"].values():
        assert set(entry["baselines"]) == {"sparse_adam", "adagrad"}
        assert entry["ours"]["gbps"] > 0 and entry["ours"]["forward_ms"] > 0
        assert math.isclose(entry["speedup"], entry["best_baseline_ms"] / entry["ours"]["ms_per_step"])
    assert report["speedup"] == min(e["speedup"] for e in report["results"].values())
    assert "speedup (worst over id distributions)" in format_report(report)
