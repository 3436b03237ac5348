"""Connecting to Ray the same way from every entry point.

Why: on a small machine ``ray.init()`` registers as many logical CPUs as cores, and a Ray
Train job whose workers take every CPU starves Ray Data's read tasks: the job hangs with
"Cluster resources are not enough" instead of failing. When we start a local Ray ourselves
we therefore register at least ``MIN_LOCAL_CPUS`` logical CPUs (oversubscription is fine:
Data tasks are mostly I/O and Arrow work). The dashboard stays on: besides showing jobs and
Serve, it serves the state API that Ray Train's placement-group cleaner polls (without it that
actor logs a warning every few seconds); a busy port 8265 makes Ray take the next free one. With ``RAY_ADDRESS`` set (a cluster, or a job
running on one) we connect to it and leave its resources alone.
"""

from __future__ import annotations

import logging
import os

MIN_LOCAL_CPUS = 4

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
    cpus = num_cpus or max(MIN_LOCAL_CPUS, os.cpu_count() or 1)
    log.info("starting a local Ray with %d logical CPUs", cpus)
    ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True)
