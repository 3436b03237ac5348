"""Where a training run's time goes: Ray start-up once, then per epoch data wait, compute,
validation and checkpoints (the ``timings`` of the metrics JSON ``widedeep train --metrics-out``
writes, and of the progress lines).

Definitions (measured on rank 0, wall-clock seconds):

- ``ray_start_s``: from ``run_training``'s start (the ``widedeep train`` process start when run
  from the CLI) until the worker first asks for a train batch: Ray, the Train controller, the
  worker group, model construction and checkpoint restore. Reading a cached split happens after
  that ask and counts as the first epoch's data wait.
- per epoch: ``data_wait_s`` (blocked waiting for the next train batch), ``compute_s`` (the
  steps: forward, backward, optimizer updates, bookkeeping), ``validate_s``, ``checkpoint_s``
  (writing the epoch's checkpoints and reporting them to Ray Train; of the epoch-end checkpoint,
  whose metrics carry this record, the tensor write, the part that grows with the model),
  ``samples`` (global, all workers) and ``samples_per_s`` = ``samples / (data_wait_s + compute_s)``.
- ``steady_samples_per_s``: the same rate over every epoch without each epoch's first 10% of
  steps (at least one): what training runs at once the epoch's pipeline is warm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WARMUP_FRACTION = 0.1  # each epoch's first steps left out of the steady rate


@dataclass
class EpochClock:
    """One epoch's time on this worker, filled in by the loop as it goes."""

    steps_per_epoch: int
    data_wait_s: float = 0.0
    compute_s: float = 0.0
    validate_s: float = 0.0
    checkpoint_s: float = 0.0
    samples: int = 0
    steps: int = 0
    steady_samples: int = 0
    steady_s: float = 0.0

    def add_step(self, wait_s: float, compute_s: float, samples: int) -> None:
        self.data_wait_s += wait_s
        self.compute_s += compute_s
        self.samples += samples
        self.steps += 1
        if self.steps > max(1, math.ceil(WARMUP_FRACTION * self.steps_per_epoch)):
            self.steady_samples += samples
            self.steady_s += wait_s + compute_s

    def record(self, epoch: int) -> dict[str, Any]:
        """The epoch's entry of ``timings.epochs`` (``epoch`` is 1-based)."""
        busy = self.data_wait_s + self.compute_s
        return {
            "epoch": epoch,
            "data_wait_s": self.data_wait_s,
            "compute_s": self.compute_s,
            "validate_s": self.validate_s,
            "checkpoint_s": self.checkpoint_s,
            "samples": self.samples,
            "samples_per_s": self.samples / busy if busy > 0 else 0.0,
            "steady_samples": self.steady_samples,
            "steady_s": self.steady_s,
        }


def summarize(ray_start_s: float | None, epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics JSON's ``timings`` from the per-epoch records."""
    steady_s = sum(float(e.get("steady_s", 0.0)) for e in epochs)
    steady_n = sum(int(e.get("steady_samples", 0)) for e in epochs)
    return {
        "ray_start_s": ray_start_s,
        "epochs": epochs,
        "steady_samples_per_s": steady_n / steady_s if steady_s > 0 else None,
    }


def epoch_line(rec: dict[str, Any]) -> str:
    """The timing part of an epoch's progress line."""
    return (
        f"{rec['samples_per_s']:,.0f} samples/s | data wait {rec['data_wait_s']:.1f}s compute "
        f"{rec['compute_s']:.1f}s validation {rec['validate_s']:.1f}s checkpoint {rec['checkpoint_s']:.2f}s"
    )
