"""Drift of a replica's requests against the bundle's training profile, over a sliding window.

The bundle's ``profile.json`` holds the training split's distribution of every monitored
feature (``widedeep.features.drift``: quantile bins for numerics, top values / other / OOV for
vocabulary features). A replica counts the same categories for the query-side features of the
requests it prepares (user and context: item features come from the catalog, not from
requests), in ``blocks`` blocks of ``window // blocks`` requests; the window is the last
``blocks`` blocks, so old traffic ages out in steps without keeping every request.

Cost on the request path: one ``to_pydict`` of the prepared one-row query and an integer
increment per monitored feature (a few microseconds); the drift figures themselves (PSI,
OOV rate, top-value shift: one small vector comparison per feature) are computed only when
asked for (``GET /v1/model``) or exported as gauges, at most every ``export_every_s`` seconds.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np
import pyarrow as pa

from widedeep.features.drift import Categories, categorical_drift, finite, monitored, numeric_bins, psi, top_ids


class DriftMonitor:
    """Sliding-window drift of query-side features against a training profile.

    Args:
        fs: the bundle's FeatureSpace.
        profile: the bundle's ``profile.json`` document.
        window: requests in the window (at least ``blocks``).
        blocks: how many steps the window ages out in.
    """

    def __init__(self, fs: Any, profile: dict[str, Any], window: int = 2048, blocks: int = 8) -> None:
        self.fs = fs
        self.block_size = max(1, window // max(blocks, 1))
        self.blocks = max(blocks, 1)
        self.reference: dict[str, np.ndarray] = {}
        self.cats: dict[str, Categories] = {}
        self.numeric: list[str] = []
        ref = profile.get("features", {})
        for name in monitored(fs, sides=("user", "context")):
            p = ref.get(name)
            if p is None:
                continue
            if p["kind"] == "numeric":
                if list(p.get("boundaries", [])) != list(fs.states[name]["boundaries"]):
                    continue  # a profile of other boundaries would compare different bins
                self.numeric.append(name)
            else:
                cats = Categories(fs, name, top_ids(fs, name))
                if cats.names != p["categories"]:
                    continue
                self.cats[name] = cats
            self.reference[name] = np.asarray(p["counts"], dtype=np.int64)
        self.names = list(self.reference)
        self._bin = {n: _binner(fs, n) for n in self.numeric}
        self.full: deque[dict[str, list[int]]] = deque(maxlen=self.blocks - 1)
        self.current = self._empty()
        self.in_current = 0

    def _empty(self) -> dict[str, list[int]]:
        return {n: [0] * len(r) for n, r in self.reference.items()}

    def observe(self, row: pa.Table) -> None:
        """Count one prepared query row (the columns it lacks are skipped).

        Plain Python on purpose: one value per feature, where numpy's per-call overhead would
        cost more than the work."""
        if not self.names:
            return
        cur = self.current
        names = row.column_names
        for name in self.names:
            if name not in names:
                continue
            v = row.column(name)[0].as_py()
            if v is None:
                continue
            counts = cur[name]
            cats = self.cats.get(name)
            if cats is not None:
                lut, last = cats.lut, len(cats.lut) - 1
                for x in v if isinstance(v, list) else (v,):
                    counts[int(lut[min(max(x, 0), last)])] += 1
            else:
                counts[self._bin[name](v)] += 1
        self.in_current += 1
        if self.in_current >= self.block_size:
            self.full.append(cur)
            self.current = self._empty()
            self.in_current = 0

    @property
    def requests(self) -> int:
        return len(self.full) * self.block_size + self.in_current

    def window_counts(self) -> dict[str, np.ndarray]:
        out = {n: np.asarray(c, dtype=np.int64) for n, c in self.current.items()}
        for block in self.full:
            for n, c in block.items():
                out[n] += np.asarray(c, dtype=np.int64)
        return out

    def drift(self) -> dict[str, dict[str, Any]]:
        """Per feature: ``psi`` (numerics) or ``oov_rate``, ``oov_rate_ref``, ``top_shift``
        (categoricals), and ``values`` counted in the window (features with none are left out)."""
        out: dict[str, dict[str, Any]] = {}
        for name, counts in self.window_counts().items():
            n = int(counts.sum())
            if n == 0:
                continue
            ref = self.reference[name]
            d = {"psi": psi(ref, counts)} if name not in self.cats else categorical_drift(ref, counts)
            out[name] = {k: finite(v) for k, v in d.items()} | {"values": n}
        return out

    def info(self) -> dict[str, Any]:
        """``GET /v1/model``'s ``drift`` section."""
        return {
            "window_requests": self.requests,
            "window_size": self.block_size * self.blocks,
            "features": self.drift(),
        }


def _binner(fs: Any, name: str) -> Any:
    """``numeric_bins`` of one value, in plain Python (the request path's scalar case)."""
    nb = len(fs.states[name]["boundaries"])
    if nb and getattr(fs.feature(name), "normalize", None) == "cdf":
        return lambda x: min(max(round(x * nb), 0), nb)
    return lambda x: int(numeric_bins(fs, name, np.asarray([x]))[0])


class DriftExporter:
    """Pushes a monitor's figures to the replica's gauges at most every ``every_s`` seconds."""

    def __init__(self, metrics: Any, every_s: float = 5.0) -> None:
        self.metrics = metrics
        self.every_s = every_s
        self.next_at = 0.0

    def maybe_export(self, monitor: DriftMonitor) -> None:
        now = time.monotonic()
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        self.metrics.drift(monitor.requests, monitor.drift())


class ReplicaDrift:
    """The drift monitor of the model version a replica prepares requests for.

    A new version (a model swap) starts a new window: its requests are compared with its own
    training profile. A bundle without ``profile.json`` is served without drift figures.
    """

    def __init__(self, metrics: Any, window: int = 2048, export_every_s: float = 5.0) -> None:
        self.window = window
        self.exporter = DriftExporter(metrics, export_every_s)
        self.version: str | None = None
        self.monitor: DriftMonitor | None = None

    def _for(self, pipe: Any) -> DriftMonitor | None:
        if pipe.version != self.version:
            profile = pipe.bundle.profile
            self.monitor = DriftMonitor(pipe.fs, profile, self.window) if profile else None
            self.version = pipe.version
        return self.monitor

    def observe(self, pipe: Any, row: pa.Table) -> None:
        m = self._for(pipe)
        if m is not None:
            m.observe(row)
            self.exporter.maybe_export(m)

    def info(self, pipe: Any) -> dict[str, Any] | None:
        m = self._for(pipe)
        return None if m is None else m.info()
