"""Benchmark of the fused table-batched embedding bag against per-table torch baselines.

Measured per step: forward + backward + optimizer update, for

* ours: ``TableBatchedEmbeddingBag`` with row-wise Adagrad fused into backward;
* baselines, in the same process on the same batches: one ``nn.EmbeddingBag(sparse=True)``
  per table with ``torch.optim.SparseAdam``, and with ``torch.optim.Adagrad`` (sparse);
* the field's own kernel, when ``fbgemm_gpu`` is installed (CPU): FBGEMM's table-batched
  embedding bag with the same optimizer (exact row-wise Adagrad, same lr and eps), started
  from our weights (see ``fbgemm_contender.py``). Its forward and step are timed like ours;
  ``ours_over_fbgemm_*`` are FBGEMM's time over ours (> 1: ours is faster).

Every contender that computes embeddings with our optimizer (ours, FBGEMM) first has its
first step checked against the plain PyTorch reference (forward, updated rows, Adagrad
state, untouched rows); ours failing is an error, FBGEMM failing is reported instead of
its times.

Byte convention (FBGEMM's): forward moves ``N * D * elem_size`` bytes (every looked-up row
read once); forward + backward + update counts 3x that (read in forward, read + write in
the update). Effective GB/s = bytes / time. It ignores the optimizer state and the index
traffic, so it is a convention for comparing kernels, not a hardware counter.

The step time reported is the median over ``repeats`` timed windows of ``steps`` steps each
(after warm-up); the spread (min..max over windows) is reported as the noise. On CPU the
contenders are interleaved step by step, and each window's process CPU time is reported next
to its wall time: on a machine shared with other jobs, CPU time is the steadier figure.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig
from widedeep.kernels.fbgemm_contender import (
    FbgemmApi,
    build_fbgemm_tbe,
    check_step,
    load_fbgemm,
)

log = logging.getLogger(__name__)

HBM_PEAK_TBPS = {"H100": 3.35, "H200": 4.8}  # SXM parts, TB/s
CHECK_TOL = 1e-4  # largest |a - b| / (1 + |b|) a contender's first step may differ from the reference


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark shape: ``tables`` tables of ``rows`` rows and dim ``dim``, ``ids_per_bag``
    ids in each of ``batch`` bags per table."""

    name: str
    tables: int
    rows: int
    dim: int
    ids_per_bag: int
    batch: int


def bench_config(name: str, device: str) -> BenchConfig:
    """The issue's shapes: ``criteo`` (one id per bag, D=16) and ``multihot`` (20 ids, D=64/128)."""
    cuda = device == "cuda"
    batch, rows = (65536, 1_000_000) if cuda else (4096, 100_000)
    if name == "criteo":
        return BenchConfig(name, 26, rows, 16, 1, batch)
    if name == "multihot":
        return BenchConfig(name, 26, rows, 128 if cuda else 64, 20, batch)
    raise ValueError(f"unknown config {name!r}; expected 'criteo' or 'multihot'")


def make_batch(cfg: BenchConfig, dist: str, seed: int, device: torch.device):
    """A table-major jagged batch with fixed bag length; ids Zipf(1.1) (hot ids scattered over
    the table by a fixed permutation, as hashing would) or uniform."""
    g = torch.Generator().manual_seed(seed)
    n_per_table = cfg.batch * cfg.ids_per_bag
    if dist == "zipf":
        p = torch.arange(1, cfg.rows + 1, dtype=torch.float64).pow(-1.1)
        cdf = torch.cumsum(p / p.sum(), 0)
        ranks = torch.searchsorted(cdf, torch.rand(cfg.tables, n_per_table, generator=g, dtype=torch.float64))
        ranks = ranks.clamp_(max=cfg.rows - 1)
        perm = torch.randperm(cfg.rows, generator=torch.Generator().manual_seed(12345))
        ids = perm[ranks]
    elif dist == "uniform":
        ids = torch.randint(0, cfg.rows, (cfg.tables, n_per_table), generator=g)
    else:
        raise ValueError(f"unknown id distribution {dist!r}")
    offsets = torch.arange(0, cfg.tables * n_per_table + 1, cfg.ids_per_bag, dtype=torch.int64)
    return ids.reshape(-1).to(device), offsets.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Per-step seconds of each timed window: wall clock and this process's CPU time."""

    wall: list[float]
    cpu: list[float]
    steps: int = 0  # steps per window


