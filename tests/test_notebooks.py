"""The notebooks execute end to end at small sizes and their plots render.

Each notebook runs in its own Jupyter kernel (a separate process with its own local Ray, as a user's
would), in order, sharing one work directory so later notebooks reuse the prepared data.
"""

from __future__ import annotations

import os
import socket

import pytest

from tests.conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = ["01_prepare", "02_train_evaluate", "03_serve_query", "04_census"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nb_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_and_plots(name, nb_workdir, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("WIDEDEEP_NOTEBOOK_WORKDIR", str(nb_workdir))
    monkeypatch.setenv("WIDEDEEP_REPO", str(ROOT))
    monkeypatch.setenv("WIDEDEEP_NOTEBOOK_PORT", str(_free_port()))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    if name == "04_census" and not (ROOT.parent / "shared" / "data" / "adult.parquet").exists():
        text = "".join(o.get("text", "") for o in outputs)
        assert "is not present" in text
    else:
        assert images, f"{name}: no plot rendered"
