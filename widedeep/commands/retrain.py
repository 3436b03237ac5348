"""``widedeep retrain``: warm-start the serving model on a new window, verify, export, swap in place."""

from __future__ import annotations

import argparse

HELP = "continuous training: new window -> extended FeatureSpace -> warm start -> verify against serving -> swap"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="retrain job config (default: platform/jobs/retrain-appstore.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set gate.auc_margin=0.02 --set ranker_set.epochs=1",
    )
    parser.add_argument(
        "--serving",
        required=True,
        help="the serving model: its bundle (directory or URI) or a "
        "registered version (models:/NAME@champion; needs the mlflow extra)",
    )
    parser.add_argument("--input", required=True, nargs="+", metavar="PATH", help="the new window's raw data")
    parser.add_argument("--out", required=True, help="work directory (prepared window, runs, bundle, report.json)")
    parser.add_argument("--bundle-out", help="where the accepted bundle goes (default: OUT/bundle)")
    parser.add_argument("--version", help="model version of the accepted bundle (default: a content hash)")
    parser.add_argument(
        "--serve-address",
        help="Ray dashboard address (http://127.0.0.1:8265) of the cluster "
        "serving --serve-app: an accepted model is swapped in there (user_config, in place)",
    )
    parser.add_argument(
        "--serve-app", default="recommender", help="the Serve application to swap (default %(default)s)"
    )
    parser.add_argument("--serve-url", help="the application's HTTP base, to confirm the swap (GET /v1/model)")
    parser.add_argument("--report", help="also write the JSON report here")
    parser.add_argument(
        "--tracking-uri",
        help="log to MLflow here (default with --register or a models:/ "
        "--serving: MLFLOW_TRACKING_URI, else file:./mlruns)",
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register an accepted bundle as a version of NAME "
        "(alias challenger; champion once swapped in); default: the name of a models:/ --serving",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from widedeep import tracking
    from widedeep.paths import platform_path
    from widedeep.retrain.config import load_retrain_config
    from widedeep.retrain.run import RetrainOptions, retrain, write_report

    config = args.config or str(platform_path("jobs", "retrain-appstore.yaml"))
    cfg = load_retrain_config(config, args.overrides)
    register = args.register or tracking.model_name(args.serving)
    uri = None
    if args.tracking_uri or register or tracking.is_registry_uri(args.serving):
        uri = tracking.tracking_uri(args.tracking_uri)
    serving = tracking.resolve(args.serving, "bundle", uri)
    report = retrain(
        RetrainOptions(
            serving=serving,
            inputs=list(args.input),
            workdir=args.out,
            config=cfg,
            serve_address=args.serve_address,
            serve_app=args.serve_app,
            serve_url=args.serve_url,
            bundle_out=args.bundle_out,
            version=args.version,
            tracking_uri=uri,
            register_as=register,
        )
    )
    if args.report:
        write_report(args.report, report)
    summary = {k: report.get(k) for k in ("passed", "failed_checks", "bundle", "model_version")}
    summary["checks"] = {
        c["name"]: {"passed": c["passed"], "value": c["value"], "threshold": c["threshold"]} for c in report["checks"]
    }
    print(json.dumps(summary, indent=1, default=str))
    return 0 if report["passed"] else 1
