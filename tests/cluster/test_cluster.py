"""The platform on a multi-node Ray cluster with an S3 store, end to end, and two faults.

On the dev cluster (``tests/cluster/conftest.py``: a head and 2 worker nodes, each its own ``ray
start``, and moto's S3 server), every path an ``s3://`` URI and credentials passed as users pass
them (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...):

raw data uploaded -> ``widedeep prepare`` (Ray Data reads and writes the store) -> the ranker
trained by 2 workers on different nodes (``placement_strategy: SPREAD``; checkpoints in the store)
and the retriever -> ``widedeep export`` of two bundles to the store -> ``serve deploy`` of the
chain pipeline (Retriever on the head, a Ranker replica on each worker node) loading the bundle from
the store -> a live swap to the other bundle under load.

Faults, by process id (``DevCluster.kill_node`` SIGKILLs the node's raylet; its workers die with
it): (a) a worker node killed mid-training: the run resumes from its last checkpoint on the node
that remains and ends with the same model as the unbroken run; (b) the node of a Ranker replica
killed under steady load: the failed requests are counted and the time until requests succeed
again is measured; ``/healthz`` answers throughout, no request outlives the proxy timeout, and the
replica comes back on a replacement node. The figures are printed (``-rA`` shows them).

Sizes are tiny (6,000 impressions, 80 apps, 2 epochs): CI runs this on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cluster.ops import (
    Load,
    Outcome,
    node_names,
    ray_list,
    replicas,
    run_client,
    run_clients,
    s3_client,
    s3_json,
    s3_keys,
    serve_apps,
    widedeep,
)
from tests.conftest import ROOT
from tests.support import wait_until
from widedeep.dev_cluster import DevCluster
from widedeep.ports import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RANKER_JOB = str(ROOT / "platform" / "jobs" / "appstore-ranker.yaml")
RETRIEVER_JOB = str(ROOT / "platform" / "jobs" / "appstore-retriever.yaml")
SPEC = str(ROOT / "platform" / "specs" / "appstore.yaml")
TRAIN_WORKER = "RayTrainWorker"
PROXY_TIMEOUT_S = 10.0  # http_options.request_timeout_s of the deployed config
SPREAD = ["placement_strategy=SPREAD", 'label_selector={"widedeep.io/node": "!head"}']


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def ranker_overrides(c: DevCluster, run_name: str) -> list[str]:
    """The ranker's job on the cluster: 2 workers on different worker nodes, data and checkpoints in
    S3, the train split cached in memory (a mid-epoch resume lands on exactly the batches it left)."""
    return [
        f"data={c.uri('prepared')}",
        f"storage_path={c.uri('runs')}",
        f"run_name={run_name}",
        "num_workers=2",
        *SPREAD,
        "batch_size=64",
        "epochs=2",
        "early_stopping.enabled=false",
        "checkpoint_every_steps=10",
        "log_every_steps=10",
        "model.hidden=[16,8]",
        "data_cache=memory",
        "max_failures=2",
    ]


@dataclass(frozen=True)
class Stored:
    """What the pipeline left in the store, and where the ranker's workers ran."""

    ranker: dict[str, Any]  # the ranker run's metrics JSON
    ranker_nodes: list[str]  # node name of each of its Ray Train workers
    bundles: tuple[str, str]  # s3:// URIs of the bundles v1 (ranker epoch 1) and v2 (epoch 2)


def _new_train_workers(c: DevCluster, before: set[str]) -> list[dict[str, Any]]:
    return [a for a in ray_list(c, "actors", class_name=TRAIN_WORKER) if a["actor_id"] not in before]


