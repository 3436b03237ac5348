"""What a clone ignores: the quickstart's output and a virtualenv (README's set-up makes ./.venv)
stay out of git, out of every `ray job submit --working-dir .` upload and out of cluster.yaml's rsync.

The patterns are evaluated, not just listed: git's own matcher (``git check-ignore``) decides for
.gitignore, and for the job upload excludes, which Ray matches with gitignore semantics; cluster.yaml's
``rsync_exclude`` patterns are plain names that rsync and gitignore match alike, and its
``rsync_filter`` makes rsync read the .gitignore files as well.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT

LOCAL_ONLY = ["widedeep-quickstart/runs/ranker/model.safetensors", ".venv/bin/python", ".venv/lib/python3.11/x.py"]
SHIPPED = ["widedeep/retrieval/index.py", "pyproject.toml", "platform/jobs/adult.yaml", "platform/specs/adult.yaml"]


def _ignored(repo: Path, paths: list[str]) -> set[str]:
    """The ``paths`` that git's ignore rules in ``repo`` exclude (checked as untracked paths)."""
    r = subprocess.run(
        ["git", "-C", str(repo), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(paths),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode in (0, 1), r.stderr  # 1: none ignored
    return set(r.stdout.split())


def _matched_by(patterns: list[str], paths: list[str], tmp_path: Path) -> set[str]:
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=60)
    (repo / ".git" / "info" / "exclude").write_text("\n".join(patterns) + "\n")
    return _ignored(repo, paths)


def test_gitignore_keeps_quickstart_output_and_venv_out():
    assert _ignored(ROOT, LOCAL_ONLY + SHIPPED) == set(LOCAL_ONLY)


def test_job_uploads_leave_quickstart_output_and_venv_out(tmp_path):
    # `ray job submit --working-dir . --runtime-env platform/runtime_env.yaml`; widedeep.jobs ships
    # the package alone (py_modules: widedeep.jobs.stage_package), so only this documented CLI
    # submission uploads the clone
    patterns = yaml.safe_load((ROOT / "platform/runtime_env.yaml").read_text())["excludes"]
    assert _matched_by(patterns, LOCAL_ONLY + SHIPPED, tmp_path) == set(LOCAL_ONLY)


def test_cluster_rsync_leaves_quickstart_output_and_venv_out(tmp_path):
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert _matched_by(cfg["rsync_exclude"], LOCAL_ONLY + SHIPPED, tmp_path) == set(LOCAL_ONLY)
    assert ".gitignore" in cfg["rsync_filter"]  # rsync also applies what git ignores (checked above)
