"""Reports and checkpoints of the training loop (the rules of Ray Train V2, as its user guide
states them).

- ``ray.train.report`` is a barrier: every rank calls it the same number of times (after every
  ``checkpoint_every_steps`` steps and at every epoch end); rank 0 attaches the checkpoint
  directory, other ranks their pieces of row-wise sharded tables (``widedeep.train
  .sharded_training``) or nothing; Ray Train merges them under one checkpoint name.
- V2 keeps only the metrics of reports that carry a checkpoint, so every report whose metrics
  matter (the epoch-end validation) carries one.
- Checkpoints do not stall training: the worker writes the files to a local temporary directory
  and hands it over with ``CheckpointUploadMode.ASYNC``; Ray Train copies it to storage in its
  background upload thread (one at a time, in report order), deletes the local copy once
  uploaded, and drains the thread before the worker ends. A checkpoint counts once Ray Train has
  committed it: a worker killed mid-upload resumes from the previous committed one (and writes
  the lost one again on the way), so no committed checkpoint is ever lost.
- Local mode (``num_workers: 0``) keeps no checkpoints of its own: files go straight to the run
  directory.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from widedeep.train.worker import ModelParts, TrainState, WorkerContext

STEP_SCORE = -1e30  # "score" of mid-epoch checkpoints: never preferred over an epoch-end one


class Reporter:
    """Writes this worker's part of each checkpoint and reports it to Ray Train."""

    def __init__(self, ctx: WorkerContext, parts: ModelParts) -> None:
        self.ctx, self.parts = ctx, parts

    def report(self, name: str, metrics: Callable[[float], dict[str, Any]], state: TrainState) -> float:
        """Write and report checkpoint ``name``; returns the seconds it took this worker.

        ``metrics(write_s)`` is called once the tensors are written (``write_s``: how long that
        took, so an epoch's timings can include its own checkpoint) and may update ``state``
        before it is recorded in ``checkpoint.json``."""
        t0 = time.perf_counter()
        if self.ctx.rank != 0:
            self._report_rank_tables(name, metrics(0.0))
            return time.perf_counter() - t0
        from widedeep.model.checkpoint import write_checkpoint_meta, write_checkpoint_tensors

        d = self._directory(name)
        tables = write_checkpoint_tensors(d, model=self.parts.model, optimizer=self.parts.optimizer)
        m = {**metrics(time.perf_counter() - t0), "checkpoint_name": name}
        write_checkpoint_meta(
            d,
            feature_space=self.ctx.fs,
            config=self.ctx.spec.config,
            metrics=m,
            task=self.ctx.task.name,
            state=state.checkpoint_state(),
            tables=tables,
        )
        self._hand_over(m, str(d), name)
        return time.perf_counter() - t0

    def _directory(self, name: str) -> Path:
        if self.ctx.spec.local_mode:  # local mode keeps checkpoints in memory only: write them in place
            return Path(self.ctx.spec.run_dir) / name
        return Path(tempfile.mkdtemp(prefix="widedeep-ckpt-"))

    def _hand_over(self, metrics: dict[str, Any], directory: str | None, name: str) -> None:
        import ray.train
        from ray.train import Checkpoint, CheckpointUploadMode

        if directory is None:
            ray.train.report(metrics, checkpoint=None)
        elif self.ctx.spec.local_mode:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory), checkpoint_dir_name=name)
        else:
            ray.train.report(
                metrics,
                checkpoint=Checkpoint.from_directory(directory),
                checkpoint_dir_name=name,
                checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                delete_local_checkpoint_after_upload=True,
            )

    def _report_rank_tables(self, name: str, metrics: dict[str, Any]) -> None:
        """Ranks other than 0: their rows of sharded tables (issue 16), or nothing."""
        from widedeep.train.sharded_training import write_rank_tables_dir

        self._hand_over(
            {**metrics, "checkpoint_name": name}, write_rank_tables_dir(self.parts.model, self.ctx.rank), name
        )
