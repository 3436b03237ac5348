"""The training job config (``platform/jobs/*.yaml``), strict and frozen.

Every key a job can set lives here, so an unknown key is an error naming it (``widedeep.config
.from_dict``) and ``--set key=value`` overrides get the same checks as the file. The resolved
config is written into every checkpoint (``config.yaml``), which is how ``load_checkpoint``
rebuilds the model without pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from widedeep.config import apply_overrides, from_dict, read_yaml, to_dict
from widedeep.errors import ConfigError
from widedeep.kernels.sharding import ShardingConfig
from widedeep.model.wide_deep import ModelConfig, OptimConfig
from widedeep.paths import is_uri
from widedeep.tracking import TrackingConfig


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop when the validation ``metric`` has not improved for ``patience`` epochs; the
    run's result is the best epoch's checkpoint either way (restore-best). ``metric`` (and
    ``mode``) default to the task's own (ranking: auc / rmse, retrieval: hit@50); any metric the
    task reports on the valid split may be named (a name it does not report fails the run at the
    first validation, listing the ones it does)."""

    enabled: bool = True
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    patience: int = 2
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ConfigError(f"patience: must be >= 0, got {self.patience}")


#: what a refit run is fitted on (``RefitConfig``)
REFIT_SPLITS = ("train", "valid")


@dataclass(frozen=True)
class RefitConfig:
    """Train the result again on every split before the evaluated one, with the settings the
    valid split chose.

    ``enabled``: after the run (trained on ``train``, its epoch chosen on ``valid``), a second run
    trains from the same start (scratch, or ``warm_start_from``) on ``train`` and ``valid`` for the
    chosen number of epochs, with no validation (nothing is left to validate on), and is the job's
    result. It is what a served model is: trained on every logged row up to the day it serves, its
    settings chosen while a later slice was still held out. Its checkpoints record ``fit_splits``
    and ``selected_by`` (the checkpoint whose validation chose the epochs), so evaluation and
    export choose everything else with ``selected_by`` on valid and fit the rest (popularity, the
    item-to-item source, the baselines) on the same splits as the model; evaluating it on a split
    it was trained on is refused.

    ``fit_splits`` and ``selected_by`` are written by the refit run itself (a job sets ``enabled``).
    """

    enabled: bool = False
    fit_splits: tuple[str, ...] = ("train",)
    selected_by: str | None = None

    def __post_init__(self) -> None:
        allowed = (("train",), REFIT_SPLITS)
        if tuple(self.fit_splits) not in allowed:
            raise ConfigError(f"refit.fit_splits: must be one of {[list(a) for a in allowed]}, got {self.fit_splits!r}")
        if self.enabled and tuple(self.fit_splits) != ("train",):
            raise ConfigError("refit.enabled: the run that chooses the epochs trains on the train split only")

    @property
    def on_valid(self) -> bool:
        """True for the refit run (trained on the valid split too: it has no validation)."""
        return "valid" in self.fit_splits


def fit_splits(cfg: Any) -> tuple[str, ...]:
    """The prepared splits a job's model is fitted on (``refit.fit_splits``), from a
    ``TrainConfig`` or its dict (what a worker's task sees)."""
    refit = cfg.get("refit") if isinstance(cfg, dict) else cfg.refit
    if refit is None:
        return ("train",)
    return tuple(refit.get("fit_splits", ("train",)) if isinstance(refit, dict) else refit.fit_splits)


DATA_CACHE_MODES = ("auto", "memory", "stream")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
LEGACY_DEBUG_KEY = "debug"


