"""The ``widedeep`` command line: one subcommand per job.

Each job lives in its own module under ``widedeep/commands/`` and exposes::

    HELP: str                                   # one line for ``widedeep --help``
    def add_arguments(parser) -> None           # its flags (cheap: no heavy imports here)
    def run(args: argparse.Namespace) -> int    # the work (heavy imports go inside)

Modules named ``bench_<name>`` become ``widedeep bench <name>``. Discovering the modules
instead of listing them keeps this file free of every job's details.

The command modules are plug-ins found by name at run time: this module depends on none of them,
which is why it sits below them in the import layers (``pyproject.toml``) and why
``widedeep.quickstart`` and ``widedeep.jobs`` can run ``main([...])`` the way a user types a
command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from widedeep import __version__
from widedeep.errors import WidedeepError

_BENCH_PREFIX = "bench_"


COMMANDS_PACKAGE = "widedeep.commands"


def _command_modules() -> dict[str, ModuleType]:
    pkg = importlib.import_module(COMMANDS_PACKAGE)
    mods = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods[info.name] = importlib.import_module(f"{pkg.__name__}.{info.name}")
    return mods


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests to check every ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="widedeep",
        description="Train and serve Wide & Deep recommenders on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"widedeep {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench_sub = None
    for name, mod in _command_modules().items():
        if name.startswith(_BENCH_PREFIX):
            if bench_sub is None:
                bench = sub.add_parser("bench", help="benchmarks (each prints its baseline too)")
                bench_sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
            p = bench_sub.add_parser(name[len(_BENCH_PREFIX) :], help=mod.HELP, description=mod.HELP)
        else:  # a module dev_cluster is the command dev-cluster
            p = sub.add_parser(name.replace("_", "-"), help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m widedeep``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args._run(args) or 0)
    except WidedeepError as e:
        print(f"widedeep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"widedeep {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
