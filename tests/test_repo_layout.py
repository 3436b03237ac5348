"""Structural rules of the repository and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from widedeep.cli import build_parser


def test_platform_holds_no_python():
    # A package named `platform` would shadow the standard library module Ray imports.
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert list((ROOT / "platform").rglob("*.py")) == []
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.system())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip()


def test_import_is_light():
    code = (
        "import sys, widedeep, widedeep.cli; "
        "print(','.join(m for m in ('ray','torch','triton','fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = []
    for name, p in sub.choices.items():
        inner = [a for a in p._actions if getattr(a, "dest", None) == "bench"]
        if inner:
            names += [[name, b] for b in inner[0].choices]
        else:
            names.append([name])
    return names


@pytest.mark.parametrize("cmd", _subcommands(), ids=lambda c: " ".join(c))
def test_every_subcommand_has_help(cmd):
    out = subprocess.run([sys.executable, "-m", "widedeep", *cmd, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: widedeep" in out.stdout
