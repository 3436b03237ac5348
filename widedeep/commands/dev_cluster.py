"""``widedeep dev-cluster``: a head + worker nodes and a local S3 store on this machine (widedeep/dev_cluster.py)."""

from __future__ import annotations

import argparse

HELP = "start (up) or stop (down) a multi-node Ray cluster with a local S3 store on this machine"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down"])
    p.add_argument("--workdir", default="widedeep-dev-cluster", help="Ray temp dir, logs and state.json")
    p.add_argument("--workers", type=int, default=2, help="worker nodes (each its own `ray start`)")
    p.add_argument("--head-cpus", type=int, default=2, help="logical CPUs of the head")
    p.add_argument("--worker-cpus", type=int, default=2, help="logical CPUs of each worker node")
    p.add_argument("--bucket", default="widedeep", help="bucket created in the S3 store")
    p.add_argument("--no-s3", action="store_true", help="no object store")


def run(args: argparse.Namespace) -> int:
    import shlex
    from pathlib import Path

    from widedeep.dev_cluster import DevCluster, DevClusterConfig, stop_from_state

    workdir = Path(args.workdir).resolve()
    if args.action == "down":
        pids = stop_from_state(workdir)
        print(f"stopped the dev cluster in {workdir} (process groups {pids})")
        return 0
    cfg = DevClusterConfig(
        workdir=workdir,
        workers=args.workers,
        head_cpus=args.head_cpus,
        worker_cpus=args.worker_cpus,
        bucket=args.bucket,
        s3=not args.no_s3,
    )
    cluster = DevCluster(cfg).start()
    print(f"dev cluster up: head + {args.workers} workers; dashboard/Jobs API {cluster.dashboard}")
    if cfg.s3:
        print(f"S3 store {cluster.s3_endpoint}, bucket {cluster.uri()}")
    print("# point clients at it:")
    for k, v in cluster.env().items():
        print(f"export {k}={shlex.quote(v)}")
    print(f"# stop it: widedeep dev-cluster down --workdir {shlex.quote(str(workdir))}")
    return 0