def time_step(step: Callable[[int], None], device: torch.device, i: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    step(i)
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0


def auto_steps(seconds_per_step: float, target: float = 0.5) -> int:
    """Steps per timed window so that a window of the fastest contender lasts ~``target`` s."""
    return max(3, min(30, math.ceil(target / max(seconds_per_step, 1e-6))))


def measure(
    steps_by_name: dict[str, Callable[[int], None]],
    device: torch.device,
    *,
    warmup: int,
    steps: int,
    repeats: int,
) -> dict[str, Timing]:
    """Time every contender in ``repeats`` windows of ``steps`` steps (``steps=0``: chosen from
    the first contender's warm-up step time, see ``auto_steps``).

    Contenders are interleaved STEP BY STEP (ours, baseline 1, baseline 2, ours, ...), so load
    from other processes hits every contender alike, even in short bursts; a window's time is
    the sum of its steps' times.
    """
    out = {name: Timing([], []) for name in steps_by_name}
    first = None
    for step in steps_by_name.values():
        for i in range(warmup):
            wall, _ = time_step(step, device, i)
            first = wall if first is None else first
    if steps <= 0:
        steps = auto_steps(first if first is not None else 0.0)
    for r in range(repeats):
        acc = {name: [0.0, 0.0] for name in steps_by_name}
        for i in range(steps):
            for name, step in steps_by_name.items():
                wall, cpu = time_step(step, device, warmup + r * steps + i)
                acc[name][0] += wall
                acc[name][1] += cpu
        for name, (wall, cpu) in acc.items():
            out[name].wall.append(wall / steps)
            out[name].cpu.append(cpu / steps)
            out[name].steps = steps
    return out


class PerTableBaseline(nn.Module):
    """The baseline: one ``nn.EmbeddingBag(sparse=True)`` per table, as most codebases do."""

    def __init__(self, cfg: BenchConfig, device: torch.device) -> None:
        super().__init__()
        self.bags = nn.ModuleList(
            nn.EmbeddingBag(cfg.rows, cfg.dim, mode="sum", sparse=True, include_last_offset=True, device=device)
            for _ in range(cfg.tables)
        )
        self.batch = cfg.batch

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        B = self.batch
        outs = []
        for t, bag in enumerate(self.bags):
            offs = offsets[t * B : (t + 1) * B + 1]
            lo = offs[0]
            outs.append(bag(indices[lo : offs[-1]], offs - lo))
        return torch.cat(outs, dim=1)


@dataclass
class Result:
    """One measured implementation (times are medians over the timed windows)."""

    name: str
    ms_per_step: float  # wall clock
    ms_min: float
    ms_max: float
    cpu_ms_per_step: float  # this process's CPU time: robust to other processes taking the cores
    gbps: float  # effective, FBGEMM convention (3x forward bytes)
    forward_ms: float | None = None
    forward_gbps: float | None = None
    backward_update_gbps: float | None = None
    hbm_peak_pct_forward: float | None = None
    hbm_peak_pct_backward_update: float | None = None


def _result(name: str, t: Timing, fwd_bytes: float) -> Result:
    med = statistics.median(t.wall)
    return Result(
        name,
        med * 1e3,
        min(t.wall) * 1e3,
        max(t.wall) * 1e3,
        statistics.median(t.cpu) * 1e3,
        3 * fwd_bytes / med / 1e9,
    )


def _baseline_step(cfg: BenchConfig, device: torch.device, kind: str, batches, grad) -> Callable[[int], None]:
    model = PerTableBaseline(cfg, device)
    params = list(model.parameters())
    opt = torch.optim.SparseAdam(params, lr=0.01) if kind == "sparse_adam" else torch.optim.Adagrad(params, lr=0.01)

    def step(i: int) -> None:
        model(*batches[i % len(batches)]).backward(grad)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_benchmark(
    cfg: BenchConfig,
    device_name: str,
    *,
    steps: int,
    repeats: int,
    warmup: int,
    dists: tuple[str, ...],
    fbgemm: bool = True,
) -> dict:
    """Measure ours, FBGEMM (``fbgemm`` and installed; CPU) and both baselines on ``config``;
    return the JSON-ready report.

    On CPU all contenders live at once and are timed interleaved; on CUDA (where a baseline's
    Adam state alone can fill the memory) one after the other.
    """
    warnings.filterwarnings("ignore", message="Sparse invariant checks")  # torch.optim.Adagrad, sparse
    device = torch.device(device_name)
    config = cfg.name
    dev_label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in HBM_PEAK_TBPS.items() if k in dev_label), None)
    n_ids = cfg.tables * cfg.batch * cfg.ids_per_bag
    fwd_bytes = n_ids * cfg.dim * 4
    opt = OptimizerConfig("rowwise_adagrad", lr=0.01)
    report: dict = {
        "config": asdict(cfg),
        "device": device.type,
        "device_name": dev_label,
        "threads": torch.get_num_threads(),
        "steps": steps or "auto",
        "repeats": repeats,
        "byte_convention": "FBGEMM: forward bytes = N ids x D x 4 (fp32 rows looked up); "
        "fwd+bwd+update = 3 x forward bytes; GB/s = bytes / step time",
        "ours_optimizer": "rowwise_adagrad (fused into backward)",
        "results": {},
    }
    report["fbgemm"], fb_api = _fbgemm_section(fbgemm, device)
    tables = [TableConfig(f"t{i}", cfg.rows, cfg.dim, init="uniform", init_scale=0.05) for i in range(cfg.tables)]
    for dist in dists:
        batches = [make_batch(cfg, dist, seed=s, device=device) for s in range(3)]
        grad = torch.randn(cfg.batch, cfg.tables * cfg.dim, device=device)
        tbe = TableBatchedEmbeddingBag(tables, opt, device=device)
        fb = _checked_contenders(tbe, fb_api, tables, opt, batches[0], grad, report["fbgemm"], dist)
        if fb is None:
            fb_api = None  # unavailable, or diverged: not timed for any distribution

        def ours_step(i: int, tbe=tbe, batches=batches, grad=grad) -> None:
            tbe(*batches[i % len(batches)]).backward(grad)

        def ours_forward(i: int, tbe=tbe, batches=batches) -> None:
            tbe(*batches[i % len(batches)])

        kw = {"warmup": warmup, "steps": steps, "repeats": repeats}
        if device.type == "cpu":
            contenders = {"ours": ours_step, "ours_forward": ours_forward}
            if fb is not None:
                contenders["fbgemm"] = _module_step(fb, batches, grad)
                contenders["fbgemm_forward"] = _module_forward(fb, batches)
            contenders["sparse_adam"] = _baseline_step(cfg, device, "sparse_adam", batches, grad)
            contenders["adagrad"] = _baseline_step(cfg, device, "adagrad", batches, grad)
            timings = measure(contenders, device, **kw)
            del contenders
        else:
            timings = measure({"ours": ours_step, "ours_forward": ours_forward}, device, **kw)
            for kind in ("sparse_adam", "adagrad"):
                timings.update(measure({kind: _baseline_step(cfg, device, kind, batches, grad)}, device, **kw))
                torch.cuda.empty_cache()
        del tbe, ours_step, ours_forward, fb

        ours = _result("ours", timings["ours"], fwd_bytes)
        f = statistics.median(timings["ours_forward"].wall)
        ours.forward_ms = f * 1e3
        ours.forward_gbps = fwd_bytes / f / 1e9
        ours.backward_update_gbps = 2 * fwd_bytes / max(ours.ms_per_step / 1e3 - f, 1e-9) / 1e9
        if peak is not None:
            ours.hbm_peak_pct_forward = 100 * ours.forward_gbps / (peak * 1e3)
            ours.hbm_peak_pct_backward_update = 100 * ours.backward_update_gbps / (peak * 1e3)
        baselines = {k: asdict(_result(k, timings[k], fwd_bytes)) for k in ("sparse_adam", "adagrad")}
        best = min(baselines.values(), key=lambda b: b["ms_per_step"])
        entry = {
            "ours": asdict(ours),
            "baselines": baselines,
            "steps_per_window": timings["ours"].steps,
            "best_baseline": best["name"],
            "best_baseline_ms": best["ms_per_step"],
            "speedup": best["ms_per_step"] / ours.ms_per_step,
            "speedup_cpu_time": min(b["cpu_ms_per_step"] for b in baselines.values()) / ours.cpu_ms_per_step,
        }
        if "fbgemm" in timings:
            report["fbgemm"]["results"][dist] = _fbgemm_result(timings, fwd_bytes)
        log.info(
            "%s/%s: ours %.2f ms/step, best baseline (%s) %.2f ms/step, speedup %.2fx",
            config,
            dist,
            ours.ms_per_step,
            best["name"],
            best["ms_per_step"],
            entry["speedup"],
        )
        report["results"][dist] = entry
    # The headline is the worst case over id distributions.
    report["speedup"] = min(e["speedup"] for e in report["results"].values())
    report["speedup_cpu_time"] = min(e["speedup_cpu_time"] for e in report["results"].values())
    fb_results = report["fbgemm"].get("results", {})
    if fb_results and len(fb_results) == len(report["results"]):
        for key in RATIO_KEYS:
            report["fbgemm"][key] = min(r[key] for r in fb_results.values())
    return report


