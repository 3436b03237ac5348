"""`widedeep quickstart` runs end to end at a small size from an installed wheel, as a user's
`pip install .` would run it: no source checkout beside the package.

The module builds the wheel from the repository's files (in a copy, so the checkout gets no
build/ or egg-info), installs it into a fresh virtualenv and runs the `widedeep` console script
of that venv in a subprocess with its own local Ray, like a user's shell. The venv is created
with `--system-site-packages` and the wheel installed with `--no-deps`: torch, Ray and the other
dependencies come from the environment the tests run in (a full dependency install would fetch
gigabytes and take minutes); what is under test is the package itself (code, `widedeep/_platform`
data files, console script), and the test checks the venv imports widedeep from its own
site-packages, never from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from tests.conftest import ROOT
from tests.support import wait_until
from widedeep.ports import free_port

pytestmark = pytest.mark.slow

SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "widedeep", "platform"]


def _env() -> dict[str, str]:
    """The user's shell: no PYTHONPATH pointing at a checkout, no cluster address."""
    drop = ("PYTHONPATH", "RAY_ADDRESS")
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin/`` directory of a fresh venv with the wheel built from this checkout installed."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "_platform"))
        else:
            shutil.copy2(p, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(src)]
    r = subprocess.run(build, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (root / "dist").glob("widedeep-*.whl")
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=120
    )
    r = subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return venv / "bin"


def test_wheel_ships_platform_files_and_jobs_ship_the_package(installed, tmp_path):
    """The installed package finds its platform files inside itself, and a submitted job's runtime
    env uploads a staged copy of the package (with those files), never site-packages."""
    code = (
        "import json, pathlib, sys, widedeep\n"
        "from widedeep.paths import platform_path\n"
        "from widedeep.jobs import job_runtime_env\n"
        "env = job_runtime_env(pathlib.Path(sys.argv[1]))\n"
        "print(json.dumps({'package': widedeep.__file__, 'jobs': str(platform_path('jobs')), 'env': env}))\n"
    )
    r = subprocess.run(
        [str(installed / "python"), "-c", code, str(tmp_path / "stage")],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    site = Path(out["package"]).parents[1]
    assert site.name == "site-packages" and str(installed.parent) in str(site), out["package"]
    assert Path(out["jobs"]) == site / "widedeep" / "_platform" / "jobs"
    assert {"appstore-ranker.yaml", "appstore-retriever.yaml", "retrain-appstore.yaml"} <= {
        p.name for p in Path(out["jobs"]).iterdir()
    }
    assert not list((site / "widedeep" / "_platform").rglob("*.py"))  # platform files are data, never code
    (module,) = out["env"]["py_modules"]
    staged = Path(module)
    assert staged.name == "widedeep" and staged.parent == tmp_path / "stage"
    assert (staged / "__init__.py").is_file() and (staged / "_platform" / "specs" / "appstore.yaml").is_file()
    # the working dir holds the platform files alone (the configs and specs a job's argv names)
    workdir = Path(out["env"]["working_dir"])
    assert workdir == tmp_path / "stage" / "job" and [p.name for p in workdir.iterdir()] == ["platform"]
    assert (workdir / "platform" / "specs" / "appstore.yaml").is_file()
    size = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"staged package is {size} bytes"


def test_quickstart_small_from_the_installed_wheel(installed, tmp_path):
    port = free_port()
    out = subprocess.run(
        [
            str(installed / "widedeep"),
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
            str(port),
        ],
        cwd=tmp_path,
        env=_env(),
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
    _serve_run_shipped_config(installed, tmp_path / "qs" / "bundle", tmp_path)


def _serve_run_shipped_config(installed: Path, bundle: Path, tmp_path: Path) -> None:
    """`serve run` of the Serve config the wheel ships (its import path resolved from the installed
    package), pointed at the quickstart's bundle, answers /healthz and a recommendation."""
    site = Path(installed.parent / "lib").glob("python3*/site-packages/widedeep/_platform/serve.yaml")
    (shipped,) = list(site)
    cfg = yaml.safe_load(shipped.read_text())
    port = free_port()
    cfg["http_options"] = {**cfg["http_options"], "host": "127.0.0.1", "port": port}
    (app,) = cfg["applications"]
    app["args"] = {**app["args"], "bundle": str(bundle), "pipeline": "fused", "candidates": 50, "max_k": 20}
    # one small machine: the fused Ingress alone (as serve.yaml's header says), on a fraction of a CPU
    app["deployments"] = [{"name": "Ingress", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}]
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        # the `serve` command, run by the venv's interpreter (its script lives with Ray, outside the venv)
        [str(installed / "python"), "-m", "ray.serve.scripts", "run", str(config)],
        cwd=tmp_path,
        env={**_env(), "RAY_USAGE_STATS_ENABLED": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def healthy() -> dict | None:
            if proc.poll() is not None:
                raise AssertionError(f"serve run exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
            try:
                r = httpx.get(f"{base}/healthz", timeout=5)
            except httpx.HTTPError:
                return None
            return r.json() if r.status_code == 200 else None

        health = wait_until(healthy, 300, "serve run's /healthz", interval_s=1.0)
        assert health["status"] == "ok" and health["model_version"]
        r = httpx.post(f"{base}/v1/recommend", json={"user": {"user_id": 1}, "k": 3}, timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 3 and r.json()["model_version"] == health["model_version"]
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C for `serve run` (it shuts Serve and its local Ray down), then whatever it started and
    left behind, found by its process id (children of this one process, never by name)."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    _, alive = psutil.wait_procs([p for p in family if p.is_running()], timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
