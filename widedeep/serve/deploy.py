"""Deploy the recommender to a running Ray cluster from a client (a notebook, a script), and remove it.

Why: a client of a cluster reaches it through the dashboard's HTTP address (``RAY_ADDRESS=http://
head:8265``), where ``ray.init`` cannot connect and ``serve.run`` is not available. Serve's REST API
on the dashboard is the way in: ``serve deploy platform/serve.yaml`` is a PUT of the whole declarative
config there. This module builds the app's config from ``platform/serve.yaml`` (the same file the
CLI, KubeRay's ``RayService`` and the cluster tests deploy) and talks to that API through Ray's own
client (``ServeSubmissionClient``: it sends the cluster's auth token like the CLI does).

The declarative config replaces every application on the cluster, so ``deploy_app`` keeps the apps
already deployed (their deployed configs) beside the new one and ``remove_app`` takes only that one
away. The cluster imports ``widedeep.serve.app`` from its own environment (the nodes' installed
widedeep, e.g. the Docker image): a config deployed through the dashboard cannot upload local code.
The bundle must be readable by every node (a URI such as ``s3://``, or shared storage).
"""

from __future__ import annotations

import copy
import time
from typing import Any
from urllib.parse import urlsplit

import yaml

from widedeep.errors import ConfigError, ServingError, WidedeepError
from widedeep.paths import platform_path

APP = "recommender"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def submission_client(address: str) -> Any:
    """Ray's client of Serve's REST API on the dashboard at ``address`` (what ``serve deploy`` uses;
    it sends the cluster's auth token), with an error that names the address."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        return ServeSubmissionClient(address)
    except Exception as e:  # connection refused, not a dashboard, an old Ray: say which address
        raise ServingError(
            f"{address}: cannot reach a Ray dashboard to manage Serve ({type(e).__name__}: {e})"
        ) from None


def serve_details(client: Any, address: str) -> dict[str, Any]:
    """Serve's details on the cluster (applications, their deployed configs, HTTP options)."""
    try:
        return client.get_serve_details()
    except Exception as e:
        raise ServingError(f"{address}: cannot read the Serve applications ({type(e).__name__}: {e})") from None


class ServeDeployError(WidedeepError):
    """The app did not reach RUNNING on the cluster (the message carries Serve's own status message)."""


def app_config(bundle: str, *, name: str = APP, route_prefix: str = "/", **args: Any) -> dict[str, Any]:
    """The recommender's application entry of ``platform/serve.yaml`` serving ``bundle``, with ``args``
    (``candidates``, ``pipeline``, ...) overriding the file's; unknown ``args`` are errors here, not
    on the cluster."""
    from widedeep.serve.schemas import AppArgs

    cfg = yaml.safe_load(platform_path("serve.yaml").read_text())
    app = copy.deepcopy(cfg["applications"][0])
    app["args"].update(bundle=bundle, **args)
    unknown = sorted(set(app["args"]) - set(AppArgs.model_fields))
    if unknown:
        raise ConfigError(f"serve app args: unknown {unknown} (known: {sorted(AppArgs.model_fields)})")
    app.update(name=name, route_prefix=route_prefix)
    return app


def proxy_host(address: str) -> str:
    """The host of the cluster's head in a dashboard address (``http://head:8265`` -> ``head``): its
    Serve proxy is where a client sends requests."""
    host = urlsplit(address).hostname
    if not host:
        raise ConfigError(f"RAY_ADDRESS={address!r}: expected the dashboard's http://HOST:PORT")
    return host


def kept_apps(current: dict[str, Any], without: str) -> list[dict[str, Any]]:
    """The deployed configs of the apps in ``current`` (Serve's details) other than ``without``: what a
    declarative PUT must repeat to leave them running. An app deployed imperatively (``serve.run``)
    has no config to repeat, so it is refused rather than silently removed."""
    keep = []
    for name, details in sorted((current.get("applications") or {}).items()):
        if name == without:
            continue
        deployed = details.get("deployed_app_config")
        if not deployed:
            raise ServeDeployError(
                f"app {name!r} on the cluster was not deployed from a config (serve.run?): a declarative "
                f"deploy would remove it; shut it down first"
            )
        keep.append(deployed)
    return keep


