"""Connecting to Ray the same way from every entry point.

Why: on a small machine ``ray.init()`` registers as many logical CPUs as cores, and a Ray
Train job whose workers take every CPU starves Ray Data's read tasks: the job hangs with
"Cluster resources are not enough" instead of failing. When we start a local Ray ourselves
we therefore register at least ``MIN_LOCAL_CPUS`` logical CPUs (oversubscription is fine:
Data tasks are mostly I/O and Arrow work). The dashboard stays on: besides showing jobs and
Serve, it serves the state API that Ray Train's placement-group cleaner polls (without it that
actor logs a warning every few seconds); a busy port 8265 makes Ray take the next free one.
A local Ray also gets Ray Serve's high-throughput settings (``SERVE_ENV``). With ``RAY_ADDRESS``
set (a cluster, or a job running on one) we connect to it and leave its resources and settings alone.
"""

from __future__ import annotations

import logging
import os

MIN_LOCAL_CPUS = 4

# Ray Serve's documented high-throughput settings (Ray >= 2.55, "Enable High Throughput on Ray
# Serve"), minus direct ingress: the HTTP proxy talks to replicas over gRPC instead of Ray actor
# calls, user code and the router run on the replica's own event loop (no cross-thread handoffs),
# request-path logs are buffered and not copied to stderr (files under the session's logs/serve
# only). Measured with `widedeep bench serve` on 2 cores: no-op floor at 1 client 7.9 -> 5.5 ms,
# /v1/recommend at 8 clients 124 -> 156 req/s and p99 102 -> 87 ms. They must be in the
# environment of every Ray process (controller, proxy, replicas): `ensure_ray` sets them for a
# local Ray it starts; cluster.yaml's start commands and the Docker image set them on clusters.
SERVE_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None) -> None:
    """Initialise Ray once per process: connect to ``RAY_ADDRESS`` or start a local instance."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        log.info("connecting to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        ray.init(log_to_driver=True)
        return
    for key, value in SERVE_ENV.items():  # a user's own setting wins
        os.environ.setdefault(key, value)
    cpus = num_cpus or max(MIN_LOCAL_CPUS, os.cpu_count() or 1)
    log.info("starting a local Ray with %d logical CPUs", cpus)
    ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)


def compute_cpus() -> float:
    """CPUs that compute-bound actors should be sized by: the cluster's CPUs, except on a local Ray
    that ``ensure_ray`` started with more logical CPUs than the machine has cores (the extra ones
    are for Ray Data's I/O tasks; compute-bound actors beyond the cores only add start-up and
    time-slicing). Call after ``ensure_ray``."""
    import ray

    logical = float(ray.cluster_resources().get("CPU", 1))
    if os.environ.get("RAY_ADDRESS"):
        return logical
    return min(logical, float(os.cpu_count() or 1))