@pytest.fixture(scope="module")
def stored(cluster: DevCluster, cluster_env: dict[str, str], client_logs: Path, tmp_path_factory) -> Stored:
    c, env, logs = cluster, cluster_env, client_logs
    t0 = time.monotonic()
    raw = tmp_path_factory.mktemp("raw")
    run_client(
        widedeep("generate", "--out", str(raw), "--rows", "6000", "--users", "400", "--items", "80"),
        env,
        logs / "generate.log",
    )
    s3 = s3_client(c)
    for f in sorted(raw.iterdir()):  # the raw logs reach the store as a user uploads them
        s3.upload_file(str(f), c.cfg.bucket, f"raw/{f.name}")
    run_client(
        widedeep(
            "prepare",
            "--spec",
            SPEC,
            "--input",
            c.uri("raw"),
            "--out",
            c.uri("prepared"),
            "--split",
            "user-time:user_id:timestamp:0.8,0.1,0.1",
        ),
        env,
        logs / "prepare.log",
    )
    # the ranker and the retriever train at the same time, as two jobs of the cluster
    before = {a["actor_id"] for a in ray_list(c, "actors", class_name=TRAIN_WORKER)}
    ranker_json, retriever_json = logs / "ranker.json", logs / "retriever.json"
    retriever = [
        f"data={c.uri('prepared')}",
        f"storage_path={c.uri('runs')}",
        "run_name=retriever",
        "num_workers=1",
        *SPREAD,
        "epochs=2",
        "batch_size=256",
    ]
    run_clients(
        [
            (
                widedeep(
                    "train",
                    "--config",
                    RANKER_JOB,
                    *_sets(ranker_overrides(c, "ranker")),
                    "--metrics-out",
                    f"{ranker_json}",
                ),
                logs / "train-ranker.log",
            ),
            (
                widedeep("train", "--config", RETRIEVER_JOB, *_sets(retriever), "--metrics-out", f"{retriever_json}"),
                logs / "train-retriever.log",
            ),
        ],
        env,
    )
    # the Ray Train workers of each job (driver): the ranker's job is the one with 2 workers
    names = node_names(c)
    jobs: dict[str, list[str]] = {}
    for a in _new_train_workers(c, before):
        jobs.setdefault(a["job_id"], []).append(names[a["node_id"]])
    assert sorted(len(v) for v in jobs.values()) == [1, 2], jobs
    ranker_nodes = sorted(next(v for v in jobs.values() if len(v) == 2))
    ranker = json.loads(ranker_json.read_text())
    retriever_ckpt = json.loads(retriever_json.read_text())["checkpoint"]
    bundles = (c.uri("bundles", "v1"), c.uri("bundles", "v2"))
    run_clients(
        [
            (
                widedeep("export", "--ranker", ckpt, "--retriever", retriever_ckpt, "--out", out, "--version", version),
                logs / f"export-{version}.log",
            )
            for version, ckpt, out in (
                ("v1", c.uri("runs", "ranker", "epoch=0001"), bundles[0]),
                ("v2", c.uri("runs", "ranker", "epoch=0002"), bundles[1]),
            )
        ],
        env,
    )
    print(f"\n[cluster] generate, upload, prepare, train ranker + retriever, export x2: {time.monotonic() - t0:.1f}s")
    return Stored(ranker, ranker_nodes, bundles)


def test_prepare_train_export_all_in_the_object_store(cluster: DevCluster, stored: Stored):
    c = cluster
    prepared = s3_keys(c, "prepared/")
    for split in ("train", "valid", "test"):
        assert any(k.startswith(f"prepared/{split}/") and k.endswith(".parquet") for k in prepared), (split, prepared)
    assert "prepared/feature_space.json" in prepared
    # 2 Ray Train workers, on the two worker nodes (not both on one, not on the head)
    assert len(stored.ranker_nodes) == 2 and len(set(stored.ranker_nodes)) == 2, stored.ranker_nodes
    assert all(n.startswith("worker-") for n in stored.ranker_nodes), stored.ranker_nodes
    # checkpoints in the store, every one complete (checkpoint.json is written last)
    r = stored.ranker
    assert r["storage_path"] == c.uri("runs") and r["checkpoint"].startswith(c.uri("runs", "ranker")), r["checkpoint"]
    ckpts = {k.split("/")[2] for k in s3_keys(c, "runs/ranker/") if k.endswith("/checkpoint.json")}
    assert {"epoch=0001", "epoch=0002", "step=00000010"} <= ckpts, ckpts
    assert r["epochs_completed"] == 2 and 0.55 < r["auc"] <= 1.0, r
    # the two bundles: in the store, with their versions
    for uri, version in zip(stored.bundles, ("v1", "v2"), strict=True):
        key = uri.removeprefix(f"s3://{c.cfg.bucket}/")
        assert s3_json(c, f"{key}/manifest.json")["model_version"] == version


