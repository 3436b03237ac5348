"""Deploying the recommender declaratively and swapping its model in place.

A model swap is a ``user_config`` change (``{bundle: NEW}``) on the deployments that load the
model (the Ingress with ``pipeline: fused``; Retriever and Ranker with ``chain``): the
application's code version stays the same, so Serve calls ``reconfigure`` on the running
replicas, which load the new bundle beside the old one and switch over without a restart or a
failed request (``widedeep.serve.deployments.ModelSlot``). That works only for applications
deployed from a config (``serve deploy``, the dashboard's REST API, ``deploy_app`` here):
``serve.run`` deploys imperatively and every redeploy is a rolling update.

The calls are the ones ``serve deploy`` / ``serve config`` make (``ServeSubmissionClient`` on the
dashboard's address). A config deploy replaces every declaratively deployed application, so both
functions send the current config of the other applications unchanged along with the changed one.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

from widedeep.errors import ServingError
from widedeep.serve.deploy import serve_details, submission_client

log = logging.getLogger(__name__)

IMPORT_PATH = "widedeep.serve.app:build_app"
MODEL_DEPLOYMENTS = {"fused": ("Ingress",), "chain": ("Retriever", "Ranker")}


def _deploy(client: Any, address: str, details: dict[str, Any], apps: list[dict[str, Any]]) -> None:
    config: dict[str, Any] = {"applications": apps}
    for key in ("http_options", "grpc_options", "proxy_location"):
        if details.get(key) is not None:
            config[key] = details[key]
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
        client.deploy_applications(config)
    except Exception as e:
        raise ServingError(f"{address}: Serve refused the config ({type(e).__name__}: {e})") from None


def _declarative(details: dict[str, Any], skip: str | None = None) -> list[dict[str, Any]]:
    return [
        copy.deepcopy(a["deployed_app_config"])
        for name, a in details.get("applications", {}).items()
        if a.get("deployed_app_config") and name != skip
    ]


def app_config(
    name: str,
    route_prefix: str,
    args: dict[str, Any],
    deployments: list[dict[str, Any]] | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Serve application config of the recommender (``args`` are ``AppArgs``'s fields)."""
    cfg: dict[str, Any] = {"name": name, "route_prefix": route_prefix, "import_path": IMPORT_PATH, "args": dict(args)}
    if deployments:
        cfg["deployments"] = deployments
    if runtime_env:
        cfg["runtime_env"] = runtime_env
    return cfg


def deploy_app(address: str, config: dict[str, Any], timeout_s: float = 300.0) -> dict[str, Any]:
    """Deploy (or replace) one application declaratively; waits until it is RUNNING."""
    client = submission_client(address)
    details = serve_details(client, address)
    _deploy(client, address, details, [*_declarative(details, skip=config["name"]), config])
    return _wait_running(client, address, config["name"], None, timeout_s)


def _wait_running(client: Any, address: str, app: str, before: float | None, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        a = serve_details(client, address).get("applications", {}).get(app)
        if a is not None:
            last = a
            fresh = before is None or float(a.get("last_deployed_time_s") or 0) > before
            healthy = all(d.get("status") == "HEALTHY" for d in a.get("deployments", {}).values())
            if fresh and a.get("status") == "RUNNING" and healthy:
                return a
            if fresh and a.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise ServingError(f"application {app!r}: {a.get('status')}: {a.get('message', '')[:2000]}")
        time.sleep(0.5)
    raise ServingError(
        f"application {app!r} not RUNNING after {timeout_s:g}s (status {last.get('status')!r}: "
        f"{str(last.get('message', ''))[:500]})"
    )


def _served_version(url: str) -> tuple[str | None, Any]:
    import httpx

    try:
        r = httpx.get(f"{url.rstrip('/')}/v1/model", timeout=10)
    except httpx.HTTPError:
        return None, None
    if r.status_code != 200:
        return None, None
    body = r.json()
    return body.get("model_version"), body.get("last_load_error")


def swap_bundle(
    address: str,
    app: str,
    bundle: str,
    *,
    expect_version: str | None = None,
    url: str | None = None,
    timeout_s: float = 300.0,
    confirmations: int = 5,
) -> dict[str, Any]:
    """Point the model-loading deployments of ``app`` at ``bundle`` (a ``user_config`` change).

    Waits until Serve reports the application RUNNING with healthy deployments; with ``url`` (the
    application's HTTP base) and ``expect_version`` it also waits until ``GET /v1/model`` answers
    that version ``confirmations`` times in a row (each answer comes from some replica), and fails
    naming the replica's ``last_load_error`` if the bundle was refused (the old model then keeps
    serving). Returns what changed.
    """
    client = submission_client(address)
    details = serve_details(client, address)
    a = details.get("applications", {}).get(app)
    if a is None:
        running = sorted(details.get("applications", {}))
        raise ServingError(f"{address}: no Serve application {app!r}; running: {running}")
    cfg = copy.deepcopy(a.get("deployed_app_config"))
    if not cfg:
        raise ServingError(
            f"application {app!r} was deployed with serve.run (imperatively): its model can only be "
            "swapped in place when it is deployed from a config (serve deploy, or widedeep serve)"
        )
    pipeline = (cfg.get("args") or {}).get("pipeline", "fused")
    deployments = {d["name"]: d for d in cfg.get("deployments", [])}
    previous = None
    for name in MODEL_DEPLOYMENTS.get(pipeline, MODEL_DEPLOYMENTS["fused"]):
        d = deployments.setdefault(name, {"name": name})
        uc = dict(d.get("user_config") or {})
        previous = previous or uc.get("bundle") or (cfg.get("args") or {}).get("bundle")
        uc["bundle"] = str(bundle)
        d["user_config"] = uc
    cfg["deployments"] = list(deployments.values())
    before = float(a.get("last_deployed_time_s") or 0)
    t0 = time.monotonic()
    _deploy(client, address, details, [*_declarative(details, skip=app), cfg])
    _wait_running(client, address, app, before, timeout_s)
    confirmed = None
    if url and expect_version:
        streak, deadline = 0, time.monotonic() + timeout_s
        while streak < confirmations:
            version, error = _served_version(url)
            if error and error.get("bundle") == str(bundle):
                raise ServingError(
                    f"application {app!r} refused bundle {bundle}: {error.get('error')}; "
                    "it keeps serving the previous model"
                )
            streak = streak + 1 if version == expect_version else 0
            if time.monotonic() > deadline:
                raise ServingError(
                    f"application {app!r} does not serve version {expect_version} after {timeout_s:g}s "
                    f"(last answer: {version})"
                )
            if streak < confirmations:
                time.sleep(0.2)
        confirmed = expect_version
    out = {
        "app": app,
        "pipeline": pipeline,
        "deployments": list(MODEL_DEPLOYMENTS.get(pipeline, ())),
        "previous_bundle": previous,
        "bundle": str(bundle),
        "confirmed_version": confirmed,
        "seconds": round(time.monotonic() - t0, 2),
    }
    log.info(
        "swapped application %s to %s in %.1fs (%s)",
        app,
        bundle,
        out["seconds"],
        f"serving {confirmed}" if confirmed else "not confirmed over HTTP",
    )
    return out
