"""The notebooks execute end to end at small sizes and their plots show real data.

Each notebook runs in its own Jupyter kernel (a separate process with its own local Ray, as a user's
would), in order, sharing one work directory so later notebooks reuse the prepared data. Notebook
04 reads the committed UCI Adult copy (tests/assets). The checks read what the notebooks wrote and
what their plots drew (``tests/notebook_checks.py``); ``tests/cluster/test_notebooks_cluster.py``
runs the same notebooks against a multi-node cluster with an object store.
"""

from __future__ import annotations

import pytest

from tests import notebook_checks as checks
from tests.conftest import ADULT, ROOT
from widedeep.paths import read_json
from widedeep.ports import free_port

ROWS = 12_000  # the notebooks' size with WIDEDEEP_NOTEBOOK_SMALL=1
REQUESTS = 60  # notebook 03's latency sample at that size


@pytest.fixture(scope="module")
def nb_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("name", checks.NOTEBOOKS)
def test_notebook_executes_and_plots(name, nb_workdir, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("WIDEDEEP_NOTEBOOK_WORKDIR", str(nb_workdir))
    monkeypatch.setenv("WIDEDEEP_REPO", str(ROOT))
    monkeypatch.setenv("WIDEDEEP_NOTEBOOK_PORT", str(free_port()))
    monkeypatch.setenv("WIDEDEEP_ADULT", str(ADULT))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    nb, probe = checks.execute(name)

    def read(rel: str):
        return read_json(nb_workdir / rel)

    if name == "01_prepare":
        checks.check_prepared(read, probe, ROWS)
    if name == "02_train_evaluate":
        checks.check_learning_curves(read, probe)
    if name == "03_serve_query":
        checks.check_latencies(probe, REQUESTS)
        assert probe["url"].startswith("http://127.0.0.1:"), probe["url"]
    if name == "04_census":
        checks.check_census_results(read, checks.printed(nb), probe)