# -- serving: the chain pipeline from the store, a live swap, a node killed under load ----------


def _serve_config(bundle: str, port: int) -> dict[str, Any]:
    """platform/serve.yaml, placed on this cluster: one proxy (every node here shares 127.0.0.1),
    Ingress and Retriever on the head, a Ranker replica on each worker node; fixed replica counts."""
    cfg = yaml.safe_load((ROOT / "platform" / "serve.yaml").read_text())
    cfg["proxy_location"] = "HeadOnly"
    cfg["http_options"] = {"host": "127.0.0.1", "port": port, "request_timeout_s": PROXY_TIMEOUT_S}
    app = cfg["applications"][0]
    app["args"].update(bundle=bundle, candidates=50, default_k=5, max_k=20)
    deployments = {d["name"]: d for d in app["deployments"]}
    for name, d in deployments.items():  # fixed sizes: autoscaling pinned (min = max)
        n = 2 if name == "Ranker" else 1
        d["autoscaling_config"].update(min_replicas=n, max_replicas=n)
    head = {"num_cpus": 0, "resources": {"wd_head": 0.01}}
    deployments["Ingress"]["ray_actor_options"] = head
    deployments["Retriever"].update(ray_actor_options=head, user_config={"bundle": bundle})
    deployments["Ranker"].update(
        max_replicas_per_node=1,
        ray_actor_options={"num_cpus": 0, "resources": {"wd_worker": 1}},
        user_config={"bundle": bundle},
    )
    return cfg


