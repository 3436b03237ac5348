"""The Serve application over real HTTP on the session's local Ray, with small real bundles.

One fused app is shared by the module (Serve start-up costs seconds); the chain app, the model
swap and the autoscaling test deploy their own and clean up. This is the only test module that
uses Serve; its HTTP proxy listens on a free port (never the default 8000, which another Serve on
the machine may hold). Waits poll what they wait for, with a deadline (``tests.support.wait_until``).
"""

from __future__ import annotations

import functools
import json
import subprocess
import threading
from collections import Counter

import httpx
import pytest

from tests.serve.conftest import corrupt_copy
from tests.support import wait_until
from widedeep.ports import free_port
from widedeep.serve.bundle import load_bundle
from widedeep.serve.pipeline import RecommendPipeline

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SMALL = {
    "Ingress": {"ray_actor_options": {"num_cpus": 0.25}},
    "Retriever": {"ray_actor_options": {"num_cpus": 0.25}},
    "Ranker": {"ray_actor_options": {"num_cpus": 0.25}},
}


def _args(bundle, **kw):
    return {
        "bundle": str(bundle),
        "candidates": 50,
        "default_k": 5,
        "max_k": 20,
        "max_rank_items": 40,
        "max_body_bytes": 4096,
        **kw,
    }


@pytest.fixture(scope="module")
def serve_app(ray_session, bundles):
    from ray import serve

    from widedeep.serve.app import build_app_with

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app_with(_args(bundles[0]), {"Ingress": SMALL["Ingress"]}), name="rec", route_prefix="/")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    serve.shutdown()


@pytest.fixture(scope="module")
def reference(bundles):
    """The in-process pipeline over the same bundle: what the HTTP answers must equal."""
    return RecommendPipeline(load_bundle(bundles[0]))


def test_recommend_matches_in_process_pipeline(serve_app, reference):
    body = {"user": {"user_id": "u3"}, "context": {"device": "ios"}, "k": 7, "exclude": ["i5", "i9"]}
    r = serve_app.post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_version"] == "v1"
    got = [(x["item_id"], x["score"]) for x in out["items"]]
    want = reference.recommend(body["user"], body["context"], k=7, n=50, exclude=body["exclude"])
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-5)
    # the order is the offline evaluation's (ranker + retrieval blend, tested in test_history_serving);
    # the scores are the ranker's probabilities
    assert all(0.0 < s < 1.0 for _, s in got)
    seen = set(reference.bundle.item_keys[reference.bundle.seen["u3"]].tolist())
    assert not ({i for i, _ in got} & (seen | {"i5", "i9"}))


def test_known_user_fields_override_the_user_table(serve_app):
    base = serve_app.post("/v1/recommend", json={"user": {"user_id": "u3"}, "k": 20}).json()["items"]
    moved = serve_app.post("/v1/recommend", json={"user": {"user_id": "u3", "country": "c7", "age": 70}, "k": 20})
    assert moved.status_code == 200
    assert [x["score"] for x in moved.json()["items"]] != [x["score"] for x in base]


def test_cold_and_unknown_values_are_served(serve_app, reference):
    # an unknown user with no features: popularity; an unknown category: the OOV id
    cold = serve_app.post("/v1/recommend", json={"user": {"user_id": "never-seen"}, "context": {"device": "fridge"}})
    assert cold.status_code == 200 and len(cold.json()["items"]) == 5
    r = serve_app.post("/v1/recommend", json={"user": {"country": "atlantis", "interests": ["i1", "zz"]}, "k": 3})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    rates = serve_app.get("/v1/model").json()["serving"]["oov_rates_this_replica"]
    assert rates["country"]["oov"] >= 1 and 0 < rates["country"]["rate"] <= 1
    assert rates["interests"]["oov"] >= 1 and rates["interests"]["rate"] < 1  # "i1" is known, "zz" is not
    assert rates["device"]["oov"] >= 1


def test_rank_scores_in_given_order(serve_app, reference):
    items = ["i12", "i3", "i250", "i3"]
    r = serve_app.post("/v1/rank", json={"user": {"user_id": "u1"}, "context": {"device": "web"}, "items": items})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert [x["item_id"] for x in got] == items
    want = reference.rank({"user_id": "u1"}, {"device": "web"}, items)
    assert [x["score"] for x in got] == pytest.approx(want, rel=1e-5)
    assert got[1]["score"] == got[3]["score"]


