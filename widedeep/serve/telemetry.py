"""Serving metrics, exported beside Serve's own (``ray.serve.metrics`` -> Ray's Prometheus endpoint).

- ``widedeep_serve_stage_latency_ms{stage}``: prepare, retrieve, rank (histogram)
- ``widedeep_serve_candidates`` : candidates retrieved per request (histogram)
- ``widedeep_serve_feature_ids_total{feature}`` / ``widedeep_serve_feature_oov_total{feature}``:
  ids transformed from requests and how many were out of vocabulary; the OOV rate per feature is
  their ratio (``rate(oov) / rate(ids)`` in PromQL). The replica also keeps the running totals
  so ``GET /v1/model`` can show its OOV rates without a Prometheus server.
- ``widedeep_serve_model_load_failures_total``: bundles that failed to load while the replica
  kept serving its current version (``GET /v1/model`` shows the last one as ``last_load_error``).
- drift of the requests against the bundle's training profile over the replica's sliding window
  (``widedeep.serve.drift``; gauges, refreshed at most every few seconds):
  ``widedeep_serve_feature_psi{feature}`` (numerics), ``widedeep_serve_feature_oov_rate{feature}``
  and ``widedeep_serve_feature_top_shift{feature}`` (vocabulary features), and
  ``widedeep_serve_drift_window_requests`` (requests the figures are over).

Exported names (Ray prefixes ``ray_``; every node serves them at
``http://<node>:<MetricsExportPort>/metrics``, the port is in ``ray.nodes()`` and in
``/tmp/ray/prom_metrics_service_discovery.json``; checked by
``tests/serve/test_app.py::test_custom_metrics_reach_rays_prometheus_endpoint``)::

    ray_widedeep_serve_stage_latency_ms_bucket{stage="rank",le="5.0",...}   also _count, _sum
    ray_widedeep_serve_candidates_bucket{le="500.0",...}                    also _count, _sum
    ray_widedeep_serve_feature_ids_total{feature="country",...}
    ray_widedeep_serve_feature_oov_total{feature="country",...}
    ray_widedeep_serve_model_load_failures_total{...}
    ray_widedeep_serve_feature_psi{feature="app_size_mb",...}
    ray_widedeep_serve_feature_oov_rate{feature="country",...}
    ray_widedeep_serve_feature_top_shift{feature="country",...}
    ray_widedeep_serve_drift_window_requests{...}

Serve adds ``application``, ``deployment`` and ``replica`` tags to each, and its own metrics sit
beside them, e.g. ``ray_serve_num_http_requests_total{application, route="/v1/recommend",
method, status_code}`` and ``ray_serve_deployment_request_counter_total``. Ray exports about
every 10 s (``metrics_report_interval_ms``), so a fresh observation takes that long to appear.

Created inside replicas (never at import): a metric object registers with the Ray worker.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

_LATENCY_BOUNDARIES = [0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 200, 500, 1000]
_CANDIDATE_BOUNDARIES = [1, 10, 50, 100, 200, 500, 1000, 2000, 5000]


class ServingMetrics:
    """The replica's metric objects and its running OOV totals."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self.latency = Histogram(
            "widedeep_serve_stage_latency_ms",
            description="latency of one serving stage",
            boundaries=_LATENCY_BOUNDARIES,
            tag_keys=("stage",),
        )
        self.candidates = Histogram(
            "widedeep_serve_candidates",
            description="candidates retrieved per request",
            boundaries=_CANDIDATE_BOUNDARIES,
        )
        self.ids = Counter(
            "widedeep_serve_feature_ids_total", description="ids transformed from requests", tag_keys=("feature",)
        )
        self.oov = Counter(
            "widedeep_serve_feature_oov_total", description="out-of-vocabulary ids in requests", tag_keys=("feature",)
        )
        self.load_failures = Counter(
            "widedeep_serve_model_load_failures_total",
            description="bundles that failed to load while a model was being served "
            "(the replica kept serving its current version)",
        )
        self.psi = Gauge(
            "widedeep_serve_feature_psi",
            description="population stability index of a numeric "
            "feature in the replica's request window against the training data",
            tag_keys=("feature",),
        )
        self.oov_rate = Gauge(
            "widedeep_serve_feature_oov_rate",
            description="out-of-vocabulary share of a feature's ids in the replica's request window",
            tag_keys=("feature",),
        )
        self.top_shift = Gauge(
            "widedeep_serve_feature_top_shift",
            description="total variation distance between "
            "the training and the request window's distribution over a feature's top values",
            tag_keys=("feature",),
        )
        self.window = Gauge(
            "widedeep_serve_drift_window_requests", description="requests in the replica's drift window"
        )
        self._totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def stage(self, stage: str, ms: float) -> None:
        self.latency.observe(ms, tags={"stage": stage})

    def load_failed(self) -> None:
        self.load_failures.inc()

    def retrieved(self, n: int) -> None:
        self.candidates.observe(n)

    def feature_oov(self, counts: dict[str, tuple[int, int]]) -> None:
        for feature, (oov, n) in counts.items():
            if n:
                self.ids.inc(n, tags={"feature": feature})
                t = self._totals[feature]
                t[1] += n
                if oov:
                    self.oov.inc(oov, tags={"feature": feature})
                    t[0] += oov

    def drift(self, requests: int, figures: dict[str, dict[str, Any]]) -> None:
        """Set the drift gauges from ``DriftMonitor.drift()`` (figures that are None are left as they were)."""
        self.window.set(requests)
        gauges = {"psi": self.psi, "oov_rate": self.oov_rate, "top_shift": self.top_shift}
        for feature, d in figures.items():
            for key, gauge in gauges.items():
                if d.get(key) is not None:
                    gauge.set(d[key], tags={"feature": feature})

    def oov_rates(self) -> dict[str, Any]:
        return {f: {"oov": o, "ids": n, "rate": o / n} for f, (o, n) in sorted(self._totals.items()) if n}
