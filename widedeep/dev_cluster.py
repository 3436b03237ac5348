"""A multi-node Ray cluster and an S3-compatible object store on one machine, for development and tests.

Why: the platform promises "from a laptop to a multi-node cluster, unchanged", and the cluster
paths (several nodes, work placed across them, a node lost, ``s3://`` storage) only show their
bugs on several nodes and a real object store. This starts what a user would run, by the commands
they would type: a head and worker nodes as separate ``ray start --block`` processes, each with its
own logical CPUs, a custom resource and a label naming the node (``widedeep.io/node``), and ``moto``'s
S3 server; clients reach them as on a real cluster, through ``RAY_ADDRESS`` and the standard AWS
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), which pyarrow, boto3 and Ray read.

Every process is tracked by its pid and stopped by pid (never by name: other Rays on the machine are
left alone); a node is "killed" as a machine is lost: its raylet and every process under it at once (SIGKILL).
``ray start --block`` keeps each node's processes as children of one process, so stopping that
process group stops the node.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from widedeep.errors import WidedeepError
from widedeep.ports import free_ports

NODE_LABEL = "widedeep.io/node"
S3_KEY = "testing"  # moto accepts any credentials; these are the dev cluster's


class DevClusterError(WidedeepError):
    """A dev cluster process did not start or stop; the message names it and its log."""


@dataclass(frozen=True)
class DevClusterConfig:
    """Sizes of the dev cluster. ``workdir`` holds the Ray temp dir, logs and ``state.json``."""

    workdir: Path
    workers: int = 2
    head_cpus: int = 2
    worker_cpus: int = 2
    object_store_mb: int = 200
    bucket: str = "widedeep"
    s3: bool = True
    start_timeout_s: float = 180.0


@dataclass
class Node:
    """One ``ray start --block`` process: ``pid`` is that process (its group is the node)."""

    name: str
    pid: int
    log: str
    resources: dict[str, float] = field(default_factory=dict)


_NODE_PORT_FLAGS = (
    "node-manager-port",
    "object-manager-port",
    "metrics-export-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
)


def _wait(check, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise DevClusterError(f"{what} did not come up in {timeout_s:.0f}s{f' ({log}):' if log else ''}\n{tail}")
        time.sleep(0.5)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class DevCluster:
    """Start with ``start()`` (or ``with DevCluster(cfg) as c``); ``env()`` is what clients need."""

    def __init__(self, cfg: DevClusterConfig) -> None:
        self.cfg = cfg
        self.workdir = cfg.workdir.resolve()
        self.nodes: dict[str, Node] = {}
        self.s3_pid: int | None = None
        self._ports_given: set[int] = set()
        self.gcs_port, self.dashboard_port, self.s3_port = self._new_ports(3)
        self.token = secrets.token_hex(32)
        self._worker_count = 0

    def _new_ports(self, n: int) -> list[int]:
        """Ports no process of this cluster was given yet: its nodes share this machine's address."""
        ports = free_ports(n, taken=self._ports_given)
        self._ports_given.update(ports)
        return ports

    def _node_port_flags(self) -> list[str]:
        """Flags giving a node its own ports for every component ``ray start`` would otherwise pick."""
        return [
            f"--{flag}={port}"
            for flag, port in zip(_NODE_PORT_FLAGS, self._new_ports(len(_NODE_PORT_FLAGS)), strict=True)
        ]

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DevCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.cfg.s3:
                self._start_s3()
            self._start_head()
            for _ in range(self.cfg.workers):  # one at a time: nodes starting together starve a small box
                self.start_worker()
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def stop(self) -> None:
        """Stop every node (workers first) and the object store, by process group of their pid."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            self._stop_group(self.nodes[name].pid)
        self.nodes.clear()
        if self.s3_pid is not None:
            self._stop_group(self.s3_pid)
            self.s3_pid = None
        state = self.workdir / "state.json"
        if state.exists():
            state.unlink()

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> tuple[int, Path]:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self._process_env(), start_new_session=True
            )
        return proc.pid, log

    def _process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update(self.env())
        env.pop("RAY_ADDRESS", None)
        # several nodes start at once on one (small) machine: give each node's agents time to come up
        # (the raylet's default wait for its dashboard agent is too short for a loaded 2-core box)
        env.setdefault("RAY_agent_register_timeout_ms", "180000")
        env.setdefault("RAY_raylet_start_wait_time_s", "120")
        return env

    def _start_s3(self) -> None:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)]
        self.s3_pid, log = self._spawn("s3", argv)
        _wait(lambda: _listening(self.s3_port), self.cfg.start_timeout_s, "the S3 server (moto)", log)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
            region_name="us-east-1",
        ).create_bucket(Bucket=self.cfg.bucket)

    def _ray_start(self, name: str, extra: list[str], cpus: int, resources: dict[str, float]) -> Node:
        argv = [
            "ray",
            "start",
            "--block",
            f"--num-cpus={cpus}",
            f"--object-store-memory={self.cfg.object_store_mb * 2**20}",
            f"--resources={json.dumps(resources)}",
            f"--labels={NODE_LABEL}={name}",
            f"--node-name={name}",
            "--disable-usage-stats",
            *self._node_port_flags(),
            *extra,
        ]
        pid, log = self._spawn(name, argv)
        node = Node(name, pid, str(log), {"CPU": cpus, **resources})
        self.nodes[name] = node
        return node

    def _start_head(self) -> None:
        temp = self.workdir / "ray"
        extra = [
            "--head",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={self._new_ports(1)[0]}",
            f"--temp-dir={temp}",
        ]
        for attempt in range(1, 4):  # see start_worker: a loaded machine can make a raylet miss its 30s
            node = self._ray_start("head", extra, self.cfg.head_cpus, {"wd_head": 1})
            try:
                self._wait_started(node)
                return
            except DevClusterError:
                self.nodes.pop("head", None)
                self._stop_group(node.pid)
                if attempt == 3:
                    raise

    def _wait_started(self, node: Node) -> None:
        """Until the node's ``ray start --block`` says it started (it prints that once its raylet
        registered with the cluster); a node whose process exits first did not start."""
        log = Path(node.log)

        def started() -> bool:
            if _exited(node.pid):
                raise DevClusterError(f"node {node.name} exited while starting ({log}):\n{log.read_text()[-3000:]}")
            return log.exists() and "Ray runtime started" in log.read_text()

        _wait(started, self.cfg.start_timeout_s, f"Ray node {node.name}", log)

    def add_worker(self, name: str | None = None) -> Node:
        """Start a worker node (also the replacement of a killed one); returns once it was launched."""
        self._worker_count += 1
        name = name or f"worker-{self._worker_count}"
        resources = {f"wd_{name.replace('-', '_')}": 1, "wd_worker": 100}  # this node; any worker node
        extra = [f"--address=127.0.0.1:{self.gcs_port}"]
        return self._ray_start(name, extra, self.cfg.worker_cpus, resources)

    def start_worker(self, name: str | None = None, attempts: int = 3) -> Node:
        """``add_worker`` and wait until it runs; a node that dies while starting (Ray gives a raylet
        30s to register, which a loaded machine can miss) is started again, up to ``attempts`` times."""
        for attempt in range(1, attempts + 1):
            node = self.add_worker(name)
            try:
                self._wait_started(node)
                return node
            except DevClusterError:
                self.nodes.pop(node.name, None)
                self._stop_group(node.pid)
                if attempt == attempts:
                    raise
                name = node.name
        raise AssertionError("unreachable")

    def kill_node(self, name: str) -> int:
        """Lose a node as a machine is lost: SIGKILL its raylet, then every other process of the node
        (its workers and agents, by the pids found under the node's ``ray start``), so nothing on it
        finishes a step or answers a request after that instant. Returns the raylet's pid."""
        node = self.nodes.pop(name)
        procs = list(_children(node.pid))
        raylet = next((p for p in procs if _is_raylet(p)), None)
        if raylet is None:
            raise DevClusterError(f"node {name} (pid {node.pid}) has no raylet process")
        os.kill(raylet, signal.SIGKILL)
        for pid in procs:  # Ray workers outlive their raylet until they notice it is gone
            if pid != raylet:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:  # `ray start --block` itself, and anything in its process group started since
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._stop_group(node.pid)  # reaps it
        return raylet

    @staticmethod
    def _stop_group(pid: int, grace_s: float = 10.0) -> None:
        """Stop the process ``pid`` started (a ``ray start --block`` or the S3 server) and its group.

        SIGTERM goes to ``pid`` alone first: ``ray start --block`` then stops the processes it
        started, in its own order, within seconds. Sent to the whole group at once, the same signal
        left the head's GCS, raylet and agents waiting on each other until they were killed. What
        of the group is left after ``grace_s`` gets SIGTERM, then SIGKILL; returns once it is gone.
        """
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for sig, wait_s in ((None, grace_s), (signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
            if sig is not None:
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                _reap(pid)
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    # -- what clients see ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The GCS address (``ray.init(address=...)``, ``RAY_ADDRESS`` for drivers)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        """The Jobs API / dashboard URL (``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """The environment a client of this cluster sets, as on a real one."""
        # Ray 2.60 turns token authentication on for clusters it starts: every node and client of
        # this one uses its own token (never the user's ~/.ray/auth_token)
        env = {
            "RAY_ADDRESS": self.address,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
        }
        if self.cfg.s3:
            env.update(
                AWS_ENDPOINT_URL=self.s3_endpoint,
                AWS_ACCESS_KEY_ID=S3_KEY,
                AWS_SECRET_ACCESS_KEY=S3_KEY,
                AWS_DEFAULT_REGION="us-east-1",
                AWS_REGION="us-east-1",
            )
        return env

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts>`` in the dev cluster's store."""
        return "/".join([f"s3://{self.cfg.bucket}", *parts])

    def wait_for_nodes(self, n: int, timeout_s: float | None = None) -> None:
        """Wait until ``n`` nodes are alive in the cluster (as the GCS sees them)."""
        _wait(lambda: self.alive_nodes() >= n, timeout_s or self.cfg.start_timeout_s, f"{n} Ray nodes")

    def alive_nodes(self) -> int:
        out = subprocess.run(
            ["ray", "list", "nodes", "--address", self.address, "--format", "json", "--filter", "state=ALIVE"],
            capture_output=True,
            text=True,
            env=self._process_env(),
            timeout=60,
        )
        if out.returncode != 0:
            return 0
        try:
            return len(json.loads(out.stdout))
        except json.JSONDecodeError:
            return 0

    def _write_state(self) -> None:
        state = {
            "nodes": {n: {"pid": v.pid, "log": v.log, "resources": v.resources} for n, v in self.nodes.items()},
            "s3_pid": self.s3_pid,
            "env": self.env(),
            "dashboard": self.dashboard,
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))


def stop_from_state(workdir: Path) -> list[int]:
    """Stop the dev cluster recorded in ``workdir/state.json`` (``widedeep dev-cluster down``)."""
    path = workdir / "state.json"
    if not path.exists():
        raise DevClusterError(f"{path}: no dev cluster recorded there")
    state = json.loads(path.read_text())
    pids = [v["pid"] for n, v in sorted(state["nodes"].items(), key=lambda kv: kv[0] == "head")]
    if state.get("s3_pid"):
        pids.append(state["s3_pid"])
    for pid in pids:
        DevCluster._stop_group(pid)
    path.unlink()
    return pids


def _children(pid: int) -> Iterator[int]:
    import psutil

    try:
        for c in psutil.Process(pid).children(recursive=True):
            yield c.pid
    except psutil.NoSuchProcess:
        return


def _is_raylet(pid: int) -> bool:
    import psutil

    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return False
    return bool(cmd) and Path(cmd[0]).name == "raylet"


def _exited(pid: int) -> bool:
    """A child process of ours that has ended (reaped here)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
