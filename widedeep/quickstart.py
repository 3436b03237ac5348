"""The quickstart: every stage of the platform once, on a local Ray, in a few minutes on 2 cores.

generate -> prepare -> train ranker -> train retriever -> evaluate (AUC; Recall@K / NDCG@10 vs
baselines) -> export bundle -> serve -> sample HTTP requests -> stop.

Each stage calls the same entry point a user types (``widedeep.cli.main([...])``), so the
quickstart exercises the real CLI rather than a private shortcut, and a failure names the stage
and the command that reproduces it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widedeep.errors import WidedeepError
from widedeep.paths import platform_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes and paths of one quickstart run.

    ``rows`` impressions over ``users`` users and ``items`` apps; ``workdir`` holds every artifact
    (raw data, prepared data, runs, bundle) so a second run can be inspected or resumed.
    """

    workdir: Path
    rows: int = 40_000
    users: int = 2_000
    items: int = 300
    seed: int = 0
    epochs: int = 3
    port: int = 8000
    keep_serving: bool = False


class QuickstartError(WidedeepError):
    """A stage of the quickstart failed; the message names it and its command."""


def _cli(argv: Sequence[str]) -> None:
    from widedeep.cli import main

    rc = main(list(argv))
    if rc != 0:
        raise QuickstartError(f"`widedeep {' '.join(argv)}` exited with {rc}")


def _stage(i: int, n: int, name: str, fn: Callable[[], Any]) -> Any:
    print(f"\n[{i}/{n}] {name} ...", flush=True)
    t0 = time.perf_counter()
    out = fn()
    print(f"[{i}/{n}] {name}: done in {time.perf_counter() - t0:.1f}s", flush=True)
    return out


def _job(name: str) -> str:
    p = platform_path("jobs", name)
    if not p.is_file():
        raise QuickstartError(f"job config {p} is missing (the quickstart uses the checked-in platform/jobs files)")
    return str(p)


