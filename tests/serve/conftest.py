"""Small real bundles (fitted FeatureSpace, trained ranker, two-tower) shared by the serving tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def corrupt_copy(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` with one byte of ranker.safetensors flipped: its sha256 check fails."""
    shutil.copytree(bundle, dest)
    with open(dest / "ranker.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    return dest


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """Two bundles of the same catalog with different model weights (versions v1 and v2)."""
    import torch

    from widedeep.export.synthetic import build_synthetic_bundle

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bundles")
    v1 = build_synthetic_bundle(
        root / "v1", n_items=300, n_users=60, n_rows=1500, hidden=(16, 8), train_steps=5, seed=0, version="v1"
    )
    v2 = build_synthetic_bundle(
        root / "v2", n_items=300, n_users=60, n_rows=1500, hidden=(16, 8), train_steps=5, seed=1, version="v2"
    )
    return v1, v2