def merged_config(
    current: dict[str, Any], app: dict[str, Any], *, port: int, host: str, proxy_location: str
) -> dict[str, Any]:
    """The declarative config to PUT: the apps deployed now (``current``) with ``app`` added, or
    replacing the one of its name."""
    return {
        "proxy_location": proxy_location,
        "http_options": {"host": host, "port": port},
        "applications": [*kept_apps(current, app["name"]), app],
    }


def deploy_app(address: str, app: dict[str, Any], *, port: int = 8000, proxy_location: str = "HeadOnly") -> str:
    """PUT ``app`` (``app_config``) to the cluster's Serve at dashboard ``address``; returns the URL
    of the head's proxy serving it. ``proxy_location``: ``HeadOnly`` (a client queries the head;
    required where nodes share one address, as on ``widedeep dev-cluster``) or ``EveryNode``."""
    client = submission_client(address)
    head = proxy_host(address)
    host = "127.0.0.1" if head in _LOOPBACK else "0.0.0.0"  # a local cluster stays off the network
    config = merged_config(serve_details(client, address), app, port=port, host=host, proxy_location=proxy_location)
    client.deploy_applications(config)
    return f"http://{head}:{port}{app.get('route_prefix', '/').rstrip('/')}"


def app_details(address: str, name: str = APP) -> dict[str, Any] | None:
    """Serve's details of app ``name`` (``status``, ``message``, ``deployments`` with their replicas and
    nodes), or ``None`` when it is not deployed."""
    client = submission_client(address)
    return (serve_details(client, address).get("applications") or {}).get(name)


def wait_running(
    address: str, name: str = APP, timeout_s: float = 600.0, *, health_url: str | None = None
) -> dict[str, Any]:
    """Wait until app ``name`` is RUNNING (replicas loaded the bundle) and, with ``health_url``, until
    the proxy routes to it (``GET health_url`` answers 200: the proxy's route table lags the app's
    status); returns the app's details. A failed deployment raises at once with Serve's message (a
    bad bundle URI, an import error on the nodes)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    details: dict[str, Any] | None = None
    seen = ""
    while time.monotonic() < deadline:
        details = app_details(address, name)
        status = (details or {}).get("status")
        if status == "DEPLOY_FAILED":  # UNHEALTHY can pass (a replica restarting): wait on
            raise ServeDeployError(f"app {name!r} is {status}: {(details or {}).get('message', '')[-2000:]}")
        if status == "RUNNING":
            if health_url is None:
                return details or {}
            try:
                r = httpx.get(health_url, timeout=10)
                if r.status_code == 200:
                    return details or {}
                seen = f"{health_url} answered {r.status_code}"
            except httpx.HTTPError as e:
                seen = f"{health_url}: {type(e).__name__}"
        time.sleep(1.0)
    raise ServeDeployError(
        f"app {name!r} not serving after {timeout_s:.0f}s (status {(details or {}).get('status')}: "
        f"{(details or {}).get('message', '')[-2000:]}; {seen or 'not RUNNING'})"
    )


def remove_app(address: str, name: str = APP, timeout_s: float = 120.0) -> None:
    """Take app ``name`` off the cluster, keeping the others; with none left, Serve is shut down
    (``serve shutdown``). Returns once the app is gone."""
    client = submission_client(address)
    details = serve_details(client, address)
    apps = details.get("applications") or {}
    if name not in apps:
        return
    kept = kept_apps(details, name)
    if not kept:
        client.delete_applications()
    else:  # the same proxies and HTTP options, the other apps as deployed
        http = details.get("http_options") or {}
        config = {
            "proxy_location": details.get("proxy_location") or "EveryNode",
            "http_options": {"host": http.get("host", "0.0.0.0"), "port": http.get("port", 8000)},
            "applications": kept,
        }
        client.deploy_applications(config)
    deadline = time.monotonic() + timeout_s
    while app_details(address, name) is not None:
        if time.monotonic() > deadline:
            raise ServeDeployError(f"app {name!r} still on the cluster {timeout_s:.0f}s after its removal")
        time.sleep(1.0)