def test_model_health_and_openapi(serve_app):
    m = serve_app.get("/v1/model").json()
    assert m["model_version"] == "v1" and m["counts"]["items"] == 300
    assert {f["name"] for f in m["features"]} >= {"country", "genre", "country_x_genre"}
    assert m["request_fields"]["user_key"] == "user_id"
    assert serve_app.get("/healthz").json() == {"status": "ok", "model_version": "v1"}
    paths = serve_app.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/rank", "/v1/model", "/healthz"} <= set(paths)


BAD = [
    (b"{not json", 400, "body"),
    (b'{"user": {"user_id": "u1"}, "k": 0}', 422, "body.k"),
    (b'{"k": 21}', 422, "body.k"),
    (b'{"k": "5"}', 422, "body.k"),
    (b'{"k": 2.5}', 422, "body.k"),
    (b'{"user": {"age": NaN}}', 422, "body.user.age"),
    (b'{"user": {"age": Infinity}}', 422, "body.user.age"),
    (b'{"user": {"age": "old"}}', 422, "body.user.age"),
    (b'{"user": {"agee": 3}}', 422, "body.user.agee"),
    (b'{"context": {"device": {"a": 1}}}', 422, "body.context.device"),
    (b'{"user": {"interests": ["a", 1]}}', 422, "body.user.interests"),
    (b'{"usr": {}}', 422, "body.usr"),
    (b"[1, 2]", 422, "body"),
    (b'{"exclude": [1.5]}', 422, "body.exclude"),
]
BAD_RANK = [
    (b'{"user": {}}', 422, "body.items"),
    (b'{"items": []}', 422, "body.items"),
    (json.dumps({"items": [f"i{i}" for i in range(41)]}).encode(), 422, "body.items"),
    (b'{"items": ["i1", "no-such-item"]}', 422, "body.items[1]"),
]


