"""An import-linter contract type for a submodule of an external package (``ray.data``).

import-linter's ``forbidden`` contract takes only whole external packages (``ray``), and the
serving package needs ``ray.serve``. This contract finds the modules whose import statements name
the forbidden submodule (the import graph keeps each statement's text) and fails when a source
module is one of them or imports one of them, directly or through other modules.

Declared in ``pyproject.toml`` (``[tool.importlinter] contract_types``); ``lint-imports`` runs from
the repository root, where ``tests`` is importable.
"""

from __future__ import annotations

import re
from typing import Any

from importlinter import Contract, ContractCheck, fields, output


def _names(statement: str, submodule: str) -> bool:
    """Whether an import statement imports ``submodule`` (``import ray.data``, ``from ray.data import
    x``, ``from ray import data``)."""
    parent, _, leaf = submodule.rpartition(".")
    if re.search(rf"\b{re.escape(submodule)}\b", statement):
        return True
    m = re.match(rf"\s*from\s+{re.escape(parent)}\s+import\s+(.+)", statement)
    return bool(m and re.search(rf"\b{re.escape(leaf)}\b", m.group(1)))


class ForbiddenExternalSubmodulesContract(Contract):
    """``source_modules`` must not import ``forbidden_modules`` (dotted names inside external packages)."""

    source_modules = fields.ListField(subfield=fields.ModuleField())
    forbidden_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        broken: list[dict[str, Any]] = []
        for forbidden in self.forbidden_modules:
            package = forbidden.split(".")[0]
            users = [
                (d["importer"], d["line_number"], d["line_contents"])
                for importer in sorted(graph.find_modules_that_directly_import(package))
                for d in graph.get_import_details(importer=importer, imported=package)
                if _names(d["line_contents"], forbidden)
            ]
            for source in self.source_modules:
                sources = {source.name} | graph.find_descendants(source.name)
                for importer, line, text in users:
                    for s in sorted(sources):
                        chain = [s] if s == importer else graph.find_shortest_chain(importer=s, imported=importer)
                        if chain:
                            broken.append(
                                {
                                    "source": s,
                                    "forbidden": forbidden,
                                    "chain": list(chain),
                                    "statement": f"{importer}:{line}: {text.strip()}",
                                }
                            )
                            break
        return ContractCheck(kept=not broken, metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for b in check.metadata["broken"]:
            output.print_error(f"{b['source']} is not allowed to import {b['forbidden']}:")
            output.print_error(f"    {' -> '.join(b['chain'])}  ({b['statement']})", bold=False)
            output.new_line()
