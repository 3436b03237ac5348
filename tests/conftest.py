"""Shared fixtures. One Ray instance per pytest session (``ray_session``), started lazily by
the first test that needs it, with enough logical CPUs that Ray Data never starves next to
training workers (see widedeep/ray_runtime.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "tests" / "assets"  # data files committed with the tests (see its README.md)
ADULT = ASSETS / "adult.parquet"


@pytest.fixture(scope="session")
def ray_session():
    """The session's single local Ray instance (4 logical CPUs on a 2-core machine)."""
    import ray

    from widedeep.ray_runtime import ensure_ray

    os.environ.pop("RAY_ADDRESS", None)
    ensure_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def adult_path() -> Path:
    """UCI Adult (CC BY 4.0), committed under tests/assets: every clone has it, nothing skips."""
    if not ADULT.is_file():
        raise FileNotFoundError(f"{ADULT} is missing: it is part of the repository (tests/assets/README.md)")
    return ADULT


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests cleanly without CUDA (checked here, never at import time)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing entirely
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
