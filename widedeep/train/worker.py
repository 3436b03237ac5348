"""One Ray Train worker's set-up: what the driver sends (``LoopSpec``), where this worker stands
(``WorkerContext``) and the model it trains (``ModelParts``: built, warm-started, sharded,
restored from the latest checkpoint, wrapped for DDP).

Order matters and is kept here in one place: a warm start maps whole tables by vocabulary, so it
runs before the tables are sharded; a restore reads only this worker's rows, so it runs after;
DDP wraps the restored model. Dense parameters sync through DDP; the embedding tables
(``requires_grad=False``) sync through the kernel's exact exchange on a separate process group,
so the two collectives never interleave on one group.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from widedeep.train.config import TrainConfig, config_from_dict
from widedeep.train.progress import log
from widedeep.train.tasks import Task, get_task


@dataclass(frozen=True)
class LoopSpec:
    """What the driver hands every worker (with the hooks) as Ray Train's ``train_loop_config``.

    ``data_cache`` is already resolved (``memory`` or ``stream``, ``widedeep.train.feed``);
    ``started_at`` is the ``time.time()`` the run started at (for ``timings.ray_start_s``).
    """

    config: dict[str, Any]
    feature_space: str
    columns: list[str]
    train_rows: int
    run_dir: str
    train_dirs: tuple[str, ...]  # the splits the model is fitted on (train; train and valid for a refit)
    valid_dir: str  # "" when nothing is held out (a refit): no validation, the last epoch is the result
    local_mode: bool
    data_cache: str
    started_at: float
    eval_keys: tuple[str, ...] = ("outputs", "labels")


@dataclass
class TrainState:
    """Where training stands; saved in ``checkpoint.json`` under ``train_state``."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches trained in the current, incomplete epoch
    global_step: int = 0
    samples: int = 0  # global samples trained
    train_seconds: float = 0.0
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, int]] = field(default_factory=list)  # where each restart picked up
    ray_start_s: float | None = None  # the first attempt's start-up (``widedeep.train.timings``)
    timings: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def checkpoint_state(self) -> dict[str, Any]:
        """The ``state`` ``save_checkpoint`` records in ``checkpoint.json``."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "step_in_epoch": self.step_in_epoch,
            "train_state": asdict(self),
        }


@dataclass(frozen=True)
class WorkerContext:
    """The job as this worker sees it: config, feature space, task, rank, device."""

    spec: LoopSpec
    cfg: TrainConfig
    fs: Any
    task: Task
    rank: int
    world: int
    device: torch.device

    @classmethod
    def create(cls, spec: LoopSpec) -> WorkerContext:
        """Read Ray Train's context, pick the device, seed torch and numpy."""
        import ray.train

        from widedeep.features import FeatureSpace

        cfg = config_from_dict(spec.config)
        ctx = ray.train.get_context()
        device = torch.device("cpu")
        if cfg.use_gpu and torch.cuda.is_available():
            import ray.train.torch

            device = ray.train.torch.get_device()
        if cfg.torch_threads:  # small models on shared CPUs: extra OpenMP threads only spin-wait
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        fs = FeatureSpace.from_json(spec.feature_space)
        return cls(spec, cfg, fs, get_task(cfg.task), ctx.get_world_rank(), ctx.get_world_size(), device)

    @property
    def distributed(self) -> bool:
        import torch.distributed as dist

        return self.world > 1 and dist.is_initialized()

    def log0(self, msg: str) -> None:
        """A progress line from rank 0 only."""
        if self.rank == 0:
            log(msg)


@dataclass
class ModelParts:
    """The model (``model``), what the steps call (``train_model``: DDP-wrapped when distributed)
    and the dense optimizer (``None`` when every parameter lives in the fused tables)."""

    model: torch.nn.Module
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    restored: bool


def build_model_parts(ctx: WorkerContext) -> tuple[ModelParts, TrainState]:
    """The model to train and the state to continue from (fresh, or the latest checkpoint's)."""
    import ray.train

    restored = ray.train.get_checkpoint()
    model = ctx.task.build_model(ctx.fs, ctx.cfg)
    if restored is None and ctx.cfg.warm_start_from:  # on the whole tables, before they are sharded
        from widedeep.train.warm_start import warm_start

        report = warm_start(model, ctx.fs, ctx.cfg.warm_start_from)
        ctx.log0(f"warm start from {ctx.cfg.warm_start_from}: {report}")
    # issue 16 hook: tables split by rows across workers per cfg.sharding (before .to(device) and restore)
    from widedeep.train.sharded_training import shard_for_training

    model, shard_msg = shard_for_training(model, ctx.cfg, ctx.rank, ctx.world)
    if shard_msg:
        ctx.log0(shard_msg)
    model = model.to(ctx.device)
    dense_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = ctx.cfg.optim.dense.build(dense_params) if dense_params else None
    state = TrainState() if restored is None else _restore(ctx, restored, model, optimizer)
    train_model = _wrap_distributed(ctx, model, bool(dense_params))
    return ModelParts(model, train_model, optimizer, restored is not None), state


def _restore(ctx: WorkerContext, checkpoint: Any, model: torch.nn.Module, optimizer: Any) -> TrainState:
    """Weights, optimizer state and the train state of Ray Train's latest checkpoint."""
    from widedeep.model.checkpoint import load_state_into, read_meta

    with checkpoint.as_directory() as d:
        load_state_into(d, model, optimizer)
        state = TrainState.from_dict(read_meta(d).get("train_state", {}))
    state.resumes.append({"epoch": state.epoch, "global_step": state.global_step})
    ctx.log0(
        f"resumed from checkpoint at epoch {state.epoch} step {state.global_step} "
        f"(+{state.step_in_epoch} batches into epoch {state.epoch + 1})"
    )
    return state


def _wrap_distributed(ctx: WorkerContext, model: torch.nn.Module, has_dense: bool) -> torch.nn.Module:
    """DDP for the dense parameters; the tables' exchange gets its own process group."""
    if not ctx.distributed:
        return model
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    sparse_pg = dist.new_group(backend=dist.get_backend())
    for m in model.modules():
        if hasattr(m, "set_process_group") and m is not model:
            m.set_process_group(sparse_pg)
    if not has_dense:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids, broadcast_buffers=False)
