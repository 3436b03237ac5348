"""`ray job submit` of `widedeep train` to a real local Ray head started with `ray start --head`.

Isolation from the pytest session's own Ray (and from anybody else's on the machine): the head
gets its own temp dir and free ports for everything it listens on, no test code calls
`ray.init`, and teardown kills only the processes whose command line names this head's temp
dir (never `ray stop`, which stops every Ray on the machine).

Auth: Ray 2.60 enables token authentication for clusters it starts. The test keeps it ON with a
per-test token passed as RAY_AUTH_MODE=token + RAY_AUTH_TOKEN to both `ray start` and `ray job
submit` (users would rely on the token file ~/.ray/auth_token instead; the test must not touch
the shared one).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from widedeep.ports import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _kill_head(temp_dir: str) -> None:
    """Terminate only the processes of the head started in ``temp_dir``, in the order ``ray stop``
    uses (raylet, then the rest, the GCS last): all at once, they waited on each other for seconds."""
    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(temp_dir in a for a in (p.info["cmdline"] or [])):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue

    def is_(p: psutil.Process, name: str) -> bool:
        return name in os.path.basename((p.info["cmdline"] or [""])[0])

    raylet = [p for p in mine if is_(p, "raylet")]
    gcs = [p for p in mine if is_(p, "gcs_server")]
    for bucket in (raylet, [p for p in mine if p not in raylet and p not in gcs], gcs):
        for p in bucket:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(bucket, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="wdjob", dir="/tmp")  # short: Ray's socket paths must fit
    flags = [
        "ray-client-server-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "node-manager-port",
        "object-manager-port",
    ]
    gcs, dash, *node_ports = free_ports(2 + len(flags))  # at once: ports picked one by one once collided
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    cmd = [
        "ray",
        "start",
        "--head",
        f"--port={gcs}",
        "--num-cpus=4",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--temp-dir={temp_dir}",
        *(f"--{flag}={port}" for flag, port in zip(flags, node_ports, strict=True)),
        "--disable-usage-stats",
    ]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _kill_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_and_writes_a_checkpoint(ray_head, adult_small, tmp_path):
    address, env = ray_head
    out = tmp_path / "train.json"
    sub_id = f"widedeep-test-{secrets.token_hex(4)}"
    submit = [
        "ray",
        "job",
        "submit",
        "--address",
        address,
        "--submission-id",
        sub_id,
        "--working-dir",
        str(ROOT),
        "--runtime-env",
        str(ROOT / "platform" / "runtime_env.yaml"),
        "--",
        "python",
        "-m",
        "widedeep",
        "train",
        "--config",
        "platform/jobs/adult.yaml",
        "--set",
        f"data={adult_small}",
        "--set",
        "num_workers=1",
        "--set",
        "epochs=1",
        "--set",
        "shuffle=files",
        "--set",
        f"storage_path={tmp_path / 'runs'}",
        "--set",
        "run_name=job",
        "--metrics-out",
        str(out),
    ]
    r = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    status = subprocess.run(
        ["ray", "job", "status", "--address", address, sub_id], env=env, capture_output=True, text=True, timeout=60
    )
    assert "succeeded" in (status.stdout + status.stderr).lower()  # "Job ... succeeded"
    m = json.loads(out.read_text())
    ck = Path(m["checkpoint"])
    assert ck.parent == tmp_path / "runs" / "job"
    assert (ck / "model.safetensors").exists() and (ck / "checkpoint.json").exists()
    assert 0.7 < m["auc"] <= 1.0
    # the job's driver connected to this head, not a private local instance
    log = r.stdout + r.stderr
    assert "connecting to the Ray cluster" in log or "Connecting to existing Ray cluster" in log
