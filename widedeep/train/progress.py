"""Progress lines of a training run (stderr), shared by the driver and the workers."""

from __future__ import annotations

import math
import sys
import time
from typing import Any


def log(msg: str) -> None:
    """A progress line on stderr (written directly: Ray Train's patched ``print`` would tee it
    to its logger as well, and the driver would show every line twice)."""
    sys.stderr.write(f"[widedeep train] {msg}\n")
    sys.stderr.flush()


def fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class StepLogger:
    """The every-``log_every_steps`` line of rank 0: position, running loss, samples/s since the
    last line, the share of that time spent waiting for data, and the ETA of the run."""

    def __init__(self, epochs: int, steps_per_epoch: int, every: int, enabled: bool) -> None:
        self.epochs, self.steps_per_epoch, self.every, self.enabled = epochs, steps_per_epoch, every, enabled
        self._t, self._samples, self._wait = time.perf_counter(), 0, 0.0

    def start_epoch(self, samples: int, data_wait_s: float) -> None:
        self._t, self._samples, self._wait = time.perf_counter(), samples, data_wait_s

    def step(self, epoch: int, step_in_epoch: int, global_step: int, samples: int, loss: float, clock: Any) -> None:
        """``samples``: global samples trained so far; ``clock``: the epoch's ``EpochClock``."""
        if not self.enabled or global_step % self.every:
            return
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        rate = (samples - self._samples) / dt
        wait = 100.0 * (clock.data_wait_s - self._wait) / dt
        remaining = (self.epochs - epoch - 1) * self.steps_per_epoch + max(self.steps_per_epoch - step_in_epoch, 0)
        log(
            f"epoch {epoch + 1}/{self.epochs} step {step_in_epoch}/{self.steps_per_epoch} loss {loss:.4f} "
            f"{rate:,.0f} samples/s (data wait {wait:.0f}%) ETA {fmt_eta(remaining * dt / self.every)}"
        )
        self._t, self._samples, self._wait = now, samples, clock.data_wait_s