RATIO_KEYS = (
    "ours_over_fbgemm_forward",
    "ours_over_fbgemm_step",
    "ours_over_fbgemm_forward_cpu_time",
    "ours_over_fbgemm_step_cpu_time",
)


def _fbgemm_section(wanted: bool, device: torch.device) -> tuple[dict, FbgemmApi | None]:
    """The report's ``fbgemm`` section before any measurement, and the API to build it with."""
    if not wanted:
        return {"available": False, "reason": "not requested (--no-fbgemm)"}, None
    if device.type != "cpu":
        return {"available": False, "reason": "the FBGEMM contender runs on CPU (fbgemm-gpu-cpu)"}, None
    api, reason = load_fbgemm()
    if api is None:
        return {"available": False, "reason": reason}, None
    section = {
        "available": True,
        "version": api.version,
        "kernel": "fbgemm_gpu SplitTableBatchedEmbeddingBagsCodegen, EXACT_ROWWISE_ADAGRAD, weights on host (CPU)",
        "bounds_check_mode": "WARNING (FBGEMM's default)",
        "ratio_convention": "ours_over_fbgemm_* = FBGEMM time / our time (> 1: ours is faster); "
        "worst over id distributions",
        "check_tolerance": CHECK_TOL,
        "checks": {},
        "results": {},
    }
    return section, api


