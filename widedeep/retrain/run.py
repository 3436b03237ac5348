"""``widedeep retrain``: one turn of the production loop, start to end.

::

    serving bundle ──► its FeatureSpace, ranker + retriever checkpoints, training data, profile
    new window (raw) ──► prepare with the serving FeatureSpace extended ──► WINDOW/{train,valid,test}
                     ──► the same rows as the serving model sees them ──► AS_SERVING/{train,valid,test}
    warm start from the serving checkpoints ──► train ranker and retriever on WINDOW
    verify (widedeep.retrain.verify): candidate vs serving on WINDOW/test, on the serving model's
        own held-out slice, top-K, finite / calibrated / spread predictions, label rate, drift
    pass ──► export a bundle whose manifest records its lineage ──► swap the live app in place
    fail ──► report naming each failed check; nothing is exported, serving keeps its model

Everything lands under the work directory (``report.json`` last), so a run can be inspected.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widedeep import tracking
from widedeep.errors import CheckpointError, DataError
from widedeep.export.from_checkpoints import export_from_checkpoints, profile_split
from widedeep.features import FeatureSpace
from widedeep.paths import Location
from widedeep.retrain.config import RetrainConfig
from widedeep.retrain.swap import swap_bundle
from widedeep.retrain.verify import gate, pointwise, topk, weights_finite
from widedeep.retrain.window import prepare_window, remap_prepared, remap_split
from widedeep.serve.bundle import read_manifest
from widedeep.train.config import load_train_config
from widedeep.train.driver import run_training

log = logging.getLogger(__name__)

REPORT_KIND = "widedeep.retrain.report"


@dataclass(frozen=True)
class ServingModel:
    """What a retrain needs to know about the model being served (from its bundle's manifest)."""

    bundle: str
    version: str
    fs: FeatureSpace
    ranker: str
    retriever: str
    data: str
    profile: dict[str, Any] | None

    @staticmethod
    def of(bundle: str) -> ServingModel:
        m = read_manifest(bundle)
        src = m.get("sources", {})
        try:
            ranker, retriever, data = src["ranker"]["path"], src["retriever"]["path"], src["data"]
        except (KeyError, TypeError):
            raise CheckpointError(
                f"{bundle}: the manifest does not name the checkpoints and data it was exported "
                "from (sources.ranker.path, sources.retriever.path, sources.data); a retrain "
                "warm-starts from them (bundles of `widedeep export` have them)"
            ) from None
        for what, p in (("ranker checkpoint", ranker), ("retriever checkpoint", retriever), ("training data", data)):
            if not Location.of(p).exists():
                raise CheckpointError(f"{bundle}: its {what} {p} is not reachable from here")
        root = Location.of(bundle)
        fs = FeatureSpace.load(root / "feature_space.json")
        profile_loc = root / "profile.json"
        profile = json.loads(profile_loc.read_text()) if profile_loc.exists() else None
        return ServingModel(str(bundle), str(m["model_version"]), fs, ranker, retriever, data, profile)


@dataclass(frozen=True)
class RetrainOptions:
    """One ``widedeep retrain`` (CLI flags map 1:1).

    ``serve_address``: the Ray dashboard (``http://host:8265``) of the cluster serving ``serve_app``;
    None: verify and export only. ``serve_url``: that application's HTTP base, to confirm the
    swap over HTTP (``GET /v1/model``). ``tracking_uri``: log the retrain and both trainings to
    MLflow (``widedeep.tracking``); ``register_as``: register an accepted bundle under this name,
    alias ``challenger``, and ``champion`` once it is swapped in.
    """

    serving: str
    inputs: list[str]
    workdir: str
    config: RetrainConfig
    serve_address: str | None = None
    serve_app: str = "recommender"
    serve_url: str | None = None
    bundle_out: str | None = None
    version: str | None = None
    tracking_uri: str | None = None
    register_as: str | None = None


def _flat(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += _flat(v, key + ".") if isinstance(v, dict) and v else [f"{key}={json.dumps(v)}"]
    return out


def _train(
    job: str, sets: dict[str, Any], data: Location, runs: Location, name: str, warm: str, tracking_uri: str | None
) -> dict[str, Any]:
    overrides = [
        *_flat(sets),
        f"data={json.dumps(str(data))}",
        f"storage_path={json.dumps(str(runs))}",
        f"run_name={json.dumps(name)}",
        f"warm_start_from={json.dumps(warm)}",
    ]
    if tracking_uri:
        overrides += ["tracking.enabled=true", f"tracking.uri={json.dumps(tracking_uri)}"]
    return run_training(load_train_config(job, overrides))


class _Stages:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Any) -> Any:
        log.info("retrain: %s ...", name)
        t = time.perf_counter()
        out = fn()
        self.seconds[name] = round(time.perf_counter() - t, 2)
        log.info("retrain: %s done in %.1fs", name, self.seconds[name])
        return out


def retrain(opts: RetrainOptions) -> dict[str, Any]:
    """Run the loop once; returns the report (also ``WORKDIR/report.json``). ``report["passed"]``
    says whether the candidate was accepted (and swapped, with a serve address)."""
    cfg = opts.config
    work = Location.of(opts.workdir)
    if work.exists() and (work / "report.json").exists():
        raise DataError(f"{work}: holds the report of an earlier retrain; choose a new --out")
    st = _Stages()
    serving = st.run("read the serving model", lambda: ServingModel.of(opts.serving))
    run = _start_tracking(opts, work, serving)
    win = _prepare_window(st, opts, work, serving)
    runs = work / "runs"
    ranker = st.run(
        "train the ranker (warm start)",
        lambda: _train(cfg.ranker_job, cfg.ranker_set, win.window, runs, "ranker", serving.ranker, opts.tracking_uri),
    )
    retriever = st.run(
        "train the retriever (warm start)",
        lambda: _train(
            cfg.retriever_job, cfg.retriever_set, win.window, runs, "retriever", serving.retriever, opts.tracking_uri
        ),
    )
    cand = (ranker["checkpoint"], retriever["checkpoint"])
    figures = st.run("measure candidate and serving model", lambda: _measure(cfg, serving, win, *cand))
    reference = serving.profile or profile_split(serving.fs, Location.of(serving.data) / "train")
    checks, drift = gate(
        cfg.gate,
        window=figures["window"],
        previous=figures["previous"],
        topk_scores=figures["topk"],
        reference_profile=reference,
        window_profile=figures["window_profile"],
        candidate_weights_finite=figures["weights_finite"],
    )
    report = _report(opts, serving, win, checks, drift, figures, ranker, retriever)
    if report["failed_checks"]:
        log.error(
            "retrain: REFUSED, failed checks: %s; serving keeps model %s",
            ", ".join(report["failed_checks"]),
            serving.version,
        )
    else:
        _accept(st, opts, work, serving, win, report)
    report["seconds"] = st.seconds
    if run is not None:
        report["mlflow"] = _track(run, report, opts.register_as)
    write_report(work / "report.json", report)
    return report


@dataclass(frozen=True)
class _Window:
    """The new window prepared with the serving FeatureSpace extended, and the rows both models score."""

    window: Location  # WINDOW/{train,valid,test} in the candidate's FeatureSpace
    manifest: dict[str, Any]
    fs: FeatureSpace  # the candidate's (extended) FeatureSpace
    as_serving: Location  # the window's train/test as the serving model sees them
    prev_test: Location  # the serving model's own held-out slice
    prev_as_candidate: Location  # that slice as the candidate sees it


def _start_tracking(opts: RetrainOptions, work: Location, serving: ServingModel) -> tuple[str, str] | None:
    if not opts.tracking_uri:
        return None
    run_id = tracking.start_run(
        opts.tracking_uri,
        "widedeep-retrain",
        f"retrain-{work.name}",
        {"config": opts.config.to_dict(), "inputs": list(opts.inputs), "serving": serving.bundle},
        tags={"widedeep.parent_version": serving.version},
    )
    return opts.tracking_uri, run_id


def _prepare_window(st: _Stages, opts: RetrainOptions, work: Location, serving: ServingModel) -> _Window:
    cfg = opts.config
    window = work / "window"
    manifest = st.run(
        "prepare the window with the serving FeatureSpace extended",
        lambda: prepare_window(serving.fs, opts.inputs, str(window), cfg.split, cfg.on_bad_rows),
    )
    cand_fs = FeatureSpace.load(window / "feature_space.json")
    as_serving = st.run(
        "remap the window to the serving FeatureSpace",
        lambda: remap_prepared(window, cand_fs, serving.fs, work / "window-as-serving", ("train", "test")),
    )
    prev_test = Location.of(serving.data) / "test"
    if not prev_test.exists():
        raise DataError(
            f"{prev_test}: the serving model's held-out slice is missing (the gate scores the candidate on it)"
        )
    prev_as_cand = st.run(
        "remap the serving model's held-out slice to the candidate's FeatureSpace",
        lambda: remap_split(prev_test, serving.fs, cand_fs, work / "serving-holdout-as-candidate"),
    )
    return _Window(window, manifest, cand_fs, as_serving, prev_test, prev_as_cand)


def _measure(
    cfg: RetrainConfig, serving: ServingModel, win: _Window, cand_ranker: str, cand_retriever: str
) -> dict[str, Any]:
    """Candidate and serving model on the same rows: the window's and the serving model's hold-outs."""
    out: dict[str, Any] = {
        "window": {
            "candidate": pointwise(cand_ranker, str(win.window / "test")),
            "serving": pointwise(serving.ranker, str(win.as_serving / "test")),
        },
        "previous": {
            "candidate": pointwise(cand_ranker, str(win.prev_as_candidate)),
            "serving": pointwise(serving.ranker, str(win.prev_test)),
        },
        "topk": None,
    }
    if cfg.gate.topk_metric is not None:
        out["topk"] = {
            "candidate": topk(cand_retriever, cand_ranker, str(win.window / "test"), cfg.gate.topk_users),
            "serving": topk(serving.retriever, serving.ranker, str(win.as_serving / "test"), cfg.gate.topk_users),
        }
    out["weights_finite"] = weights_finite(cand_ranker)
    out["window_profile"] = profile_split(serving.fs, win.as_serving / "train")
    return out


def _report(
    opts: RetrainOptions,
    serving: ServingModel,
    win: _Window,
    checks: list[Any],
    drift: dict[str, Any],
    figures: dict[str, Any],
    ranker: dict[str, Any],
    retriever: dict[str, Any],
) -> dict[str, Any]:
    failed = [c.name for c in checks if not c.passed]
    splits = ("train", "valid", "test")
    return {
        "kind": REPORT_KIND,
        "passed": not failed,
        "failed_checks": failed,
        "checks": [c.to_dict() for c in checks],
        "drift": drift,
        "serving": {
            "bundle": serving.bundle,
            "model_version": serving.version,
            "ranker": serving.ranker,
            "retriever": serving.retriever,
            "data": serving.data,
            "feature_space_hash": serving.fs.content_hash,
        },
        "window": {
            "inputs": list(opts.inputs),
            "prepared": str(win.window),
            "split": opts.config.split,
            "rows": {s: win.manifest["splits"][s]["rows"] for s in splits},
            "label_rate": {s: win.manifest["splits"][s]["label_rate"] for s in splits},
            "new_values": win.fs.fit_info.get("window", {}).get("new_values", {}),
            "feature_space_hash": win.fs.content_hash,
        },
        "candidate": {
            "ranker": ranker["checkpoint"],
            "retriever": retriever["checkpoint"],
            "train": {"ranker": _summary(ranker), "retriever": _summary(retriever)},
        },
        "metrics": {k: figures[k] for k in ("window", "previous", "topk")},
        "config": opts.config.to_dict(),
        "bundle": None,
        "swap": None,
    }


def _accept(
    st: _Stages, opts: RetrainOptions, work: Location, serving: ServingModel, win: _Window, report: dict[str, Any]
) -> None:
    """Export the accepted candidate with its lineage and, given a serve address, swap it in."""
    lineage = {
        "parent": {
            "bundle": serving.bundle,
            "model_version": serving.version,
            "feature_space_hash": serving.fs.content_hash,
        },
        "window": report["window"],
        "checks": report["checks"],
        "drift": report["drift"],
        "created_by": "widedeep retrain",
    }
    out = opts.bundle_out or str(work / "bundle")
    cand = report["candidate"]
    bundle = st.run(
        "export the bundle",
        lambda: export_from_checkpoints(
            cand["ranker"],
            cand["retriever"],
            out,
            data=str(win.window),
            index_kind=opts.config.bundle_index,
            version=opts.version,
            lineage=lineage,
        ),
    )
    report["bundle"] = str(bundle)
    report["model_version"] = read_manifest(str(bundle))["model_version"]
    if opts.serve_address:
        report["swap"] = st.run(
            "swap the live Serve application",
            lambda: swap_bundle(
                opts.serve_address,
                opts.serve_app,
                str(bundle),
                expect_version=report["model_version"],
                url=opts.serve_url,
            ),
        )
    log.info(
        "retrain: PASSED; bundle %s (version %s)%s",
        bundle,
        report["model_version"],
        f", serving in {opts.serve_app}" if report["swap"] else "",
    )


def _track(run: tuple[str, str], report: dict[str, Any], register_as: str | None) -> dict[str, Any]:
    """The retrain's checks, decision and bundle in its MLflow run; an accepted bundle registered."""
    uri, run_id = run
    figures = {}
    for c in report["checks"]:
        values = c["value"] if isinstance(c["value"], dict) else {"": c["value"]}
        figures.update({f"check.{c['name']}{'.' + k if k else ''}": v for k, v in values.items()})
    tracking.log_metrics(uri, run_id, figures)
    tracking.set_tags(
        uri,
        run_id,
        {
            "widedeep.decision": "accepted" if report["passed"] else "refused",
            "widedeep.failed_checks": ",".join(report["failed_checks"]) or "-",
            "widedeep.bundle": report["bundle"] or "-",
        },
    )
    out: dict[str, Any] = {"tracking_uri": uri, "run_id": run_id}
    if report["passed"] and register_as:
        aliases = ["challenger"] + (["champion"] if report["swap"] else [])
        out["registered"] = {
            "name": register_as,
            "aliases": aliases,
            "version": tracking.register(
                uri,
                register_as,
                report["bundle"],
                "bundle",
                run_id,
                aliases,
                tags={
                    "widedeep.model_version": str(report["model_version"]),
                    "widedeep.parent_version": str(report["serving"]["model_version"]),
                },
            ),
        }
    tracking.end_run(uri, run_id)
    return out


def _summary(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("checkpoint", "best_epoch", "epochs_completed", "auc", "logloss", "hit@50", "wall_seconds", "run_name")
    return {k: s[k] for k in keys if k in s}


def write_report(loc: Location | str, report: dict[str, Any]) -> None:
    loc = Location.of(loc)
    loc.parent.fs.create_dir(loc.parent.path, recursive=True)
    with loc.fs.open_output_stream(loc.path) as f:
        f.write((json.dumps(report, indent=1, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)