def test_bad_request_barrage_then_good_requests(serve_app):
    headers = {"content-type": "application/json"}
    for body, status, field in BAD:
        r = serve_app.post("/v1/recommend", content=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"].startswith(field), (body, r.json())
        assert r.json()["field"].startswith(field)
    for body, status, field in BAD_RANK:
        r = serve_app.post("/v1/rank", content=body, headers=headers)
        assert r.status_code == status, (body, r.text)
        assert r.json()["field"] == field, (body, r.json())
    huge = json.dumps({"exclude": [f"i{i}" for i in range(2000)]}).encode()
    r = serve_app.post("/v1/recommend", content=huge, headers=headers)
    assert r.status_code == 413 and r.json()["field"] == "body" and "4096" in r.json()["error"]
    for u in ("u1", "u2", "nobody"):
        ok = serve_app.post("/v1/recommend", json={"user": {"user_id": u}, "context": {"device": "tv"}})
        assert ok.status_code == 200 and len(ok.json()["items"]) == 5


def _traffic(base_url: str, stop: threading.Event, path: str, out: Counter, errors: list) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        while not stop.is_set():
            try:
                r = c.post(path, json={"user": {"user_id": "u2"}, "context": {"device": "ios"}})
            except httpx.HTTPError as e:
                errors.append(repr(e))
                continue
            if r.status_code == 200:
                out[r.json()["model_version"]] += 1
            else:
                errors.append(f"{r.status_code} {r.text[:200]}")


def test_model_swap_during_traffic(serve_app, bundles):
    from ray import serve

    from widedeep.serve.app import build_app_with

    stop, versions, errors = threading.Event(), Counter(), []
    args = (str(serve_app.base_url), stop, "/v1/recommend", versions, errors)
    threads = [threading.Thread(target=_traffic, args=args) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: versions["v1"] >= 10 or errors, 60, lambda: f"10 answers from v1 ({versions}, {errors[:3]})")
        # serve.run gives every deploy a new code version: a rolling update (new replicas load v2,
        # old ones drain); a config deploy changing only user_config reconfigures in place (below)
        serve.run(build_app_with(_args(bundles[1]), {"Ingress": SMALL["Ingress"]}), name="rec", route_prefix="/")
        wait_until(lambda: versions["v2"] >= 20 or errors, 60, lambda: f"20 answers from v2 ({versions}, {errors[:3]})")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert versions["v1"] > 0 and versions["v2"] >= 20, versions
    assert serve_app.get("/v1/model").json()["model_version"] == "v2"
    serve.run(build_app_with(_args(bundles[0]), {"Ingress": SMALL["Ingress"]}), name="rec", route_prefix="/")
    assert serve_app.get("/healthz").json()["model_version"] == "v1"


def _dashboard_address() -> str:
    """The session Ray's dashboard (where ``serve deploy`` sends configs): ``ray.init`` on an
    initialised Ray returns its context without restarting it."""
    import ray

    url = ray.init(ignore_reinit_error=True).dashboard_url
    assert url, "the session's Ray has no dashboard (widedeep.ray_runtime.ensure_ray starts one)"
    return url if "://" in url else f"http://{url}"


def _deploy_config(client: httpx.Client, name: str, route: str, args_bundle, user_bundle, cache, tmp_path) -> None:
    """Deploy with ``serve deploy``: a config, so changing only a deployment's ``user_config``
    keeps the app's code version and Serve calls ``reconfigure`` on the running replicas
    (``serve.run`` gives every deploy a new code version: a rolling update with new replicas).
    ``serve deploy`` returns once the controller has the config; callers wait for its effect."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    cfg = {
        "http_options": {"host": client.base_url.host, "port": client.base_url.port},
        "applications": [
            {
                "name": name,
                "route_prefix": route,
                "import_path": "widedeep.serve.app:build_app",
                "args": _args(args_bundle),
                "runtime_env": {"env_vars": {"WIDEDEEP_BUNDLE_CACHE": str(cache)}},
                "deployments": [
                    {
                        "name": "Ingress",
                        "user_config": {"bundle": str(user_bundle)},
                        "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                        "ray_actor_options": {"num_cpus": 0.25},
                    }
                ],
            }
        ],
    }
    ServeDeploySchema.model_validate(cfg)  # what the dashboard checks: fail here with the field's name
    path = tmp_path / f"serve-{name}-{len(list(tmp_path.glob('serve-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        ["serve", "deploy", str(path), "--address", _dashboard_address()], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


def _model(client: httpx.Client, prefix: str) -> dict | None:
    """``GET {prefix}/v1/model``, or None while the route does not answer 200 yet."""
    try:
        r = client.get(f"{prefix}/v1/model")
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def test_bad_bundle_during_live_swap_keeps_serving(serve_app, bundles, tmp_path):
    from ray import serve

    bad = corrupt_copy(bundles[0], tmp_path / "bad")
    cache = tmp_path / "cache"
    deploy = functools.partial(_deploy_config, serve_app, "swap", "/swap", bundles[0], cache=cache, tmp_path=tmp_path)
    deploy(bundles[0])
    try:
        wait_until(
            lambda: (
                serve.status().applications.get("swap") is not None
                and serve.status().applications["swap"].status == "RUNNING"
            ),
            120,
            "app 'swap' RUNNING",
        )
        first = wait_until(lambda: _model(serve_app, "/swap"), 60, "/swap/v1/model answering")
        assert first["last_load_error"] is None
        stop, versions, errors = threading.Event(), Counter(), []
        threads = [
            threading.Thread(
                target=_traffic, args=(str(serve_app.base_url), stop, "/swap/v1/recommend", versions, errors)
            )
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: sum(versions.values()) >= 5 or errors, 60, lambda: f"traffic on /swap ({versions})")
            deploy(bad)  # only user_config changes: reconfigure
            wait_until(
                lambda: ((_model(serve_app, "/swap") or {}).get("last_load_error") or {}).get("bundle") == str(bad),
                60,
                "the replica's reconfigure to the bad bundle to fail",
            )
            served_before = sum(versions.values())
            # traffic on the replica whose reconfigure has just failed: the replica keeps answering
            wait_until(
                lambda: sum(versions.values()) >= served_before + 10 or errors,
                60,
                lambda: f"10 more answers after the failed reconfigure ({versions}, {errors[:3]})",
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert errors == []
        assert sum(versions.values()) > served_before  # the replica kept answering
        assert set(versions) == {"v1"} and versions["v1"] > 0, versions
        m = serve_app.get("/swap/v1/model").json()
        assert m["model_version"] == "v1" and m["bundle"] == str(bundles[0])
        err = m["last_load_error"]
        assert err["bundle"] == str(bad), err
        assert str(bad / "ranker.safetensors") in err["error"] and "does not match" in err["error"], err
        assert err["at"]  # an ISO timestamp
        assert serve.status().applications["swap"].status == "RUNNING"
        failures = "ray_widedeep_serve_model_load_failures_total"
        got = _scrape_until({failures: lambda s: _total(s, deployment="Ingress") >= 1}, "swap")
        assert _total(got[failures]) == 1

        uri = bundles[1].resolve().as_uri()  # a good bundle, at a URI: swapped, error cleared
        deploy(uri)
        wait_until(
            lambda: (_model(serve_app, "/swap") or {}).get("model_version") == "v2",
            120,
            "the replica's reconfigure to the good bundle at a URI",
        )
        r = serve_app.post("/swap/v1/recommend", json={"user": {"user_id": "u2"}})
        assert r.status_code == 200 and r.json()["model_version"] == "v2"
        m = serve_app.get("/swap/v1/model").json()
        assert m["model_version"] == "v2" and m["last_load_error"] is None
        assert m["bundle"] == uri and m["bundle_local_path"].startswith(str(cache))
    finally:
        serve.delete("swap")


def _metrics_port() -> int:
    """The node's Prometheus export port (what Prometheus scrapes; see ``ray.nodes()``)."""
    import ray

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    return int(node["MetricsExportPort"])


def _scrape_until(wanted: dict[str, object], app: str, timeout_s: float = 60.0) -> dict[str, list]:
    """Poll the endpoint until every ``wanted[name](samples of name in app)`` holds.

    Ray exports metrics every few seconds (``metrics_report_interval_ms``), so the first scrapes
    may not have them yet. Returns ``{sample name: [(labels, value), ...]}`` of the last scrape.
    """
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{_metrics_port()}/metrics"
    last: dict[str, object] = {"samples": {}, "missing": list(wanted)}

    def scrape() -> dict[str, list] | None:
        samples: dict[str, list] = {}
        text = httpx.get(url, timeout=10).text
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.labels.get("application") == app:
                    samples.setdefault(smp.name, []).append((smp.labels, smp.value))
        missing = [n for n, ok in wanted.items() if not ok(samples.get(n, []))]
        last.update(samples=samples, missing=missing)
        return None if missing else samples

    def still_missing() -> str:
        present = sorted(n for n in last["samples"] if "widedeep" in n or n.startswith("ray_serve_num_http"))
        return f"{url} to have {last['missing']} (present for app {app!r}: {present})"

    return wait_until(scrape, timeout_s, still_missing, interval_s=2.0)


def _total(samples: list, **labels: str) -> float:
    return sum(v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items()))