def _checked_contenders(
    tbe: TableBatchedEmbeddingBag,
    fb_api: FbgemmApi | None,
    tables: list[TableConfig],
    opt: OptimizerConfig,
    batch: tuple[torch.Tensor, torch.Tensor],
    grad: torch.Tensor,
    fb_section: dict,
    dist: str,
) -> nn.Module | None:
    """Check ours and (when available) FBGEMM's first step against the reference on ``batch``;
    return FBGEMM's module, or None when it is unavailable or diverges (recorded in
    ``fb_section``). Ours diverging raises: the benchmark only times a kernel that is right."""
    indices, offsets = batch
    before = [tbe.table_weight(t).clone() for t in range(len(tables))]
    fb = build_fbgemm_tbe(fb_api, tables, opt, before) if fb_api is not None else None
    ours = check_step(
        _train_step(tbe),
        lambda: [tbe.table_weight(t) for t in range(len(tables))],
        lambda: [tbe.adagrad_sum[lo:hi] for lo, hi in itertools.pairwise(tbe.layout.row_offsets)],
        tables,
        opt,
        before,
        indices,
        offsets,
        grad,
    )
    if not ours.ok(CHECK_TOL):
        raise RuntimeError(f"our kernel's first step differs from the reference: {ours}")
    if fb is None:
        return None
    theirs = check_step(
        _train_step(fb),
        fb.split_embedding_weights,
        lambda: [s[0] for s in fb.split_optimizer_states()],
        tables,
        opt,
        before,
        indices,
        offsets,
        grad,
    )
    fb_section["checks"][dist] = asdict(theirs) | {"ok": theirs.ok(CHECK_TOL)}
    if not theirs.ok(CHECK_TOL):
        log.warning("FBGEMM's first step differs from the reference (%s): not reported", theirs)
        fb_section["available"] = False
        fb_section["reason"] = f"its first step differs from the reference on {dist!r} ids: {theirs}"
        return None
    return fb


