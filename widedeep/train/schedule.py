"""Learning-rate schedules as pure functions of the global step.

Stateless on purpose: the factor depends only on ``(step, total_steps)``, so a resumed run (whose
``global_step`` comes from the checkpoint) continues the schedule exactly without saving any
scheduler state.
"""

from __future__ import annotations

import math


def lr_factor(schedule: str, step: int, total_steps: int, min_ratio: float = 0.0, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    t = min(max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1), 1.0)
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - t)
    raise ValueError(f"unknown schedule {schedule!r}")
