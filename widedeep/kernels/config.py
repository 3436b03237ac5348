"""Configuration of the table-batched embedding bag: what each table is, and how it learns.

Both are frozen dataclasses validated at construction (``ConfigError`` naming the field and
value), so a model config read with ``widedeep.config.from_dict`` is checked the same way as
one built in code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from widedeep.errors import ConfigError

Pooling = Literal["sum", "mean"]
Init = Literal["zeros", "normal", "uniform"]
OptimizerKind = Literal["sgd", "rowwise_adagrad", "ftrl"]

_POOLINGS = ("sum", "mean")
_INITS = ("zeros", "normal", "uniform")
_OPTIMIZERS = ("sgd", "rowwise_adagrad", "ftrl")


@dataclass(frozen=True)
class TableConfig:
    """One embedding table.

    Args:
        name: unique name, e.g. ``"deep/education"``.
        num_rows: rows (ids ``0 <= id < num_rows``), incl. OOV / hash buckets.
        dim: embedding dimension ``D`` (1 for the wide part's per-id weights).
        pooling: how a bag of ids is combined: ``"sum"`` or ``"mean"`` (an empty bag gives zeros).
        init: ``"zeros"``, ``"normal"`` (std ``init_scale``) or ``"uniform"`` (``±init_scale``).
        init_scale: scale of the initial weights.
    """

    name: str
    num_rows: int
    dim: int
    pooling: Pooling = "sum"
    init: Init = "normal"
    init_scale: float = 0.01

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"TableConfig.name: expected a non-empty string, got {self.name!r}")
        where = f"TableConfig({self.name!r})"
        if isinstance(self.num_rows, bool) or not isinstance(self.num_rows, int) or self.num_rows < 1:
            raise ConfigError(f"{where}.num_rows: expected an int >= 1, got {self.num_rows!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"{where}.dim: expected an int >= 1, got {self.dim!r}")
        if self.pooling not in _POOLINGS:
            raise ConfigError(f"{where}.pooling: expected one of {_POOLINGS}, got {self.pooling!r}")
        if self.init not in _INITS:
            raise ConfigError(f"{where}.init: expected one of {_INITS}, got {self.init!r}")
        if not _finite(self.init_scale) or self.init_scale < 0:
            raise ConfigError(f"{where}.init_scale: expected a finite float >= 0, got {self.init_scale!r}")


@dataclass(frozen=True)
class OptimizerConfig:
    """The sparse optimizer fused into the backward pass.

    Args:
        kind: ``"sgd"``; ``"rowwise_adagrad"`` (FBGEMM's EXACT_ROWWISE_ADAGRAD: one accumulator per
            row, ``m += mean(g**2)``; ``w -= lr * g / (sqrt(m) + eps)``); or ``"ftrl"``
            (FTRL-Proximal, McMahan et al. 2013, per-element ``z`` and ``n``).
        lr: learning rate (FTRL's ``alpha``).
        eps: Adagrad's denominator guard.
        initial_accumulator: initial value of Adagrad's ``m`` and of FTRL's ``n``.
        l1, l2: FTRL's L1 / L2 regularization strengths (``lambda_1``, ``lambda_2``).
        lr_power: FTRL's learning-rate power (``-0.5`` is the paper's ``1/sqrt(n)`` schedule).
        beta: FTRL's ``beta`` (smoothing of the per-coordinate learning rate).
    """

    kind: OptimizerKind
    lr: float
    eps: float = 1e-8
    initial_accumulator: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    lr_power: float = -0.5
    beta: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in _OPTIMIZERS:
            raise ConfigError(f"OptimizerConfig.kind: expected one of {_OPTIMIZERS}, got {self.kind!r}")
        for field in ("lr", "eps", "initial_accumulator", "l1", "l2", "beta"):
            v = getattr(self, field)
            if not _finite(v) or v < 0:
                raise ConfigError(f"OptimizerConfig.{field}: expected a finite number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ConfigError(f"OptimizerConfig.lr: expected > 0, got {self.lr!r}")
        if not _finite(self.lr_power) or not (-1.0 <= self.lr_power < 0.0):
            raise ConfigError(f"OptimizerConfig.lr_power: expected -1 <= lr_power < 0, got {self.lr_power!r}")


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
