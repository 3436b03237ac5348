"""The dev cluster (``widedeep.dev_cluster``) as a fixture of the ``cluster`` tests.

Why this shape: pytest runs every test in one process, and that process may already hold the
session's local Ray (``tests/conftest.py``: ``ray_session``, one per process). A process can be the
driver of one Ray only, so these tests never call ``ray.init`` here: every Ray client (``widedeep
prepare/train/export``, ``serve deploy``, ``ray list``) runs as its own process with the
environment a user of the cluster sets (``RAY_ADDRESS`` = the head's GCS, the cluster's auth token,
``AWS_ENDPOINT_URL`` and credentials of the S3 store), and the tests talk to Serve over HTTP. So the
cluster tests and the ordinary Ray tests can run in one ``pytest -q`` in any order.

The cluster lives for the package (``tests/cluster``), not the session: it is stopped (every process
by the pid it was started with) before the rest of the suite runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from widedeep.dev_cluster import DevCluster, DevClusterConfig


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.fixture(scope="package")
def cluster() -> Iterator[DevCluster]:
    """A head (2 CPUs) and 2 worker nodes (2 CPUs each) as separate ``ray start`` processes, and
    moto's S3 server with the bucket ``widedeep``."""
    # a short path: Ray's socket paths under the temp dir must fit in 107 bytes
    workdir = Path(tempfile.mkdtemp(prefix="wdc", dir="/tmp"))
    c = DevCluster(DevClusterConfig(workdir=workdir, workers=2, head_cpus=2, worker_cpus=2))
    t0 = time.monotonic()
    c.start()
    try:
        c.wait_for_nodes(3)
        print(f"\n[cluster] dev cluster up in {time.monotonic() - t0:.1f}s: head + 2 workers, S3 {c.s3_endpoint}")
        yield c
    finally:
        groups = {n.pid for n in c.nodes.values()} | ({c.s3_pid} if c.s3_pid else set())
        t0 = time.monotonic()
        c.stop()
        print(f"\n[cluster] dev cluster stopped in {time.monotonic() - t0:.1f}s")
        # stop() leaves no process behind: each node and the S3 server were started in a group of their own
        left = [
            (p.pid, p.info["name"])
            for p in psutil.process_iter(["name", "status"])
            if _group(p.pid) in groups and p.info["status"] != psutil.STATUS_ZOMBIE
        ]
        shutil.rmtree(workdir, ignore_errors=True)
        assert not left, f"processes of the dev cluster left after stop(): {left}"


@pytest.fixture(scope="package")
def cluster_env(cluster: DevCluster) -> dict[str, str]:
    """The environment of a client process of the cluster: this one's, minus any Ray address of
    its own, plus what ``widedeep dev-cluster up`` prints (and the checkout on ``PYTHONPATH``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(cluster.env())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="package")
def client_logs(cluster: DevCluster) -> Path:
    d = cluster.workdir / "clients"
    d.mkdir(exist_ok=True)
    return d
