"""The notebooks against the dev cluster, as a user of a cluster runs them.

The kernels get what a cluster's user sets: ``RAY_ADDRESS`` = the head's dashboard (every job goes
through the Ray Jobs API), the cluster's auth token, the S3 store's endpoint and credentials, and
``WIDEDEEP_NOTEBOOK_WORKDIR`` = ``s3://widedeep/nb`` (data, runs, metrics and the bundle in the
store; notebook 04 uploads the committed Adult copy there first). Notebook 03 deploys the Serve app
through the dashboard's Serve REST API and queries the head's proxy.

Checked: every notebook's jobs ran on the cluster (the Jobs API lists them, succeeded, with ``s3://``
paths); what each plot drew (the probe cell of ``tests/notebook_checks.py``) matches the results
read back from the store with boto3; notebook 03's app ran on the cluster's nodes while it was
queried (Serve's REST API, seen from inside the notebook), served the bundle from the store, and was
removed at the end. Same small sizes as the local run (``WIDEDEEP_NOTEBOOK_SMALL=1``).

Run here: 01 (generate and prepare jobs writing the store) and 03 (train and export jobs, then the
Serve deploy through the dashboard), which together take every path a cluster adds to a notebook:
jobs through the Jobs API with ``s3://`` paths, results read back from the store, the app on the
cluster's nodes. 02 and 04 run the same kinds of jobs (train, evaluate, prepare) with the same
``s3://`` handling (``widedeep.jobs``, ``widedeep.paths``) and are checked in the local run
(``tests/test_notebooks.py``); on the cluster they added ~3 minutes to the test command (CI's
budget is 25), and ran there before: ``pytest -m cluster`` on this file with ``ON_CLUSTER``
extended runs them.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests import notebook_checks as checks
from tests.cluster.ops import ray_list, s3_json, s3_keys, serve_apps
from tests.conftest import ADULT, ROOT
from widedeep.dev_cluster import DevCluster
from widedeep.ports import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PREFIX = "nb"
ROWS, REQUESTS = 12_000, 60  # the notebooks' small sizes
# the widedeep commands each notebook runs as cluster jobs
JOBS = {
    "01_prepare": ["generate", "prepare"],
    "02_train_evaluate": ["evaluate", "evaluate", "evaluate", "train", "train", "train"],
    "03_serve_query": ["export", "train", "train"],
    "04_census": ["evaluate", "prepare", "train"],
}
ON_CLUSTER = ["01_prepare", "03_serve_query"]  # the module docstring says why not 02 and 04
# notebook 03's view of its app on the cluster, printed by the probe cell before the app is removed
SERVE_PROBE = {
    "app": "__import__('widedeep.serve.deploy', fromlist=['_']).app_details(cluster_address())",
    "health": "client.get('/healthz').json()",
}


@pytest.fixture(scope="module")
def nb_env(cluster: DevCluster, cluster_env: dict[str, str]) -> dict[str, str]:
    env = dict(cluster_env)
    env.update(
        RAY_ADDRESS=cluster.dashboard,  # the Jobs API, as `ray job submit --address` takes it
        WIDEDEEP_NOTEBOOK_SMALL="1",
        WIDEDEEP_NOTEBOOK_WORKDIR=cluster.uri(PREFIX),
        WIDEDEEP_REPO=str(ROOT),
        WIDEDEEP_NOTEBOOK_PORT=str(free_port()),
        WIDEDEEP_ADULT=str(ADULT),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    env.pop("WIDEDEEP_SERVE_URL", None)
    return env


def _jobs(c: DevCluster) -> dict[str, dict[str, Any]]:
    """The cluster's jobs (Jobs API on the dashboard) by submission id."""
    r = httpx.get(f"{c.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {c.token}"}, timeout=30)
    r.raise_for_status()
    return {j["submission_id"]: j for j in r.json() if j.get("submission_id")}


def _alive_node_ids(c: DevCluster) -> set[str]:
    return {n["node_id"] for n in ray_list(c, "nodes") if n["state"] == "ALIVE"}


