"""The production loop end to end (marker ``loop``; ``../shared/acceptance/loop.sh`` runs these).

Generated app-store data over three "days" of a drifting world (new apps released on days 1..3,
popularity trending): day 1 is prepared, trained (ranker + retriever) and served from a config
deploy; ``widedeep retrain`` on day 2 passes the verification gate and swaps the live application
in place while a bounded request loop runs against it (zero failed requests); ``retrain`` on a
poisoned day 3 (labels flipped) is refused with the failed checks named, and the application keeps
serving day 2's model. The answers of ``/v1/recommend`` equal in-process scoring of the same bundle,
and ``widedeep recommend`` / ``widedeep predict`` with the served bundle equal ``/v1/recommend`` /
``/v1/rank`` and in-process scoring.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support import wait_until
from widedeep.ports import free_port

pytestmark = [pytest.mark.loop, pytest.mark.ray, pytest.mark.slow]

ROWS, USERS, ITEMS, DRIFT, SEED = 12_000, 500, 200, 0.3, 0
FAST = {"num_workers": 0, "epochs": 2, "log_every_steps": 1000, "early_stopping": {"patience": 1}}
RETRAIN = {**FAST, "epochs": 1}  # a warm start needs fewer epochs than day 1
SETS = [f"ranker_set={json.dumps(RETRAIN)}", f"retriever_set={json.dumps(RETRAIN)}", "gate.topk_users=300"]
APP, ROUTE = "loop", "/loop"


def _cli(*argv: str) -> int:
    from widedeep.cli import main

    return main(list(argv))


def _dashboard() -> str:
    import ray

    url = ray.init(ignore_reinit_error=True).dashboard_url
    return url if "://" in url else f"http://{url}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_session):
    """Three generated days (day 3 poisoned), day 1 prepared, trained and exported."""
    root = tmp_path_factory.mktemp("loop")
    for day, poison in ((1, None), (2, None), (3, "flip-labels")):
        argv = [
            "generate",
            "--out",
            str(root / f"day{day}"),
            "--rows",
            str(ROWS),
            "--users",
            str(USERS),
            "--items",
            str(ITEMS),
            "--seed",
            str(SEED),
            "--day",
            str(day),
            "--drift",
            str(DRIFT),
        ]
        assert _cli(*argv, *(["--poison", poison] if poison else [])) == 0
    assert (
        _cli(
            "prepare",
            "--spec",
            str(ROOT / "platform/specs/appstore.yaml"),
            "--input",
            str(root / "day1"),
            "--out",
            str(root / "prep1"),
            "--split",
            "user-time:user_id:timestamp:0.8,0.1,0.1",
        )
        == 0
    )
    sets = [x for k, v in FAST.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    common = ["--set", f"data={root / 'prep1'}", "--set", f"storage_path={root / 'runs1'}", *sets]
    for name in ("ranker", "retriever"):
        assert (
            _cli(
                "train",
                "--config",
                str(ROOT / f"platform/jobs/appstore-{name}.yaml"),
                *common,
                "--set",
                f"run_name={name}",
                "--metrics-out",
                str(root / f"{name}1.json"),
            )
            == 0
        )
    ck = {n: json.loads((root / f"{n}1.json").read_text())["checkpoint"] for n in ("ranker", "retriever")}
    assert (
        _cli(
            "export",
            "--ranker",
            ck["ranker"],
            "--retriever",
            ck["retriever"],
            "--out",
            str(root / "bundle1"),
            "--version",
            "day1",
        )
        == 0
    )
    return root


@pytest.fixture(scope="module")
def served(world):
    """Day 1's bundle behind a config-deployed (swappable) application on a free port."""
    from ray import serve

    from widedeep.retrain.swap import app_config, deploy_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"bundle": str(world / "bundle1"), "candidates": 50, "default_k": 10, "max_k": 20}
    deployments = [
        {
            "name": "Ingress",
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
            "ray_actor_options": {"num_cpus": 0.25},
        }
    ]
    deploy_app(_dashboard(), app_config(APP, ROUTE, args, deployments))
    url = f"http://127.0.0.1:{port}{ROUTE}"
    wait_until(lambda: _version(url) == "day1", 120, "day 1's model answering")
    yield url
    serve.delete(APP)
    serve.shutdown()


