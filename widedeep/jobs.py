"""Run a ``widedeep`` CLI job locally or on a cluster, from a notebook or script.

Why: notebooks must work unchanged on a laptop and against a cluster. Ray Client (``ray://``)
is deprecated for Train workloads, so against a cluster the job goes through the Ray Jobs API
(exactly what ``ray job submit --working-dir . -- python -m widedeep ...`` does); locally it runs
in-process through the same CLI entry point. Which one is decided by ``RAY_ADDRESS``:

- unset: in-process (a local Ray is started on first use);
- ``http://head:8265`` (or ``ray://``/``auto``-style addresses converted by Ray): Jobs API.

The job ships the code it runs as a Ray ``py_modules`` package: a copy of the imported
``widedeep`` package with its platform files inside (``widedeep/_platform``, see
``widedeep.paths.platform_path``), the same whether widedeep runs from a checkout or from a wheel in
``site-packages`` (whose parent directory must never be uploaded: it is every installed package).

The job's working directory holds a copy of ``platform/`` too, and an argument naming a file of the
local ``platform/`` tree (``--spec .../platform/specs/appstore.yaml``) is passed as that copy's
relative path (``platform/specs/appstore.yaml``): the client's checkout is not on the cluster. Every
other path in ``argv`` must be visible to the cluster (shared storage or a URI such as ``s3://``),
as for any Ray job. With token authentication on (the Ray 2.60 default for new
clusters) export ``RAY_AUTH_MODE=token`` so the client sends ``~/.ray/auth_token``.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from widedeep.cli import main
from widedeep.errors import WidedeepError
from widedeep.paths import PACKAGED_PLATFORM, platform_path

log = logging.getLogger(__name__)

JOB_ENV_VARS = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}


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
    entry = "python -m widedeep " + shlex.join(cluster_argv(argv))
    with tempfile.TemporaryDirectory(prefix="widedeep-job-") as staging:
        job_id = client.submit_job(entrypoint=entry, runtime_env=job_runtime_env(Path(staging)))
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


def cluster_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` as a job on a cluster runs it: a file or directory of the local ``platform/`` tree
    becomes ``platform/<relative path>`` (the copy in the job's working directory, see
    ``job_runtime_env``); anything else is passed as it is."""
    root = platform_path().resolve()
    out = []
    for arg in argv:
        p = Path(arg)
        if p.is_absolute() and p.exists() and p.resolve().is_relative_to(root):
            arg = str(Path("platform") / p.resolve().relative_to(root))
        out.append(arg)
    return out


def stage_package(staging: Path) -> Path:
    """A copy of the running ``widedeep`` package under ``staging``, with the platform files inside
    it (``_platform``) and no bytecode: what a job ships to the cluster."""
    package = Path(__file__).resolve().parent
    out = staging / "widedeep"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", PACKAGED_PLATFORM)
    shutil.copytree(package, out, ignore=skip)
    shutil.copytree(platform_path(), out / PACKAGED_PLATFORM, ignore=shutil.ignore_patterns("__pycache__"))
    return out


def job_runtime_env(staging: Path) -> dict[str, object]:
    """The runtime env of a submitted job: the package staged under ``staging`` as ``py_modules``
    (uploaded by ``submit_job``; the cluster's own dependencies run it), a working directory holding
    ``platform/`` (the job configs and specs ``cluster_argv`` points at) and quiet progress output."""
    workdir = staging / "job"
    shutil.copytree(platform_path(), workdir / "platform", ignore=shutil.ignore_patterns("__pycache__"))
    return {
        "py_modules": [str(stage_package(staging))],
        "working_dir": str(workdir),
        "env_vars": dict(JOB_ENV_VARS),
    }
