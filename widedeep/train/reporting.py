"""Reports and checkpoints of the training loop (the rules of Ray Train V2, as its user guide
states them).

- ``ray.train.report`` is a barrier: every rank calls it the same number of times (after every
  ``checkpoint_every_steps`` steps and at every epoch end); rank 0 attaches the checkpoint
  directory, other ranks their pieces of row-wise sharded tables (``widedeep.train
  .sharded_training``) or nothing; Ray Train merges them under one checkpoint name.
- V2 keeps only the metrics of reports that carry a checkpoint, so every report whose metrics
  matter (the epoch-end validation) carries one.
- Checkpoints cost one write: with storage on a file system the workers see (a local path, as
  Ray Train V2 requires a shared one for several nodes), the worker writes the checkpoint
  straight into the run directory and reports it without an upload
  (``CheckpointUploadMode.NO_UPLOAD``), instead of writing a temporary copy that Ray Train then
  copies. With remote storage (a URI) it writes a temporary directory that Ray Train uploads.
- No committed checkpoint is lost when a worker is killed: ``checkpoint.json`` is written last (a
  directory without it is incomplete and never reported), and reports stay synchronous, so once a
  report returns Ray Train has taken the previous one. Ray Train's asynchronous upload mode is not
  used: it lets training run ahead of reports the controller has not taken, and a worker killed
  then resumes from an older checkpoint than the one it reported (or none).
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
        self._hand_over(m, d, name)
        return time.perf_counter() - t0

    def _directory(self, name: str) -> Path:
        """Where this worker writes checkpoint ``name``: in place in the run directory when it is
        on a local file system (and in local mode), else a temporary directory to upload."""
        if self._in_place:
            d = Path(self.ctx.spec.run_dir) / name
            d.mkdir(parents=True, exist_ok=True)
            return d
        return Path(tempfile.mkdtemp(prefix="widedeep-ckpt-"))

    @property
    def _in_place(self) -> bool:
        from widedeep.paths import Location

        return self.ctx.spec.local_mode or Location.of(self.ctx.spec.run_dir).is_local

    def _hand_over(self, metrics: dict[str, Any], directory: Path | None, name: str) -> None:
        import ray.train
        from ray.train import Checkpoint, CheckpointUploadMode

        if directory is None:
            ray.train.report(metrics, checkpoint=None)
            return
        checkpoint = Checkpoint.from_directory(str(directory))
        if self.ctx.spec.local_mode:
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        elif self._in_place:
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
        else:
            ray.train.report(
                metrics, checkpoint=checkpoint, checkpoint_dir_name=name, delete_local_checkpoint_after_upload=True
            )

    def _report_rank_tables(self, name: str, metrics: dict[str, Any]) -> None:
        """Ranks other than 0: their rows of sharded tables (issue 16), or nothing."""
        from widedeep.train.sharded_training import rank_has_tables, write_rank_tables_into

        d = None
        if rank_has_tables(self.parts.model, self.ctx.rank):
            d = self._directory(name)
            write_rank_tables_into(d, self.parts.model, self.ctx.rank)
        self._hand_over({**metrics, "checkpoint_name": name}, d, name)