def run_quickstart(cfg: QuickstartConfig) -> dict[str, Any]:
    """Run every stage; returns the metrics and the sample recommendations."""
    from widedeep.ray_runtime import ensure_ray

    w = cfg.workdir.resolve()
    w.mkdir(parents=True, exist_ok=True)
    raw, data, runs, bundle = w / "raw", w / "prepared", w / "runs", w / "bundle"
    n = 8
    ensure_ray()
    _stage(
        1,
        n,
        f"generate {cfg.rows:,} synthetic app-store impressions",
        lambda: _cli(
            [
                "generate",
                "--out",
                str(raw),
                "--rows",
                str(cfg.rows),
                "--users",
                str(cfg.users),
                "--items",
                str(cfg.items),
                "--seed",
                str(cfg.seed),
            ]
        ),
    )
    _stage(
        2,
        n,
        "prepare (fit the FeatureSpace with Ray Data, write sharded Parquet)",
        lambda: _cli(
            [
                "prepare",
                "--spec",
                str(platform_path("specs", "appstore.yaml")),
                "--input",
                str(raw),
                "--out",
                str(data),
                "--split",
                "user-time:user_id:timestamp:0.8,0.1,0.1",
            ]
        ),
    )
    common = [
        "--set",
        f"data={data}",
        "--set",
        f"storage_path={runs}",
        "--set",
        f"seed={cfg.seed}",
        "--set",
        f"epochs={cfg.epochs}",
    ]
    ranker_json, retriever_json = w / "ranker.json", w / "retriever.json"
    _stage(
        3,
        n,
        "train the Wide & Deep ranker on Ray Train",
        lambda: _cli(
            [
                "train",
                "--config",
                _job("appstore-ranker.yaml"),
                *common,
                "--set",
                "run_name=quickstart-ranker",
                "--metrics-out",
                str(ranker_json),
            ]
        ),
    )
    _stage(
        4,
        n,
        "train the two-tower retriever on Ray Train",
        lambda: _cli(
            [
                "train",
                "--config",
                _job("appstore-retriever.yaml"),
                *common,
                "--set",
                "run_name=quickstart-retriever",
                "--metrics-out",
                str(retriever_json),
            ]
        ),
    )
    ranker = json.loads(ranker_json.read_text())["checkpoint"]
    retriever = json.loads(retriever_json.read_text())["checkpoint"]
    eval_json, topk_json = w / "eval.json", w / "topk.json"
    _stage(
        5,
        n,
        "evaluate: test AUC of the ranker; full-catalog top-K vs most-popular, item-kNN and EASE",
        lambda: (
            _cli(["evaluate", "--checkpoint", ranker, "--data", str(data / "test"), "--metrics-out", str(eval_json)]),
            _cli(
                [
                    "evaluate",
                    "--task",
                    "topk",
                    "--retriever",
                    retriever,
                    "--ranker",
                    ranker,
                    "--data",
                    str(data / "test"),
                    "--metrics-out",
                    str(topk_json),
                ]
            ),
        ),
    )
    _stage(
        6,
        n,
        "export the serving bundle",
        lambda: _cli(["export", "--ranker", ranker, "--retriever", retriever, "--out", str(bundle)]),
    )
    samples = _stage(7, n, "start Ray Serve and send sample requests", lambda: _serve_and_query(bundle, cfg))
    metrics = {"ranker": json.loads(eval_json.read_text()), "topk": json.loads(topk_json.read_text())}
    _print_summary(metrics, samples)
    if cfg.keep_serving:
        print(f"\nServing on http://127.0.0.1:{cfg.port}/v1/recommend (docs: /docs). Ctrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    _stage(8, n, "stop Serve", _stop_serve)
    return {"metrics": metrics, "samples": samples, "workdir": str(w)}


def _serve_and_query(bundle: Path, cfg: QuickstartConfig) -> list[dict[str, Any]]:
    import httpx
    import pyarrow.parquet as pq
    from ray import serve

    from widedeep.serve.app import build_app_with
    from widedeep.serve.schemas import AppArgs

    serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
    serve.run(build_app_with(AppArgs(bundle=str(bundle))), name="recommender", route_prefix="/")
    base = f"http://127.0.0.1:{cfg.port}"
    users_file = bundle / "users.parquet"
    known = []
    if users_file.exists():
        col = pq.read_table(users_file).column(0).to_pylist()
        known = col[:2]
    requests = [{"user": {"user_id": u}, "context": {"hour": 20, "position": 1}, "k": 5} for u in known]
    requests.append({"user": {"user_age": "25-34", "user_country": "BR"}, "context": {"hour": 9}, "k": 5})
    out = []
    with httpx.Client(timeout=30.0) as client:
        for body in requests:
            r = client.post(f"{base}/v1/recommend", json=body)
            if r.status_code != 200:
                raise QuickstartError(f"POST /v1/recommend {json.dumps(body)} -> {r.status_code}: {r.text}")
            out.append({"request": body, "response": r.json()})
    return out


def _stop_serve() -> None:
    from ray import serve

    serve.shutdown()


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _print_summary(metrics: dict[str, Any], samples: list[dict[str, Any]]) -> None:
    r = metrics["ranker"]
    print("\n=== ranker (Wide & Deep) on the test split ===")
    print("  " + "  ".join(f"{k} {_fmt(r[k])}" for k in ("auc", "logloss", "accuracy", "calibration") if k in r))
    t = metrics["topk"]
    print("=== full-catalog top-K on the test split ===")
    rows = [("retrieval", t.get("retrieval", {})), ("retrieval + ranking", t.get("final", {}))]
    rows += [(f"baseline {k}", v) for k, v in t.get("baselines", {}).items()]
    for name, m in rows:
        shown = {k: v for k, v in m.items() if k.startswith(("recall@", "ndcg@", "hr@"))}
        print(f"  {name:<22}" + "  ".join(f"{k} {_fmt(v)}" for k, v in shown.items()))
    print("=== sample recommendations from POST /v1/recommend ===")
    for s in samples:
        items = ", ".join(f"{it['item_id']} ({it['score']:.3f})" for it in s["response"]["items"])
        print(f"  {json.dumps(s['request'])}\n    -> {items}")
