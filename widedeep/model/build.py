"""Building a model from its task name, FeatureSpace and settings.

One recipe serves training (``widedeep.train.tasks``) and every reader of a checkpoint
(``widedeep.model.checkpoint``), so a checkpoint rebuilds exactly the model that was trained,
without pickle and without importing the training package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from widedeep.config import from_dict
from widedeep.errors import ConfigError
from widedeep.model.two_tower import TwoTower, two_tower_config
from widedeep.model.wide_deep import ModelConfig, OptimConfig, WideAndDeep

#: what ``task:`` of a training job may name; each builds one model class
MODEL_TASKS = ("ranking", "retrieval")


def build_model(
    task: str, fs: Any, model: ModelConfig, optim: OptimConfig, task_config: Mapping[str, Any] | None, seed: int = 0
) -> nn.Module:
    """A fresh model: ``ranking`` is Wide & Deep (``model``, ``optim``), ``retrieval`` the two-tower
    retriever (``task_config``; its tables use ``optim.embedding``)."""
    if task == "ranking":
        return WideAndDeep(fs, model, optim, seed=seed)
    if task == "retrieval":
        return TwoTower(fs, two_tower_config(task_config), optim.embedding, seed=seed)
    raise ConfigError(f"task: unknown task {task!r} (known: {', '.join(MODEL_TASKS)})")


def build_model_from_dict(task: str, fs: Any, raw: Mapping[str, Any]) -> nn.Module:
    """``build_model`` from a job config as a dict (a checkpoint's ``config.yaml``); the sections it
    reads (``model``, ``optim``, ``task_config``, ``seed``) are checked as strictly as in training."""
    model = from_dict(ModelConfig, dict(raw.get("model") or {}), "model")
    optim = from_dict(OptimConfig, dict(raw.get("optim") or {}), "optim")
    return build_model(task, fs, model, optim, raw.get("task_config"), int(raw.get("seed", 0)))