def _deploy(c: DevCluster, env: dict[str, str], cfg: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    run_client(["serve", "deploy", str(path), "--address", c.dashboard], env, path.with_suffix(".log"), 120)


def _running(c: DevCluster) -> bool:
    app = (serve_apps(c).get("applications") or {}).get("recommender") or {}
    return app.get("status") == "RUNNING"


def _two_rankers(c: DevCluster) -> bool:
    running = [r for r in replicas(c, "Ranker") if r["state"] == "RUNNING"]
    return len(running) == 2 and len({r.get("node_id") for r in running}) == 2


@dataclass(frozen=True)
class Serving:
    base: str
    config: dict[str, Any]
    config_path: Path


@pytest.fixture(scope="module")
def serving(cluster: DevCluster, cluster_env: dict[str, str], client_logs: Path, stored: Stored):
    c = cluster
    port = free_port()
    cfg = _serve_config(stored.bundles[0], port)
    path = client_logs / "serve.yaml"
    t0 = time.monotonic()
    _deploy(c, cluster_env, cfg, path)
    wait_until(lambda: _running(c), 300, lambda: f"the recommender app RUNNING: {serve_apps(c)}", interval_s=1.0)
    wait_until(lambda: _two_rankers(c), 120, lambda: f"2 running Ranker replicas: {replicas(c, 'Ranker')}")
    print(f"\n[cluster] serve deploy (chain, bundle from S3) running in {time.monotonic() - t0:.1f}s")
    yield Serving(f"http://127.0.0.1:{port}", cfg, path)
    subprocess.run(
        ["serve", "shutdown", "--address", c.dashboard, "--yes"], env=cluster_env, capture_output=True, timeout=120
    )


def _healthz(base: str, timeout_s: float = 15.0) -> tuple[int, dict[str, Any], float]:
    t0 = time.monotonic()
    r = httpx.get(f"{base}/healthz", timeout=timeout_s)
    return r.status_code, r.json(), time.monotonic() - t0


REQUEST = {"user": {"user_id": 7}, "context": {"hour": 20, "position": 1}, "k": 5}


def test_serve_chain_loads_bundles_from_s3_and_swaps_them_live(
    cluster: DevCluster, cluster_env: dict[str, str], serving: Serving, stored: Stored
):
    c, base = cluster, serving.base
    names = node_names(c)
    ranker_nodes = sorted(names[r["node_id"]] for r in replicas(c, "Ranker") if r["state"] == "RUNNING")
    retriever_nodes = [names[r["node_id"]] for r in replicas(c, "Retriever") if r["state"] == "RUNNING"]
    # Retriever and Ranker replicas on different nodes: the Retriever on the head, a Ranker on each worker
    assert retriever_nodes == ["head"], retriever_nodes
    assert len(ranker_nodes) == 2 and len(set(ranker_nodes)) == 2, ranker_nodes
    assert all(n.startswith("worker-") for n in ranker_nodes), ranker_nodes
    status, health, _ = _healthz(base)
    assert status == 200 and health["versions"] == {"Retriever": "v1", "Ranker": "v1"}, health
    rec = httpx.post(f"{base}/v1/recommend", json=REQUEST, timeout=30).json()
    assert rec["model_version"] == "v1" and len(rec["items"]) == 5, rec
    items = [i["item_id"] for i in rec["items"]]
    rank = {"user": REQUEST["user"], "context": REQUEST["context"], "items": items}
    v1 = httpx.post(f"{base}/v1/rank", json=rank, timeout=30).json()

    load = Load(f"{base}/v1/recommend", REQUEST, clients=2).start()
    time.sleep(2.0)
    cfg = json.loads(json.dumps(serving.config))
    for d in cfg["applications"][0]["deployments"]:
        if d["name"] in ("Retriever", "Ranker"):
            d["user_config"] = {"bundle": stored.bundles[1]}
    t0 = time.monotonic()
    _deploy(c, cluster_env, cfg, serving.config_path.with_name("serve-v2.yaml"))
    wait_until(
        lambda: _healthz(base)[1].get("versions") == {"Retriever": "v2", "Ranker": "v2"},
        180,
        lambda: f"both deployments on v2: {_healthz(base)[1]}",
        interval_s=0.5,
    )
    swap_s = time.monotonic() - t0
    time.sleep(2.0)
    outcomes = load.stop()
    failed = [o for o in outcomes if o.status != 200]
    print(
        f"\n[cluster] live swap v1 -> v2 (serve deploy of user_config.bundle, S3): {swap_s:.1f}s, "
        f"{len(outcomes)} requests under load, {len(failed)} failed"
    )
    assert not failed, failed[:5]
    v2 = httpx.post(f"{base}/v1/rank", json=rank, timeout=30).json()
    assert v1["model_version"] == "v1" and v2["model_version"] == "v2"
    assert [i["item_id"] for i in v2["items"]] == items
    assert [i["score"] for i in v1["items"]] != [i["score"] for i in v2["items"]]  # another model scores


@dataclass
class HealthPoller:
    """GET /healthz every ``interval_s`` in a thread: (time, status or None, seconds it took)."""

    base: str
    interval_s: float = 0.5
    seen: list[tuple[float, int | None, float]] | None = None

    def __post_init__(self) -> None:
        self.seen = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> HealthPoller:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, int | None, float]]:
        self._stop.set()
        self._thread.join(30)
        return list(self.seen or [])

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                status: int | None = httpx.get(f"{self.base}/healthz", timeout=20).status_code
            except httpx.HTTPError:
                status = None
            assert self.seen is not None
            self.seen.append((t0, status, time.monotonic() - t0))
            self._stop.wait(self.interval_s)


def _failure_figures(outcomes: list[Outcome], since: float) -> tuple[list[Outcome], list[Outcome], dict[str, int]]:
    after = [o for o in outcomes if o.end >= since]
    failed = [o for o in after if o.status != 200]
    statuses: dict[str, int] = {}
    for o in failed:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    return after, failed, statuses


