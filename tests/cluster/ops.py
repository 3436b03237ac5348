"""What the cluster tests do to the dev cluster from outside, as its users and operators would:
run clients with the cluster's environment, ask Ray's state API and Serve's REST API where things
run, read the S3 store with boto3, and keep a steady HTTP load on Serve while recording every
request (start, end, outcome) so a fault's cost can be counted afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from widedeep.dev_cluster import DevCluster


def widedeep(*args: str) -> list[str]:
    """The argv of the ``widedeep`` command in this interpreter."""
    return [sys.executable, "-m", "widedeep", *args]


def run_client(argv: list[str], env: dict[str, str], log: Path, timeout_s: float = 300.0) -> str:
    """Run a client of the cluster to completion, its output in ``log`` (returned); a failure shows the tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.run(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s)
    text = log.read_text()
    assert proc.returncode == 0, f"`{' '.join(argv)}` exited with {proc.returncode} ({log}):\n{text[-4000:]}"
    return text


def run_clients(runs: list[tuple[list[str], Path]], env: dict[str, str], timeout_s: float = 300.0) -> None:
    """``run_client`` for several clients at once (independent jobs share the cluster, as users' do)."""
    procs = []
    for argv, log in runs:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            procs.append(subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    try:
        for proc, (argv, log) in zip(procs, runs, strict=True):
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert rc == 0, f"`{' '.join(argv)}` exited with {rc} ({log}):\n{log.read_text()[-4000:]}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def ray_list(cluster: DevCluster, kind: str, **filters: str) -> list[dict[str, Any]]:
    """Ray's state API (what ``ray list KIND`` reads; dead actors and nodes included), over HTTP on
    the dashboard with the cluster's token; ``filters`` are ``key=value`` equalities."""
    import httpx

    params: list[tuple[str, str | int]] = [("limit", 10000), ("detail", "false")]
    for key, value in filters.items():
        params += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
    r = httpx.get(
        f"{cluster.dashboard}/api/v0/{kind}",
        params=params,
        headers={"Authorization": f"Bearer {cluster.token}"},
        timeout=60,
    )
    r.raise_for_status()
    return r.json()["data"]["result"]["result"]


def node_names(cluster: DevCluster) -> dict[str, str]:
    """node id -> the node's name (``head``, ``worker-1``, ...), dead nodes included."""
    return {n["node_id"]: n["node_name"] for n in ray_list(cluster, "nodes")}


def s3_client(cluster: DevCluster) -> Any:
    import boto3

    env = cluster.env()
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def s3_keys(cluster: DevCluster, prefix: str) -> list[str]:
    """Every key under ``prefix`` in the cluster's bucket."""
    s3 = s3_client(cluster)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cluster.cfg.bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def s3_json(cluster: DevCluster, key: str) -> Any:
    body = s3_client(cluster).get_object(Bucket=cluster.cfg.bucket, Key=key)["Body"].read()
    return json.loads(body)


def serve_apps(cluster: DevCluster) -> dict[str, Any]:
    """Serve's REST API on the dashboard (what ``serve status`` reads), with the cluster's token."""
    import httpx

    r = httpx.get(
        f"{cluster.dashboard}/api/serve/applications/",
        headers={"Authorization": f"Bearer {cluster.token}"},
        timeout=30,
    )
    r.raise_for_status()
    return r.json()


def replicas(cluster: DevCluster, deployment: str, app: str = "recommender") -> list[dict[str, Any]]:
    """The replicas of ``deployment`` (``state``, ``node_id``, ``pid``, ...); none before deployment."""
    apps = serve_apps(cluster).get("applications") or {}
    deployments = (apps.get(app) or {}).get("deployments") or {}
    return list((deployments.get(deployment) or {}).get("replicas") or [])


@dataclass
class Outcome:
    start: float  # time.monotonic()
    end: float
    status: int | None  # None: no HTTP answer (connection error, client timeout)
    error: str = ""


@dataclass
class Load:
    """``clients`` threads POSTing ``body`` to ``url`` back to back until ``stop()``.

    ``client_timeout_s`` is longer than the proxy's ``request_timeout_s``: a request that the proxy
    lets hang shows as a duration above the proxy timeout (or a client timeout), never as silence."""

    url: str
    body: dict[str, Any]
    clients: int = 2
    client_timeout_s: float = 30.0
    pause_s: float = 0.02  # between a client's requests: steady, without taking every core of a small box
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for t in self._threads:
            t.join(self.client_timeout_s + 5)
        with self._lock:
            return sorted(self.outcomes, key=lambda o: o.start)

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.client_timeout_s) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = client.post(self.url, json=self.body)
                    o = Outcome(t0, time.monotonic(), r.status_code, "" if r.status_code == 200 else r.text[:300])
                except httpx.HTTPError as e:
                    o = Outcome(t0, time.monotonic(), None, f"{type(e).__name__}: {e}"[:300])
                with self._lock:
                    self.outcomes.append(o)
                self._stop.wait(self.pause_s)
