"""One optimizer step of the training loop, and the dense learning rate it runs at."""

from __future__ import annotations

from typing import Any

import torch

from widedeep.train.schedule import lr_factor
from widedeep.train.tasks import batch_size_of


def set_dense_lr(optimizer: torch.optim.Optimizer | None, dense: Any, step: int, total_steps: int) -> None:
    """The dense optimizer's learning rate at ``step`` of ``total_steps`` (schedule and warm-up,
    ``widedeep.train.schedule``); left alone for a constant rate without warm-up."""
    if optimizer is None or (dense.schedule == "constant" and not dense.warmup_steps):
        return
    lr = dense.lr * lr_factor(dense.schedule, step, total_steps, dense.min_lr_ratio, dense.warmup_steps)
    for g in optimizer.param_groups:
        g["lr"] = lr


def train_step(
    task: Any, train_model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, batch: Any, cfg: Any
) -> tuple[float, int]:
    """Forward, backward, update (the fused tables update inside backward); ``(loss, rows)``."""
    loss = task.loss(train_model, batch, cfg)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    return float(loss.detach()), batch_size_of(batch)