def test_node_of_a_ranker_replica_killed_under_load(cluster: DevCluster, cluster_env: dict[str, str], serving: Serving):
    c, base = cluster, serving.base
    names = node_names(c)
    victim_id = sorted((r["node_id"] for r in replicas(c, "Ranker") if r["state"] == "RUNNING"), key=names.get)[0]
    victim = names[victim_id]
    load = Load(f"{base}/v1/recommend", REQUEST, clients=2).start()
    health = HealthPoller(base).start()
    try:
        time.sleep(3.0)  # steady load first
        t_kill = time.monotonic()
        raylet = c.kill_node(victim)
        killed_s = time.monotonic() - t_kill

        def dropped() -> bool:  # Serve's controller no longer counts the replica on the lost node as running
            return not [r for r in replicas(c, "Ranker") if r.get("node_id") == victim_id and r["state"] == "RUNNING"]

        wait_until(dropped, 120, f"Serve to drop the Ranker replica of node {victim}", interval_s=0.2)
        noticed_s = time.monotonic() - t_kill

        def recovered() -> bool:
            after = [o for o in list(load.outcomes) if o.start > t_kill]
            return len(after) >= 20 and all(o.status == 200 for o in after[-20:])

        wait_until(recovered, 120, "20 successful requests in a row after the kill", interval_s=0.2)
        t_recovered = time.monotonic()
        time.sleep(2.0)
        # phase 1: the surviving Ranker replica alone (no replacement node yet)
        alone = sorted(list(load.outcomes), key=lambda o: o.start)
        after, failed, statuses = _failure_figures(alone, t_kill)
        last_failure = max((o.end for o in failed), default=t_kill)
        longest = max(o.end - o.start for o in alone)
        polls = list(health.seen or [])
        health_after = [p for p in polls if p[0] >= t_kill]
        print(
            f"\n[cluster] fault (b) node {victim} (a Ranker replica) killed under load (raylet pid {raylet}, "
            f"the node's processes SIGKILLed and reaped in {killed_s:.1f}s; Serve dropped the replica {noticed_s:.1f}s "
            "after the kill): "
            f"{len(failed)} of {len(after)} requests failed after the kill (status counts {statuses}), the last "
            f"one ended {last_failure - t_kill:.2f}s after the kill (20 successes in a row by "
            f"{t_recovered - t_kill:.1f}s); longest request {longest:.2f}s (proxy timeout {PROXY_TIMEOUT_S:g}s); "
            f"/healthz answered {sum(p[1] is not None for p in health_after)}/{len(health_after)} polls "
            f"(statuses {sorted({p[1] for p in health_after}, key=str)}, "
            f"slowest {max((p[2] for p in health_after), default=0.0):.2f}s)"
        )
        # once failing stops, every request succeeds on the surviving replica
        assert all(o.status == 200 for o in alone if o.start > last_failure)
        # a client error carries a message, never a traceback
        assert not [o for o in failed if "Traceback" in o.error], failed[:3]
        # no request outlives the proxy timeout (plus the proxy's own reply time)
        assert longest <= PROXY_TIMEOUT_S + 5.0, longest
        # /healthz always answers (200, or 503 while a deployment is unreachable), and quickly
        assert health_after and all(p[1] in (200, 503) for p in health_after), health_after
        assert max(p[2] for p in health_after) <= 10.0

    finally:
        load.stop()
        health.stop()
    # phase 2: the replica comes back: a replacement node joins (no load meanwhile: a new node's agents
    # must start on a machine that the load would keep busy), Serve places the missing replica there
    t_node = time.monotonic()
    node = c.start_worker()
    c.wait_for_nodes(3)
    wait_until(
        lambda: _two_rankers(c), 240, lambda: f"2 running Ranker replicas: {replicas(c, 'Ranker')}", interval_s=1.0
    )
    back_s = time.monotonic() - t_kill
    with httpx.Client(timeout=PROXY_TIMEOUT_S + 5) as client:
        codes = [client.post(f"{base}/v1/recommend", json=REQUEST).status_code for _ in range(40)]
    print(
        f"[cluster] fault (b) replacement node {node.name} started {t_node - t_kill:.1f}s after the kill; "
        f"2 Ranker replicas running again {back_s:.1f}s after the kill; then 40 requests: {codes.count(200)} succeeded"
    )
    assert codes == [200] * 40, codes
    status, body, _ = _healthz(base)
    assert status == 200 and body["versions"]["Ranker"] == body["model_version"], body
    ranker_nodes = {node_names(c)[r["node_id"]] for r in replicas(c, "Ranker") if r["state"] == "RUNNING"}
    assert victim not in ranker_nodes and node.name in ranker_nodes, ranker_nodes


# -- fault (a): a worker node killed during training ---------------------------------------------


def _checkpoints(c: DevCluster, run: str) -> set[str]:
    return {k.split("/")[2] for k in s3_keys(c, f"runs/{run}/") if k.endswith("/checkpoint.json")}