@pytest.mark.parametrize("name", ON_CLUSTER)
def test_notebook_runs_its_jobs_on_the_cluster_with_data_in_the_store(
    name: str, cluster: DevCluster, nb_env: dict[str, str]
):
    c = cluster
    before = set(_jobs(c))
    t0 = time.monotonic()
    extra = SERVE_PROBE if name == "03_serve_query" else None
    nb, probe = checks.execute(name, env=nb_env, timeout_s=900, extra=extra)
    wall = time.monotonic() - t0
    new = [j for sid, j in _jobs(c).items() if sid not in before]
    took = ", ".join(
        f"{j['entrypoint'].split()[3]} {(j['end_time'] - j['start_time']) / 1e3:.0f}s"
        for j in sorted(new, key=lambda j: j["start_time"])
        if j.get("end_time")
    )
    print(
        f"\n[cluster] notebook {name} against the cluster: {wall:.1f}s; {len(new)} job(s) through the Jobs API ({took})"
    )

    # its jobs ran on the cluster, submitted through the Jobs API, reading and writing the store
    commands = sorted(j["entrypoint"].split()[3] for j in new)  # "python -m widedeep <command> ..."
    assert commands == JOBS[name], [j["entrypoint"] for j in new]
    assert all(j["status"] == "SUCCEEDED" for j in new), [(j["entrypoint"], j["status"]) for j in new]
    assert all(c.uri(PREFIX) in j["entrypoint"] for j in new), [j["entrypoint"] for j in new]
    assert "cluster: " + c.dashboard in checks.printed(nb)

    def read(rel: str) -> Any:
        return s3_json(c, f"{PREFIX}/{rel}")

    if name == "01_prepare":
        checks.check_prepared(read, probe, ROWS)
        assert any(k.startswith(f"{PREFIX}/appstore-raw/part-") for k in s3_keys(c, f"{PREFIX}/appstore-raw/"))
    if name == "02_train_evaluate":
        checks.check_learning_curves(read, probe)
        run = read("nb-wide_deep.json")
        assert run["checkpoint"].startswith(c.uri(PREFIX, "runs", "nb-wide_deep")), run["checkpoint"]
    if name == "03_serve_query":
        _check_served_by_the_cluster(c, probe, nb_env)
    if name == "04_census":
        assert f"{PREFIX}/adult-raw/{ADULT.name}" in s3_keys(c, f"{PREFIX}/adult-raw/")  # the uploaded input
        checks.check_census_results(read, checks.printed(nb), probe)


def _check_served_by_the_cluster(c: DevCluster, probe: dict[str, Any], env: dict[str, str]) -> None:
    checks.check_latencies(probe, REQUESTS)
    # queried at the head's proxy (the dashboard's host, the port the notebook was given)
    assert probe["url"] == f"http://127.0.0.1:{env['WIDEDEEP_NOTEBOOK_PORT']}", probe["url"]
    # while it was queried, the app ran on the cluster: platform/serve.yaml's chain, the bundle from
    # the store, every replica RUNNING on a node of this cluster
    app = probe["app"]
    assert app and app["status"] == "RUNNING", app
    bundle = app["deployed_app_config"]["args"]["bundle"]
    assert bundle == c.uri(PREFIX, "bundle"), bundle
    nodes = _alive_node_ids(c)
    deployments = app["deployments"]
    assert set(deployments) == {"Ingress", "Retriever", "Ranker"}, list(deployments)
    for name, d in deployments.items():
        running = [r for r in d["replicas"] if r["state"] == "RUNNING"]
        assert running and all(r["node_id"] in nodes for r in running), (name, d["replicas"])
    # the chain answered through the proxy with the bundle's model in both deployments
    version = s3_json(c, f"{PREFIX}/bundle/manifest.json")["model_version"]
    assert probe["health"] == {
        "status": "ok",
        "model_version": version,
        "versions": {"Retriever": version, "Ranker": version},
    }
    # and the notebook removed it at the end
    assert "recommender" not in (serve_apps(c).get("applications") or {}), serve_apps(c)
    with pytest.raises(httpx.HTTPError):
        httpx.get(probe["url"] + "/healthz", timeout=5).raise_for_status()