def _train_step(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def step(indices: torch.Tensor, offsets: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        out = module(indices, offsets)
        out.backward(grad)
        return out

    return step


def _module_step(module: nn.Module, batches, grad) -> Callable[[int], None]:
    def step(i: int) -> None:
        module(*batches[i % len(batches)]).backward(grad)

    return step


def _module_forward(module: nn.Module, batches) -> Callable[[int], None]:
    def forward(i: int) -> None:
        module(*batches[i % len(batches)])

    return forward


def _fbgemm_result(timings: dict[str, Timing], fwd_bytes: float) -> dict:
    """FBGEMM's step and forward times and ours over them, for one id distribution."""
    step = _result("fbgemm", timings["fbgemm"], fwd_bytes)
    fwd = timings["fbgemm_forward"]
    ours_fwd = timings["ours_forward"]
    step.forward_ms = statistics.median(fwd.wall) * 1e3
    step.forward_gbps = fwd_bytes / statistics.median(fwd.wall) / 1e9
    out = asdict(step) | {"cpu_forward_ms": statistics.median(fwd.cpu) * 1e3}
    out["ours_over_fbgemm_step"] = statistics.median(timings["fbgemm"].wall) / statistics.median(timings["ours"].wall)
    out["ours_over_fbgemm_forward"] = statistics.median(fwd.wall) / statistics.median(ours_fwd.wall)
    out["ours_over_fbgemm_step_cpu_time"] = statistics.median(timings["fbgemm"].cpu) / statistics.median(
        timings["ours"].cpu
    )
    out["ours_over_fbgemm_forward_cpu_time"] = statistics.median(fwd.cpu) / statistics.median(ours_fwd.cpu)
    return out


def format_report(report: dict) -> str:
    """Human-readable lines for the terminal."""
    c = report["config"]
    lines = [
        (
            f"config {c['name']}: T={c['tables']} rows/table={c['rows']} D={c['dim']} "
            f"ids/bag={c['ids_per_bag']} B={c['batch']} on {report['device_name']} ({report['threads']} threads)"
        ),
        f"  bytes: {report['byte_convention']}",
    ]
    for dist, e in report["results"].items():
        o = e["ours"]
        extra = f", forward {o['forward_ms']:.2f} ms ({o['forward_gbps']:.1f} GB/s)"
        if o.get("hbm_peak_pct_forward") is not None:
            extra += (
                f", HBM peak: forward {o['hbm_peak_pct_forward']:.0f}%, "
                f"backward+update {o['hbm_peak_pct_backward_update']:.0f}%"
            )
        lines.append(
            f"  [{dist}] ours (rowwise_adagrad fused): {o['ms_per_step']:.2f} ms/step "
            f"[{o['ms_min']:.2f}..{o['ms_max']:.2f}] (cpu {o['cpu_ms_per_step']:.2f} ms), {o['gbps']:.2f} GB/s{extra}"
        )
        for name, b in e["baselines"].items():
            lines.append(
                f"  [{dist}] baseline per-table EmbeddingBag(sparse) + {name}: {b['ms_per_step']:.2f} ms/step "
                f"[{b['ms_min']:.2f}..{b['ms_max']:.2f}] (cpu {b['cpu_ms_per_step']:.2f} ms), {b['gbps']:.2f} GB/s"
            )
        lines.append(
            f"  [{dist}] speedup vs best baseline ({e['best_baseline']}): {e['speedup']:.2f}x wall clock, "
            f"{e['speedup_cpu_time']:.2f}x CPU time"
        )
        fb = report["fbgemm"].get("results", {}).get(dist)
        if fb is not None:
            lines.append(
                f"  [{dist}] FBGEMM TBE (exact rowwise_adagrad): {fb['ms_per_step']:.2f} ms/step "
                f"[{fb['ms_min']:.2f}..{fb['ms_max']:.2f}] (cpu {fb['cpu_ms_per_step']:.2f} ms), "
                f"forward {fb['forward_ms']:.2f} ms; ours over FBGEMM: step {fb['ours_over_fbgemm_step']:.2f}x, "
                f"forward {fb['ours_over_fbgemm_forward']:.2f}x "
                f"(CPU time: {fb['ours_over_fbgemm_step_cpu_time']:.2f}x, "
                f"{fb['ours_over_fbgemm_forward_cpu_time']:.2f}x)"
            )
    fb = report["fbgemm"]
    if not fb["available"]:
        lines.append(f"FBGEMM contender: not measured ({fb['reason']})")
    elif "ours_over_fbgemm_step" in fb:
        lines.append(
            f"ours over FBGEMM (worst over id distributions): step {fb['ours_over_fbgemm_step']:.2f}x, "
            f"forward {fb['ours_over_fbgemm_forward']:.2f}x wall clock"
        )
    lines.append(
        f"speedup (worst over id distributions): {report['speedup']:.2f}x wall clock, "
        f"{report['speedup_cpu_time']:.2f}x CPU time"
    )
    return "\n".join(lines)
