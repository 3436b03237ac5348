"""The package's import layers (``[tool.importlinter]`` in pyproject.toml) hold: ``lint-imports`` passes.

Why a test: the layers are kept by the linter, not by memory, and the suite is what CI runs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> list[str]:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[dev]' (import-linter)")
    return [exe]


def test_import_contracts_are_kept():
    r = subprocess.run([*_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and "Contracts: " in r.stdout


def test_a_serving_module_importing_ray_data_breaks_a_contract():
    """The ``ray.data`` contract is a custom type (``tests/import_contracts.py``): it must catch an import."""
    import grimp
    from importlinter.domain.imports import Module

    from tests.import_contracts import ForbiddenExternalSubmodulesContract, _names

    assert _names("import ray.data", "ray.data") and _names("from ray.data import Dataset", "ray.data")
    assert _names("from ray import serve, data", "ray.data") and not _names("from ray import serve", "ray.data")
    assert not _names("import ray.data_utils", "ray.data")
    graph = grimp.build_graph("widedeep", include_external_packages=True, cache_dir=None)
    graph.add_import(
        importer="widedeep.serve.schemas", imported="ray", line_number=1, line_contents="from ray import data"
    )
    c = ForbiddenExternalSubmodulesContract(
        "t",
        session_options={},
        contract_options={"source_modules": ["widedeep.serve"], "forbidden_modules": ["ray.data"]},
    )
    assert c.source_modules == [Module("widedeep.serve")]
    check = c.check(graph, verbose=False)
    assert not check.kept
    assert any(b["statement"].startswith("widedeep.serve.schemas:1") for b in check.metadata["broken"])
