"""``widedeep.jobs``: what a job submitted to a cluster carries (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

from widedeep.jobs import cluster_argv, job_runtime_env
from widedeep.paths import platform_path


def test_platform_files_in_argv_become_the_job_working_dirs_copy(tmp_path):
    """The client's checkout is not on the cluster: a spec or job config of the local ``platform/``
    tree is named by its path in the job's working directory, which holds a copy of ``platform/``."""
    spec, job = platform_path("specs", "appstore.yaml"), platform_path("jobs", "adult.yaml")
    argv = ["prepare", "--spec", str(spec), "--input", "s3://b/raw", "--out", str(tmp_path / "out")]
    argv += ["--config", str(job), "--set", f"data={tmp_path}"]
    got = cluster_argv(argv)
    assert got[2] == "platform/specs/appstore.yaml" and got[8] == "platform/jobs/adult.yaml"
    assert [a for i, a in enumerate(got) if i not in (2, 8)] == [a for i, a in enumerate(argv) if i not in (2, 8)]
    env = job_runtime_env(tmp_path / "stage")
    workdir = Path(env["working_dir"])
    for rel in ("platform/specs/appstore.yaml", "platform/jobs/adult.yaml"):
        assert (workdir / rel).read_text() == (platform_path() / rel.removeprefix("platform/")).read_text()
    (module,) = env["py_modules"]
    assert Path(module).name == "widedeep" and (Path(module) / "jobs.py").is_file()
