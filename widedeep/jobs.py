"""Run a ``widedeep`` CLI job locally or on a cluster, from a notebook or script.

Why: notebooks must work unchanged on a laptop and against a cluster. Ray Client (``ray://``)
is deprecated for Train workloads, so against a cluster the job goes through the Ray Jobs API
(exactly what ``ray job submit --working-dir . -- python -m widedeep ...`` does); locally it runs
in-process through the same CLI entry point. Which one is decided by ``RAY_ADDRESS``:

- unset: in-process (a local Ray is started on first use);
- ``http://head:8265`` (or ``ray://``/``auto``-style addresses converted by Ray): Jobs API.

On a cluster every path in ``argv`` must be visible to the cluster (shared storage or a URI such
as ``s3://``), as for any Ray job. With token authentication on (the Ray 2.60 default for new
clusters) export ``RAY_AUTH_MODE=token`` so the client sends ``~/.ray/auth_token``.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from widedeep.cli import main
from widedeep.errors import WidedeepError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# gitignore-style patterns (what Ray matches working_dir excludes with); the quickstart's output and a
# virtualenv in the clone (README's set-up makes ./.venv) would otherwise be uploaded with every job
UPLOAD_EXCLUDES = [
    "notebooks/",
    "tests/",
    ".git/",
    "*.parquet",
    "widedeep-quickstart/",
    "notebook-runs/",
    ".venv/",
    "__pycache__/",
]


class JobFailedError(WidedeepError):
    """A submitted or local job did not succeed; the message names the command and its status."""


def cluster_address() -> str | None:
    """The Jobs API address when a cluster is targeted (``RAY_ADDRESS``), else ``None``."""
    addr = os.environ.get("RAY_ADDRESS", "").strip()
    return addr or None


def run_job(argv: Sequence[str], *, timeout_s: float = 3600.0) -> str:
    """Run ``widedeep <argv>`` to completion; returns where it ran (``"local"`` or the job id)."""
    addr = cluster_address()
    if addr is None:
        rc = main(list(argv))
        if rc != 0:
            raise JobFailedError(f"`widedeep {shlex.join(argv)}` exited with {rc}")
        return "local"
    return _submit(addr, argv, timeout_s)


def _submit(addr: str, argv: Sequence[str], timeout_s: float) -> str:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(addr)
    entry = "python -m widedeep " + shlex.join(argv)
    job_id = client.submit_job(
        entrypoint=entry,
        runtime_env={"working_dir": str(REPO_ROOT), "excludes": UPLOAD_EXCLUDES},
    )
    print(f"submitted {job_id} to {addr}: {entry}", flush=True)
    deadline = time.monotonic() + timeout_s
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            print(logs[shown:], end="", flush=True)
            shown = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise JobFailedError(f"job {job_id} ({entry}) did not finish in {timeout_s:.0f}s; stopped")
        time.sleep(2.0)
    if status != JobStatus.SUCCEEDED:
        raise JobFailedError(f"job {job_id} ({entry}) ended {status}")
    return job_id