def test_worker_node_killed_during_training_resumes_from_its_last_checkpoint(
    cluster: DevCluster, cluster_env: dict[str, str], client_logs: Path, stored: Stored
):
    c, env = cluster, cluster_env
    while len([n for n in c.nodes if n != "head"]) < 2:  # 2 worker nodes, whatever ran before
        c.start_worker()
    c.wait_for_nodes(3)
    run, out, log = "ranker-nodekill", client_logs / "nodekill.json", client_logs / "train-nodekill.log"
    before = {a["actor_id"] for a in ray_list(c, "actors", class_name=TRAIN_WORKER)}
    argv = [sys.executable, "-m", "tests.cluster.train_driver", "0.4", "--config", RANKER_JOB]
    argv += [*_sets(ranker_overrides(c, run)), "--metrics-out", str(out)]
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    try:
        # the slowed first attempt has committed a checkpoint (a second one is being written, so every
        # rank passed the first one's report): kill a node that holds one of its workers
        wait_until(lambda: len(_checkpoints(c, run)) >= 2, 240, f"2 checkpoints of run {run} ({log})", interval_s=0.5)
        names = node_names(c)
        first = _new_train_workers(c, before)
        placed = sorted(names[a["node_id"]] for a in first if a["state"] == "ALIVE")
        assert len(placed) == 2 and len(set(placed)) == 2, placed
        victim = placed[-1]
        at_kill = _checkpoints(c, run)
        t_kill = time.monotonic()
        raylet = c.kill_node(victim)
        t_kill_wall = time.time()
        first_ids = {a["actor_id"] for a in first}

        def restarted() -> list[dict[str, Any]]:
            new = [a for a in _new_train_workers(c, before) if a["actor_id"] not in first_ids]
            return [a for a in new if a["state"] == "ALIVE"]

        wait_until(restarted, 300, "the run's worker group restarted after the kill", interval_s=0.5)
        restarted_s = time.monotonic() - t_kill
        assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall_after_kill = time.monotonic() - t_kill
    faulted = json.loads(out.read_text())
    state = s3_json(c, f"runs/{run}/epoch=0002/checkpoint.json")["train_state"]
    resumes = state["resumes"]
    # resumed once, from a checkpoint committed before the kill (not from scratch)
    assert len(resumes) == 1, resumes
    step = resumes[0]["global_step"]
    steps_at_kill = sorted(s3_json(c, f"runs/{run}/{n}/checkpoint.json")["train_state"]["global_step"] for n in at_kill)
    # at least the newest checkpoint every rank had reported (the newest listed may still have been in flight)
    assert steps_at_kill[-2] <= step < faulted["global_step"], (resumes, sorted(at_kill))
    # the first checkpoint the resumed attempt committed (a step past the one it resumed from)
    stamps = {
        o["Key"].split("/")[2]: o["LastModified"].timestamp()
        for o in s3_client(c).list_objects_v2(Bucket=c.cfg.bucket, Prefix=f"runs/{run}/")["Contents"]
        if o["Key"].endswith("/checkpoint.json")
    }
    after_resume = sorted(
        (t, n)
        for n, t in stamps.items()
        if s3_json(c, f"runs/{run}/{n}/checkpoint.json")["train_state"]["global_step"] > step
    )
    first_new_s = after_resume[0][0] - t_kill_wall
    # the restarted workers ran on what remained (the killed node's name never again)
    names = node_names(c)
    restarted = [a for a in _new_train_workers(c, before) if a["actor_id"] not in {b["actor_id"] for b in first}]
    assert restarted and all(names[a["node_id"]] != victim for a in restarted), restarted
    # the same model as the unbroken run: same steps, same validation metrics
    base = stored.ranker
    assert faulted["global_step"] == base["global_step"]
    assert faulted["auc"] == pytest.approx(base["auc"], abs=1e-3)
    assert faulted["logloss"] == pytest.approx(base["logloss"], abs=1e-3)
    print(
        f"\n[cluster] fault (a) worker node {victim} killed (raylet pid {raylet}) during training: "
        f"checkpoints listed at the kill {sorted(at_kill)}; worker group restarted on what remained "
        f"{restarted_s:.1f}s after the kill, resumed from global step {step}, its first checkpoint "
        f"({after_resume[0][1]}) {first_new_s:.1f}s after the kill, run finished {wall_after_kill:.1f}s after it; "
        f"final valid auc {faulted['auc']:.5f} vs unbroken {base['auc']:.5f} "
        f"(logloss {faulted['logloss']:.5f} vs {base['logloss']:.5f})"
    )
