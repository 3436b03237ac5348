"""Callbacks into the training loop, and the fault-injection doubles the tests pass in.

``widedeep.train.driver.run_training(cfg, hooks=...)`` ships a ``LoopHooks`` object to every
worker (Ray pickles it with the loop's config); the loop calls its methods at fixed points and
never asks what they are. A production run passes nothing and gets the base class, whose methods
do nothing, so the production path carries no test branch.

The two doubles here are what ``tests/train`` needs to compare runs weight for weight:

- ``DeterministicShards``: every worker reads the train split itself in file order and rank ``r``
  of ``W`` takes rows ``[k*B*W + r*B, k*B*W + (r+1)*B)`` of global batch ``k`` (incomplete global
  batches dropped): the global batches are identical for any ``W`` and any restart point.
- ``KillAtStep``: the worker of one rank SIGKILLs itself right after a global step, only on an
  attempt that did not start from a checkpoint (the fault-tolerance test).
- ``SlowFreshSteps``: every worker sleeps after each global step of an attempt that did not start
  from a checkpoint, so a tiny run lasts long enough for a test to kill a whole node mid-run from
  outside (``tests/cluster``); the attempt that resumes runs at full speed and trains the same model.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from widedeep.train.feed import TrainFeed
    from widedeep.train.worker import WorkerContext


class LoopHooks:
    """No-op callbacks; subclass and override what a test needs."""

    #: the driver builds no Ray Data train pipeline when the hooks supply the train batches
    replaces_train_data: bool = False

    def train_feed(self, ctx: WorkerContext) -> TrainFeed | None:
        """Train batches to use instead of the configured ones (``None``: the configured ones)."""
        return None

    def after_step(self, ctx: WorkerContext, global_step: int, restored: bool) -> None:
        """Called after every optimizer step (and its checkpoint, if one falls on it)."""


@dataclass(frozen=True)
class DeterministicShards(LoopHooks):
    """Identical global batches for any number of workers (see the module docstring)."""

    replaces_train_data: bool = True

    def train_feed(self, ctx: WorkerContext) -> TrainFeed | None:
        from widedeep.train.feed import CachedTrainFeed

        return CachedTrainFeed(ctx, shuffle=False, drop_incomplete=True)


@dataclass(frozen=True)
class _AfterFreshStep(LoopHooks):
    """A double that acts after steps of a fresh attempt and otherwise defers to ``inner`` (e.g.
    ``DeterministicShards``), so the fault doubles combine with the data double."""

    inner: LoopHooks | None = field(default=None, kw_only=True)

    @property
    def replaces_train_data(self) -> bool:  # type: ignore[override]
        return bool(self.inner and self.inner.replaces_train_data)

    def train_feed(self, ctx: WorkerContext) -> TrainFeed | None:
        return self.inner.train_feed(ctx) if self.inner else None

    def after_step(self, ctx: WorkerContext, global_step: int, restored: bool) -> None:
        if self.inner:
            self.inner.after_step(ctx, global_step, restored)
        if not restored:
            self.after_fresh_step(ctx, global_step)

    def after_fresh_step(self, ctx: WorkerContext, global_step: int) -> None:
        """Called after every step of an attempt that did not start from a checkpoint."""


@dataclass(frozen=True)
class KillAtStep(_AfterFreshStep):
    """SIGKILL the worker of rank ``rank`` right after global step ``step`` of a fresh attempt."""

    step: int
    rank: int = 0

    def after_fresh_step(self, ctx: WorkerContext, global_step: int) -> None:
        if global_step == self.step and ctx.rank == self.rank:
            from widedeep.train.progress import log

            log(f"KillAtStep({self.step}): killing worker pid {os.getpid()} (test hook)")
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class SlowFreshSteps(_AfterFreshStep):
    """Sleep ``seconds`` after every global step of an attempt that did not start from a checkpoint."""

    seconds: float

    def after_fresh_step(self, ctx: WorkerContext, global_step: int) -> None:
        time.sleep(self.seconds)