def _version(url: str) -> str | None:
    try:
        r = httpx.get(f"{url}/v1/model", timeout=10)
    except httpx.HTTPError:
        return None
    return r.json().get("model_version") if r.status_code == 200 else None


def _traffic(url: str, stop: threading.Event, deadline: float, versions: Counter, errors: list) -> None:
    """A bounded request loop: until ``stop`` or ``deadline``, known and unknown users."""
    bodies = [{"user": {"user_id": u}, "context": {"hour": u % 24, "position": 1}, "k": 5} for u in range(40)]
    bodies.append({"user": {"user_age": "25-34", "user_country": "BR"}, "context": {"hour": 9}})
    i = 0
    with httpx.Client(timeout=30) as c:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                r = c.post(f"{url}/v1/recommend", json=bodies[i % len(bodies)])
            except httpx.HTTPError as e:
                errors.append(repr(e))
                continue
            finally:
                i += 1
            if r.status_code == 200:
                versions[r.json()["model_version"]] += 1
            else:
                errors.append(f"{r.status_code} {r.text[:200]}")


def _retrain(world: Path, day: int, *extra: str) -> tuple[int, dict]:
    out = world / f"retrain{day}"
    rc = _cli(
        "retrain",
        "--serving",
        str(world / f"bundle{day - 1}" if day == 2 else world / "retrain2" / "bundle"),
        "--input",
        str(world / f"day{day}"),
        "--out",
        str(out),
        *[x for s in SETS for x in ("--set", s)],
        *extra,
    )
    return rc, json.loads((out / "report.json").read_text())


def test_day2_passes_the_gate_and_swaps_under_live_traffic(world, served):
    stop, versions, errors = threading.Event(), Counter(), []
    threads = [
        threading.Thread(target=_traffic, args=(served, stop, time.monotonic() + 900, versions, errors))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: versions["day1"] >= 10 or errors, 60, lambda: f"traffic on day 1 ({versions}, {errors[:3]})")
        rc, report = _retrain(
            world, 2, "--version", "day2", "--serve-address", _dashboard(), "--serve-app", APP, "--serve-url", served
        )
        wait_until(lambda: versions["day2"] >= 10 or errors, 60, lambda: f"traffic on day 2 ({versions}, {errors[:3]})")
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(json.dumps({c["name"]: [c["passed"], c["value"], c["threshold"]] for c in report["checks"]}, indent=1))
    print("drift:", json.dumps(report["drift"]), "seconds:", report["seconds"], "requests:", dict(versions))
    assert rc == 0 and report["passed"], report["failed_checks"]
    assert errors == [], errors[:5]
    assert versions["day1"] > 0 and versions["day2"] >= 10
    assert report["swap"]["confirmed_version"] == "day2" and report["swap"]["previous_bundle"] == str(world / "bundle1")
    # the window brought values the serving vocabulary did not have (released apps): extended, not refitted
    assert report["window"]["new_values"].get("app_id", 0) > 0
    names = {c["name"] for c in report["checks"]}
    assert {
        "finite",
        "auc_vs_serving",
        "logloss_vs_serving",
        "calibration",
        "prediction_spread",
        "auc_on_serving_holdout",
        "topk_recall@50",
        "label_rate",
        "feature_drift_psi",
        "oov_rate_increase",
    } <= names
    # lineage in the served bundle's manifest: parent, window, the checks that passed
    m = httpx.get(f"{served}/v1/model", timeout=10).json()
    assert m["model_version"] == "day2"
    lineage = json.loads((Path(report["bundle"]) / "manifest.json").read_text())["lineage"]
    assert lineage["parent"]["model_version"] == "day1" and lineage["window"]["inputs"] == [str(world / "day2")]
    assert all(c["passed"] for c in lineage["checks"])
    # drift at serving time: the window of requests against day 2's training profile
    assert m["drift"]["window_requests"] > 0 and "user_country" in m["drift"]["features"]


