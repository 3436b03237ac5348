"""`widedeep quickstart` runs end to end at a small size, as README's first command does at the
default size: a subprocess with its own local Ray, like a user's shell."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import free_port


@pytest.mark.slow
def test_quickstart_small(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "widedeep",
            "quickstart",
            "--workdir",
            str(tmp_path / "qs"),
            "--rows",
            "6000",
            "--users",
            "400",
            "--items",
            "80",
            "--epochs",
            "1",
            "--port",
            str(free_port()),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "[8/8] stop Serve: done" in text
    assert "auc " in text and "ndcg@10" in text and "baseline item_knn" in text
    assert "-> " in text  # sample recommendations were printed
    for d in ("prepared/feature_space.json", "bundle/manifest.json", "ranker.json", "retriever.json"):
        assert (tmp_path / "qs" / d).exists(), d
