"""Build step of the wheel: ship ``platform/`` inside the package as ``widedeep/_platform``.

Why: the job configs, feature specs and Serve config under ``platform/`` are what ``widedeep
quickstart``, ``widedeep retrain`` and ``serve run`` read. A wheel installs only the package into
``site-packages``, with no checkout beside it, so the build copies the tree into the built package
(``widedeep.paths.platform_path`` finds it there). ``platform/`` stays a plain directory: never a
Python package, which would shadow the standard library's ``platform`` module. Editable installs
skip the copy and read the checkout's ``platform/`` directly. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PLATFORM = Path(__file__).resolve().parent / "platform"
TARGET = Path("widedeep") / "_platform"


class BuildPyWithPlatform(build_py):
    """``build_py`` plus a copy of ``platform/`` into the built package (not for editable installs)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / TARGET
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(PLATFORM, dest, ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.pyc"))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if getattr(self, "editable_mode", False):
            return outputs
        dest = Path(self.build_lib) / TARGET
        return outputs + [str(dest / f.relative_to(PLATFORM)) for f in PLATFORM.rglob("*") if f.is_file()]


setup(cmdclass={"build_py": BuildPyWithPlatform})