def test_recommend_over_http_equals_in_process_scoring(world, served):
    from widedeep.serve.bundle import load_bundle
    from widedeep.serve.pipeline import RecommendPipeline

    assert _version(served) == "day2"
    pipe = RecommendPipeline(load_bundle(world / "retrain2" / "bundle"))
    for user in ("3", 17, "never-seen"):
        body = {"user": {"user_id": user}, "context": {"hour": 20, "position": 1}, "k": 7}
        r = httpx.post(f"{served}/v1/recommend", json=body, timeout=30)
        assert r.status_code == 200, r.text
        want = pipe.recommend(body["user"], body["context"], k=7, n=50)
        got = r.json()["items"]
        assert [g["item_id"] for g in got] == [w[0] for w in want]
        assert [g["score"] for g in got] == pytest.approx([w[1] for w in want], rel=1e-5)


def test_batch_predict_and_recommend_on_the_served_model(world, served):
    """``widedeep predict`` / ``recommend`` with the bundle being served answer what serving answers."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from widedeep.batch.scorers import load_scorer

    bundle = world / "retrain2" / "bundle"
    assert _version(served) == "day2"
    ctx, k = {"hour": 20, "position": 1}, 7
    assert (
        _cli(
            "recommend", "--bundle", str(bundle), "--out", str(world / "rec"), "-k", str(k), "--candidates", "50",
            "--context", json.dumps(ctx), "--user", "3", "--user", "17", "--user", "123456789", "--workers", "1",
        )
        == 0
    )  # fmt: skip
    rec = pq.read_table(world / "rec")
    for user in (3, 17, 123456789):  # the last one is unknown: the cold-start answer
        r = httpx.post(f"{served}/v1/recommend", json={"user": {"user_id": user}, "context": ctx, "k": k}, timeout=30)
        assert r.status_code == 200, r.text
        mine = rec.filter(pc.equal(pc.cast(rec.column("user"), "int64"), user)).sort_by("rank")
        assert mine.column("item").to_pylist() == [g["item_id"] for g in r.json()["items"]], user
        assert mine.column("score").to_pylist() == pytest.approx([g["score"] for g in r.json()["items"]], rel=1e-5)

    keys = "user_id,app_id,hour,position"
    out = world / "pred"
    assert _cli("predict", "--model", str(bundle), "--input", str(world / "day2"), "--out", str(out),
                "--keys", keys, "--workers", "1") == 0  # fmt: skip
    got = pq.read_table(out, columns=[*keys.split(","), "score"])
    raw = pq.read_table(world / "day2")
    scorer = load_scorer(str(bundle))
    want = scorer.scores(scorer.fs.transform(raw, require_label=False))
    assert got.num_rows == raw.num_rows == ROWS
    assert got.column("user_id").to_pylist() == raw.column("user_id").to_pylist()
    np.testing.assert_allclose(got.column("score").to_numpy(), want, rtol=1e-5, atol=1e-6)
    # and what /v1/rank answers for the same rows (user and context fields from the row, the app from the catalog)
    user_fields = ("user_id", "user_age", "user_gender", "user_country", "installed_apps")
    for i in (0, 1, 2, 500, 4000):
        row = raw.slice(i, 1).to_pylist()[0]
        body = {
            "user": {f: row[f] for f in user_fields},
            "context": {"hour": row["hour"], "position": row["position"]},
            "items": [row["app_id"]],
        }
        r = httpx.post(f"{served}/v1/rank", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["score"] == pytest.approx(float(got.column("score")[i].as_py()), rel=1e-5)


def test_poisoned_day3_is_refused_and_serving_keeps_day2(world, served):
    rc, report = _retrain(world, 3, "--serve-address", _dashboard(), "--serve-app", APP, "--serve-url", served)
    checks = {c["name"]: c for c in report["checks"]}
    print(
        "day 3 refused:",
        json.dumps({n: [c["value"], c["threshold"]] for n, c in checks.items() if not c["passed"]}, indent=1),
    )
    assert rc == 1 and not report["passed"]
    # labels flipped: the window's own held-out slice agrees with the poisoned model; the serving
    # model's held-out slice and the label rate do not
    assert {"auc_on_serving_holdout", "label_rate"} <= set(report["failed_checks"])
    assert checks["auc_on_serving_holdout"]["value"] < 0.5
    assert report["bundle"] is None and report["swap"] is None
    assert not (world / "retrain3" / "bundle").exists()
    assert _version(served) == "day2"
    m = httpx.get(f"{served}/v1/model", timeout=10).json()
    assert m["model_version"] == "day2" and m["last_load_error"] is None
