"""Running the notebooks and checking what their plots show, locally (``tests/test_notebooks.py``) and
on the dev cluster (``tests/cluster/test_notebooks_cluster.py``).

A notebook runs in its own Jupyter kernel (a separate process, as a user's would). To check the
plots' data rather than only that a PNG exists, a probe cell is added to the copy being run: it
prints, as JSON, the very series the plot cells drew (``PROBES``), and the results the notebook
wrote are read back from its work directory (a local directory or the object store) through
``read``: ``read("appstore/manifest.json")`` -> the parsed document.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import nbclient
import nbformat

from tests.conftest import ROOT

NOTEBOOKS = ["01_prepare", "02_train_evaluate", "03_serve_query", "04_census"]
PROBE = "NOTEBOOK-PROBE "

# what each notebook's plots draw (expressions evaluated in its kernel at the end)
PROBES: dict[str, dict[str, str]] = {
    "01_prepare": {"splits": "splits", "oov": "oov", "counts": "counts"},
    "02_train_evaluate": {
        "ep": "ep",
        "auc": "auc",
        "logloss": "logloss",
        "test_auc": "{m: results[m]['auc'] for m in modes}",
    },
    "03_serve_query": {"url": "URL", "users": "users", "latency_ms": "lat.tolist()"},
    "04_census": {"scores": "len(scores)", "mean_prediction": "mp", "fraction_positive": "ml"},
}

Read = Callable[[str], Any]


def probe_cell(name: str, extra: dict[str, str] | None = None) -> str:
    exprs = {**PROBES[name], **(extra or {})}
    body = ", ".join(f"{k!r}: {v}" for k, v in exprs.items())
    return f"import json as _json\nprint({PROBE!r} + _json.dumps({{{body}}}, default=float))"


def execute(
    name: str, *, env: dict[str, str] | None = None, timeout_s: int = 600, extra: dict[str, str] | None = None
) -> tuple[nbformat.NotebookNode, dict[str, Any]]:
    """Run notebook ``name`` (in ``notebooks/``, as its cwd) with the probe cell added before its last
    cell when that cell tears something down (notebook 03 removes its Serve app), else at the end;
    ``env``: the kernel's whole environment (default: this process's). Returns the executed notebook
    and the probe's values. A failing cell raises ``CellExecutionError`` naming it."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    probe = nbformat.v4.new_code_cell(probe_cell(name, extra))
    at = len(nb.cells) - 1 if name == "03_serve_query" else len(nb.cells)
    nb.cells.insert(at, probe)
    client = nbclient.NotebookClient(
        nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute(**({"env": env} if env is not None else {}))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert [o for o in outputs if "image/png" in o.get("data", {})], f"{name}: no plot rendered"
    lines = [ln for ln in printed(nb).splitlines() if ln.startswith(PROBE)]
    assert len(lines) == 1, lines
    return nb, json.loads(lines[0][len(PROBE) :])


def printed(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook's cells printed (streams)."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def check_prepared(read: Read, probe: dict[str, Any], rows: int) -> None:
    """Notebook 01's plots: rows and label rate per split, out-of-vocabulary rate per feature and
    split, the vocabulary counts: the manifest's figures, non-empty."""
    manifest = read("appstore/manifest.json")
    splits = manifest["splits"]
    assert set(splits) == {"train", "valid", "test"} and probe["splits"] == splits, probe["splits"]
    assert sum(s["rows"] for s in splits.values()) == manifest["rows_written"] == rows
    assert all(s["rows"] > 0 and 0.0 < s["label_rate"] < 1.0 for s in splits.values()), splits
    oov = probe["oov"]
    assert oov == manifest["oov_rate"] and oov, oov
    assert all(0.0 <= v <= 1.0 for per_split in oov.values() for v in per_split.values()), oov
    counts = probe["counts"]  # app_id's fitted vocabulary (the spec's item key is not hashed)
    assert counts and len(counts) > 10 and max(counts) > 0, counts[:10]


def check_learning_curves(read: Read, probe: dict[str, Any] | None = None) -> None:
    """Notebook 02's learning curves plot real series: one validation AUC and log loss per epoch
    from the run's history (the keys the notebook reads), not empty lines; its bar chart the test
    AUC of the three models it evaluated."""
    hist = read("nb-wide_deep.json")["history"]
    assert hist, "the training run wrote no per-epoch history"
    for h in hist:
        assert 0.5 < h["valid_auc"] <= 1.0 and 0 < h["valid_logloss"] < 1.0, h
    if probe is None:
        return
    assert probe["ep"] == [h["epoch"] for h in hist] and probe["auc"] == [h["valid_auc"] for h in hist]
    assert probe["logloss"] == [h["valid_logloss"] for h in hist]
    for mode in ("wide", "deep", "wide_deep"):
        ev = read(f"eval-{mode}.json")
        assert probe["test_auc"][mode] == ev["auc"] and 0.5 < ev["auc"] <= 1.0, (mode, ev)


def check_latencies(probe: dict[str, Any], requests: int) -> None:
    """Notebook 03's histogram: one latency per request, all answered (the notebook asserts 200s)."""
    lat = probe["latency_ms"]
    assert len(lat) == requests and all(0.0 < x < 30_000 for x in lat), lat[:10]
    assert probe["users"], "the bundle's known users (the requests' user ids) are empty"


def check_census_results(read: Read, printed_text: str, probe: dict[str, Any] | None = None) -> None:
    """Notebook 04 prepared all of UCI Adult, trained, and printed the test metrics it wrote; its
    reliability plot has points and its histogram one score per test row."""
    manifest = read("adult/manifest.json")
    assert manifest["rows_read"] == manifest["rows_written"] == 48842
    test = read("adult-test.json")
    assert test["rows"] == manifest["splits"]["test"]["rows"] > 4000
    assert 0.85 < test["auc"] <= 1.0 and 0.8 < test["accuracy"] <= 1.0, test
    assert f"'auc': {round(test['auc'], 4)}" in printed_text
    if probe is None:
        return
    assert probe["scores"] == test["rows"]
    points = [
        (p, f) for p, f in zip(probe["mean_prediction"], probe["fraction_positive"], strict=True) if not math.isnan(p)
    ]
    assert len(points) >= 5 and all(0.0 <= p <= 1.0 and 0.0 <= f <= 1.0 for p, f in points), points
