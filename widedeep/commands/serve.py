"""``widedeep serve``: run the recommender on a local Ray (or RAY_ADDRESS) until interrupted."""

from __future__ import annotations

import argparse

HELP = "serve a bundle over HTTP (/v1/recommend, /v1/rank, /v1/model, /healthz, /docs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle",
        required=True,
        help="serving bundle (widedeep export): a directory or a URI "
        "(s3://, gs://, file://, ...: copied to a local cache and verified), or a registered "
        "version (models:/NAME@ALIAS, needs the mlflow extra)",
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking/registry URI for models:/ bundles (default: MLFLOW_TRACKING_URI, else file:./mlruns)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--route-prefix", default="/")
    parser.add_argument(
        "--pipeline",
        choices=["fused", "chain"],
        default="fused",
        help="fused: Ingress retrieves and ranks in process; chain: Ingress -> Retriever -> Ranker",
    )
    parser.add_argument("--candidates", type=int, default=500, help="N candidates retrieved and ranked")
    parser.add_argument("--default-k", type=int, default=10)
    parser.add_argument("--max-k", type=int, default=100)


def run(args: argparse.Namespace) -> int:
    import signal
    import time

    from pydantic import ValidationError
    from ray import serve

    from widedeep.errors import ConfigError
    from widedeep.ray_runtime import ensure_ray
    from widedeep.serve.app import build_app
    from widedeep.serve.bundle import read_manifest
    from widedeep.serve.schemas import AppArgs
    from widedeep.tracking import resolve

    args.bundle = resolve(args.bundle, "bundle", args.tracking_uri)
    read_manifest(args.bundle)  # fail fast, before starting Ray
    try:
        app_args = AppArgs(
            bundle=args.bundle,
            pipeline=args.pipeline,
            candidates=args.candidates,
            default_k=args.default_k,
            max_k=args.max_k,
        )
    except ValidationError as e:
        raise ConfigError(str(e)) from None
    ensure_ray()
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(app_args), name="recommender", route_prefix=args.route_prefix)
    base = f"http://{args.host}:{args.port}{args.route_prefix.rstrip('/')}"
    print(f"serving {args.bundle} at {base}/v1/recommend (API docs: {base}/docs); Ctrl-C to stop", flush=True)

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # `kill` stops it cleanly too (Serve shut down, Ray stopped)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
        serve.shutdown()
    return 0
