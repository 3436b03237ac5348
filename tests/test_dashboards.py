"""The Grafana dashboard and the Prometheus scrape config under platform/ (no Ray started).

Every metric a dashboard query names must be exported: either registered by the recommender's
code (``widedeep/serve/telemetry.py``: Ray prefixes ``ray_``; a histogram is scraped as
``_bucket``/``_count``/``_sum``) or one of Ray Serve's own ``ray_serve_*`` metrics as Ray's
bundled Serve Grafana dashboards (in the installed wheel) query them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import ray
import yaml

from tests.conftest import ROOT

DASHBOARD = ROOT / "platform" / "grafana" / "widedeep-serve.json"
PROMETHEUS = ROOT / "platform" / "prometheus" / "prometheus.yml"
TELEMETRY = ROOT / "widedeep" / "serve" / "telemetry.py"

# PromQL words that look like metric names: functions, aggregations, modifiers, label names
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "label_values",
    "topk",
    "bottomk",
    "clamp_min",
    "clamp_max",
    "abs",
    "delta",
    "deriv",
}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside ``{...}`` label matchers and
    ``[...]`` ranges that are not PromQL words or numbers, nor ``by (...)`` label lists."""
    text = re.sub(r"\{[^}]*\}", " ", expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    text = re.sub(r'"[^"]*"', " ", text)
    return {w for w in _IDENT.findall(text) if w not in PROMQL_WORDS and not w.startswith("$")}


def registered_names() -> set[str]:
    """What telemetry.py registers, as Prometheus scrapes it from Ray's endpoint."""
    src = TELEMETRY.read_text()
    out = set()
    for kind, name in re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"([a-z_]+)"', src):
        base = f"ray_{name}"
        out |= {f"{base}_bucket", f"{base}_count", f"{base}_sum"} if kind == "Histogram" else {base}
    return out


def serve_documented_names() -> set[str]:
    """``ray_serve_*`` names of Ray's own Serve dashboards in the installed Ray."""
    panels = Path(ray.__file__).parent / "dashboard" / "modules" / "metrics" / "dashboards"
    names = set()
    for f in panels.glob("serve*_panels.py"):
        names |= set(re.findall(r"ray_serve_[a-z_]+[a-z]", f.read_text()))
    return names


def _queries(dashboard: dict) -> list[str]:
    out = []
    for p in dashboard["panels"]:
        out += [t["expr"] for t in p.get("targets", [])]
        out += [t["expr"] for sub in p.get("panels", []) for t in sub.get("targets", [])]
    out += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return out


def test_metric_names_parser():
    e = (
        "histogram_quantile(0.99, sum by (le, stage) "
        '(rate(ray_widedeep_serve_stage_latency_ms_bucket{application=~"$app"}[1m])))'
    )
    assert metric_names(e) == {"ray_widedeep_serve_stage_latency_ms_bucket"}
    assert metric_names("sum(rate(a_total[5m])) / sum(rate(b_total[5m]))") == {"a_total", "b_total"}
    assert metric_names("label_values(ray_serve_num_http_requests_total, application)") >= {
        "ray_serve_num_http_requests_total"
    }


def test_every_dashboard_metric_is_exported():
    d = json.loads(DASHBOARD.read_text())
    queries = _queries(d)
    assert len(queries) >= 15
    used = set().union(*(metric_names(q) for q in queries)) - {"application"}
    exported = registered_names() | serve_documented_names()
    assert {"ray_widedeep_serve_feature_psi", "ray_widedeep_serve_stage_latency_ms_bucket"} <= registered_names()
    assert "ray_serve_num_http_requests_total" in serve_documented_names()
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries metrics nothing exports: {missing}"
    # what the issue asks the dashboard to show: latency per stage, candidates, OOV and drift per
    # feature, load failures, replicas; and every metric the recommender registers is on it
    shown = registered_names() - {n for n in registered_names() if n.endswith(("_count", "_sum"))}
    assert shown <= used
    assert {"ray_serve_deployment_replica_healthy", "ray_serve_http_request_latency_ms_bucket"} <= used
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_uses_rays_service_discovery_file():
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = cfg["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    # the same file Ray's own `ray metrics launch-prometheus` config reads
    ray_cfg = Path(ray.__file__).parent / "dashboard/modules/metrics/export/prometheus/prometheus.yml"
    ray_job = yaml.safe_load(ray_cfg.read_text())["scrape_configs"][0]
    assert ray_job["file_sd_configs"] == job["file_sd_configs"]