@dataclass(frozen=True)
class TrainConfig:
    """One training job. ``data`` is a prepared directory (``widedeep prepare`` output).

    ``batch_size`` is per worker (the global batch is ``batch_size * num_workers``);
    ``num_workers: 0`` runs the loop in the driver (Ray Train local mode: no resume, no fault
    tolerance; for quick experiments). ``placement_strategy`` and ``label_selector`` place the
    workers on a cluster (Ray Train's ``ScalingConfig``): ``SPREAD`` puts them on different nodes
    where it can (one lost node then takes one worker, not all), ``label_selector`` limits them to
    nodes with those labels (``{"ray.io/node-group": "gpu"}``; ``"!head"`` negates, ``"in(a,b)"``
    lists). ``storage_path/run_name`` is the run directory: the same name resumes.
    ``checkpoint_every_steps`` adds mid-epoch checkpoints to the epoch-end ones;
    ``num_to_keep`` prunes by validation score (the latest is always kept). ``sharding``: which
    embedding tables are split by rows across the workers (``widedeep.kernels.sharding``; by
    default all replicated unless they exceed ``sharding.memory_budget_mb``). ``tracking``: log the
    run to MLflow and register its best checkpoint (``widedeep.tracking``; optional extra).

    ``data_cache``: how the train (and valid) split reaches the workers (``widedeep.train.feed``):
    ``memory`` reads it once per worker and reshuffles it every epoch (seeded by ``seed`` and the
    epoch; ``shuffle: none`` keeps file order, ``files`` and ``batches`` both permute every row),
    ``stream`` streams it through Ray Data every epoch (``shuffle`` as described there), ``auto``
    picks ``memory`` when the split's needed columns times the workers fit in
    ``widedeep.train.feed.MEMORY_CACHE_FRACTION`` (a quarter) of the object store, else ``stream``.
    """

    data: str
    task: Literal["ranking", "retrieval"] = "ranking"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    task_config: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 512
    eval_batch_size: int = 4096
    epochs: int = 5
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    label_selector: dict[str, str] = field(default_factory=dict)
    checkpoint_every_steps: int = 0
    num_to_keep: int | None = None
    storage_path: str = "~/widedeep_runs"
    run_name: str | None = None
    max_failures: int = 0
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    seed: int = 0
    shuffle: Literal["none", "files", "batches"] = "batches"
    shuffle_window: int = 16384
    prefetch_batches: int = 4
    data_cache: Literal["auto", "memory", "stream"] = "auto"
    log_every_steps: int = 50
    torch_threads: int | None = None
    warm_start_from: str | None = None
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    refit: RefitConfig = field(default_factory=RefitConfig)

    def __post_init__(self) -> None:
        if self.refit.on_valid and self.early_stopping.enabled:
            raise ConfigError("early_stopping.enabled: a run fitted on the valid split has nothing to stop on")
        for key in ("batch_size", "eval_batch_size", "epochs", "log_every_steps"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: must be >= 0 (0 = local mode in the driver), got {self.num_workers}")
        if self.num_workers == 0 and is_uri(self.storage_path):
            # Local mode writes its checkpoints in place on this machine (no upload step), so a URI
            # would become a local folder named after it: refuse rather than lose the checkpoints.
            raise ConfigError(
                f"num_workers: 0 (local mode) keeps checkpoints on this machine; storage_path "
                f"{self.storage_path!r} is a URI: use num_workers >= 1 or a local storage_path"
            )
        if self.cpus_per_worker < 0:
            raise ConfigError(f"cpus_per_worker: must be >= 0, got {self.cpus_per_worker}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ConfigError(
                f"placement_strategy: must be one of {list(PLACEMENT_STRATEGIES)}, got {self.placement_strategy!r}"
            )
        for key, value in self.label_selector.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or not value:
                raise ConfigError(f"label_selector: keys and values must be non-empty strings, got {key!r}: {value!r}")
        if self.checkpoint_every_steps < 0:
            raise ConfigError(
                f"checkpoint_every_steps: must be >= 0 (0 = only at epoch ends), got {self.checkpoint_every_steps}"
            )
        if self.num_to_keep is not None and self.num_to_keep < 1:
            raise ConfigError(f"num_to_keep: must be >= 1 or null, got {self.num_to_keep}")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures: must be >= -1 (-1 = unlimited), got {self.max_failures}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads: must be >= 1 or null (torch's default), got {self.torch_threads}")
        if self.prefetch_batches < 0:
            raise ConfigError(f"prefetch_batches: must be >= 0, got {self.prefetch_batches}")
        if self.data_cache not in DATA_CACHE_MODES:
            raise ConfigError(f"data_cache: must be one of {list(DATA_CACHE_MODES)}, got {self.data_cache!r}")
        if not self.data:
            raise ConfigError("data: must name a prepared data directory")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read ``path`` (YAML), apply ``key=value`` overrides, validate strictly."""
    raw: dict[str, Any] = read_yaml(path) if path else {}
    raw = apply_overrides(raw, list(overrides))
    try:
        return from_dict(TrainConfig, raw)
    except ConfigError as e:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{e}") from None


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """A stored config (a checkpoint's ``config.yaml``, the loop's copy), strictly.

    Checkpoints written before the loop's test hooks moved to ``widedeep.train.hooks`` carry a
    ``debug`` section (test-only settings that never changed the model): it is the one key
    accepted here and not in job files, so those checkpoints still load, evaluate and export."""
    return from_dict(TrainConfig, {k: v for k, v in raw.items() if k != LEGACY_DEBUG_KEY})
