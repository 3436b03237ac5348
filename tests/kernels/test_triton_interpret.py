"""The Triton kernel under the interpreter, in a subprocess so ``TRITON_INTERPRET=1`` never
leaks into the rest of the pytest session (triton reads it at import)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.timeout(600)
def test_triton_kernel_matches_reference_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kernels.triton_interpret_check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "ALL OK" in proc.stdout


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    from widedeep.errors import ConfigError
    from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        TableBatchedEmbeddingBag([TableConfig("a", 3, 2)], OptimizerConfig("sgd", lr=0.1), backend="triton")
