"""The benchmark's machinery on a tiny shape: its baseline computes the same thing as the
reference, its batches are valid, and its report has the keys the acceptance check reads.
(No timing is asserted: timings belong in benchmark output, not in tests.)"""

from __future__ import annotations

import math

import torch

from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig
from widedeep.kernels.bench import (
    CHECK_TOL,
    RATIO_KEYS,
    BenchConfig,
    PerTableBaseline,
    bench_config,
    format_report,
    make_batch,
    run_benchmark,
)
from widedeep.kernels.fbgemm_contender import check_step, load_fbgemm
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


def test_report_without_fbgemm_says_why():
    report = run_benchmark(TINY, "cpu", steps=1, repeats=1, warmup=1, dists=("uniform",), fbgemm=False)
    assert report["fbgemm"] == {"available": False, "reason": "not requested (--no-fbgemm)"}
    assert "FBGEMM contender: not measured (not requested" in format_report(report)


def test_fbgemm_contender_is_checked_and_reported():
    """With fbgemm_gpu importable, FBGEMM's first step passed the reference check and its times
    and ratios are in the report; without it, the report says why (never a silent gap)."""
    report = run_benchmark(TINY, "cpu", steps=1, repeats=2, warmup=1, dists=("zipf", "uniform"))
    fb = report["fbgemm"]
    api, reason = load_fbgemm()
    if api is None:
        assert fb == {"available": False, "reason": reason}
        return
    assert fb["available"] and fb["version"] == api.version
    assert set(fb["checks"]) == set(fb["results"]) == {"zipf", "uniform"}
    for check in fb["checks"].values():
        assert check["ok"] and check["untouched_rows_changed"] == 0
        assert max(check["forward"], check["weights"], check["state"]) <= CHECK_TOL
    for dist, r in fb["results"].items():
        ours = report["results"][dist]["ours"]
        assert r["ms_per_step"] > 0 and r["forward_ms"] > 0
        assert math.isclose(r["ours_over_fbgemm_step"], r["ms_per_step"] / ours["ms_per_step"])
        assert math.isclose(r["ours_over_fbgemm_forward"], r["forward_ms"] / ours["forward_ms"])
    for key in RATIO_KEYS:
        assert fb[key] == min(r[key] for r in fb["results"].values())
    assert "ours over FBGEMM (worst over id distributions)" in format_report(report)


def test_step_check_rejects_a_contender_that_learns_differently():
    """The check that gates a contender: our kernel passes it; the same kernel with another
    learning rate (forward right, update wrong) does not, and neither does one that writes
    rows outside the batch."""
    tables = [TableConfig(f"t{i}", TINY.rows, TINY.dim, init="uniform", init_scale=0.05) for i in range(TINY.tables)]
    opt = OptimizerConfig("rowwise_adagrad", lr=0.01)
    indices, offsets = make_batch(TINY, "zipf", seed=3, device=torch.device("cpu"))
    grad = torch.randn(TINY.batch, TINY.tables * TINY.dim, generator=torch.Generator().manual_seed(0))

    def check(module, touch_other_rows=False):
        before = [module.table_weight(t).clone() for t in range(len(tables))]

        def step(i, o, g):
            out = module(i, o)
            out.backward(g)
            if touch_other_rows:
                unused = sorted(set(range(TINY.rows)) - set(indices[: offsets[TINY.batch]].tolist()))
                module.table_weight(0)[unused[0]] += 1.0
            return out

        def weights():
            return [module.table_weight(t) for t in range(len(tables))]

        def state():
            return list(module.adagrad_sum.split([t.num_rows for t in tables]))

        return check_step(step, weights, state, tables, opt, before, indices, offsets, grad)

    good = check(TableBatchedEmbeddingBag(tables, opt))
    assert good.ok(CHECK_TOL), good
    wrong_lr = check(TableBatchedEmbeddingBag(tables, OptimizerConfig("rowwise_adagrad", lr=0.02)))
    assert wrong_lr.forward <= CHECK_TOL and wrong_lr.weights > CHECK_TOL and not wrong_lr.ok(CHECK_TOL)
    stray = check(TableBatchedEmbeddingBag(tables, opt), touch_other_rows=True)
    assert stray.untouched_rows_changed == 1 and not stray.ok(CHECK_TOL)