def test_custom_metrics_reach_rays_prometheus_endpoint(serve_app):
    """Our metrics appear beside Serve's own on the endpoint Prometheus scrapes, with their tags."""
    n = 6
    for i in range(n):
        r = serve_app.post(
            "/v1/recommend", json={"user": {"user_id": f"u{i}", "country": "atlantis"}, "context": {"device": "ios"}}
        )
        assert r.status_code == 200
    assert serve_app.post("/v1/rank", json={"user": {"user_id": "u1"}, "items": ["i1", "i2"]}).status_code == 200
    rank = "ray_widedeep_serve_stage_latency_ms_count"
    wanted = {
        rank: lambda s: _total(s, stage="rank", deployment="Ingress") >= n + 1,
        "ray_widedeep_serve_stage_latency_ms_bucket": lambda s: _total(s, stage="retrieve", le="+Inf") >= n,
        "ray_widedeep_serve_candidates_count": lambda s: _total(s) >= n,
        "ray_widedeep_serve_feature_ids_total": lambda s: _total(s, feature="country") >= n,
        "ray_widedeep_serve_feature_oov_total": lambda s: _total(s, feature="country") >= n,
        "ray_serve_num_http_requests_total": lambda s: (
            _total(s, route="/v1/recommend", status_code="200") >= n
            and _total(s, route="/v1/rank", status_code="200") >= 1
        ),
    }
    got = _scrape_until(wanted, "rec")
    buckets = [(lab, v) for lab, v in got["ray_widedeep_serve_stage_latency_ms_bucket"] if lab["stage"] == "rank"]
    assert {lab["le"] for lab, _ in buckets} >= {"0.25", "1.0", "1000.0", "+Inf"}
    assert _total(buckets, le="+Inf") == _total(got[rank], stage="rank")
    assert _total(got["ray_widedeep_serve_stage_latency_ms_sum"], stage="rank") > 0
    assert {lab["stage"] for lab, _ in got[rank]} == {"prepare", "retrieve", "rank"}
    # the OOV counter carries the feature tag: "atlantis" is OOV, a known device is not
    oov = got["ray_widedeep_serve_feature_oov_total"]
    assert _total(oov, feature="device") <= _total(got["ray_widedeep_serve_feature_ids_total"], feature="device")
    assert all(lab.get("feature") and lab.get("deployment") == "Ingress" and lab.get("replica") for lab, _ in oov)


