"""README.md stays true: every `widedeep ...` command it shows parses with the real CLI, every file
it names exists, and its test command is the one .ci/run runs."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import ROOT
from widedeep.cli import build_parser

README = (ROOT / "README.md").read_text()


def _shell_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|console)\n(.*?)```", README, flags=re.S)
    cmds = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            line = line.split(" #", 1)[0].strip()
            if line:
                cmds.append(line)
    return cmds


def _split_commands(cmd: str) -> list[list[str]]:
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    parts: list[list[str]] = [[]]
    for tok in lex:
        if tok in ("&&", ";", "|", "||"):
            parts.append([])
        else:
            parts[-1].append(tok)
    return [p for p in parts if p]


def _widedeep_argvs() -> list[list[str]]:
    out = []
    for cmd in _shell_commands():
        for words in _split_commands(cmd):
            if words[:1] == ["widedeep"]:
                out.append(words[1:])
            elif "widedeep" in words and "-m" in words:  # python -m widedeep / ray job submit ... -- python -m widedeep
                i = words.index("widedeep")
                if words[i - 1] == "-m":
                    out.append(words[i + 1 :])
    return out


@pytest.mark.parametrize("argv", _widedeep_argvs(), ids=lambda a: " ".join(a[:2]))
def test_readme_widedeep_commands_parse(argv):
    build_parser().parse_args(argv)  # SystemExit (a test failure) on an unknown command or flag


def test_readme_names_existing_files():
    for rel in set(re.findall(r"\b((?:platform|notebooks|tests|widedeep)/[\w./-]+\.(?:ya?ml|ipynb|py|sh|md))", README)):
        assert (ROOT / rel).exists(), f"README names {rel}, which does not exist"
    for name in ("cluster.yaml", "platform/docker/Dockerfile", ".ci/run"):
        assert (ROOT / name).exists()


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = next(c for c in _shell_commands() if "pytest" in c)
    assert test_cmd.split("&&")[-1].strip() in ci
    assert "pip install -q torch==2.13.0" in ci and "torch==2.13.0" in test_cmd