def _replicas(app: str, deployment: str) -> int:
    from ray import serve

    st = serve.status().applications[app].deployments[deployment]
    return int(st.replica_states.get("RUNNING", 0))


def test_chain_pipeline_answers_like_fused_and_ranker_autoscales(serve_app, reference, bundles):
    from ray import serve

    from widedeep.serve.app import build_app_with

    fast = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "metrics_interval_s": 0.2,
        "look_back_period_s": 1.0,
        "upscale_delay_s": 0.5,
        "downscale_delay_s": 2.0,
    }
    opts = {**SMALL, "Ranker": {**SMALL["Ranker"], "autoscaling_config": fast}}
    serve.run(build_app_with(_args(bundles[0], pipeline="chain"), opts), name="chain", route_prefix="/chain")
    try:
        body = {"user": {"user_id": "u3"}, "context": {"device": "ios"}, "k": 7, "exclude": ["i5"]}
        r = serve_app.post("/chain/v1/recommend", json=body)
        assert r.status_code == 200, r.text
        want = reference.recommend(body["user"], body["context"], k=7, n=50, exclude=["i5"])
        assert [x["item_id"] for x in r.json()["items"]] == [w[0] for w in want]
        # an error raised in the Ranker (unknown item) or the Retriever (bad value) crosses the
        # deployments as its message alone, exactly what the fused app answers: no remote traceback
        for path, req in [
            ("/v1/rank", {"user": {"user_id": "u1"}, "items": ["i1", "nope"]}),
            ("/v1/recommend", {"user": {"age": "old"}}),
        ]:
            chain, fused = serve_app.post("/chain" + path, json=req), serve_app.post(path, json=req)
            assert chain.status_code == fused.status_code == 422, chain.text
            assert chain.json() == fused.json(), chain.text
            assert not any(s in chain.text for s in ("Traceback", "pid=", "ip=", "actor_id", ".py", "Ray")), chain.text
        assert chain.json()["field"] == "body.user.age"
        assert serve_app.post("/chain/v1/rank", json={"user": {}, "items": ["nope"]}).json() == {
            "error": "body.items[0]: unknown item 'nope' (not in the bundle's catalog)",
            "field": "body.items[0]",
        }
        # /healthz reports the version the chain's replicas serve (what /v1/model says)
        health = serve_app.get("/chain/healthz")
        assert health.status_code == 200, health.text
        assert health.json() == {"status": "ok", "model_version": "v1", "versions": {"Retriever": "v1", "Ranker": "v1"}}
        assert serve_app.get("/chain/v1/model").json()["model_version"] == "v1"
        assert _replicas("chain", "Ranker") == 1

        stop, versions, errors = threading.Event(), Counter(), []
        threads = [
            threading.Thread(
                target=_traffic, args=(str(serve_app.base_url), stop, "/chain/v1/recommend", versions, errors)
            )
            for _ in range(8)
        ]
        for t in threads:
            t.start()
        try:
            peak = wait_until(
                lambda: (n := _replicas("chain", "Ranker")) >= 2 and n,
                180,  # a deadline, not a wait: a new replica starts a process and loads torch (slow on a busy machine)
                lambda: f"the Ranker to scale up under load ({sum(versions.values())} requests served)",
                interval_s=0.5,
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert peak == 2, f"Ranker did not scale up under load ({sum(versions.values())} requests served)"
        assert errors == []
        wait_until(lambda: _replicas("chain", "Ranker") <= 1, 180, "the Ranker to scale back down", interval_s=0.5)
        assert _replicas("chain", "Ranker") == 1
    finally:
        serve.delete("chain")
