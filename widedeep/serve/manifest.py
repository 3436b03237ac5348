"""The serving bundle's manifest: its format tag, parsing, and the file hashes it records.

Shared by the reader (``widedeep.serve.bundle``, ``widedeep.serve.bundle_uri``) and the writer
(``widedeep.export.bundle_writer``), so both agree on the format by construction.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from widedeep.errors import CheckpointError

BUNDLE_FORMAT = "widedeep.bundle/1"


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` but ``manifest.json``, by path relative to ``root``."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def parse_manifest(raw: bytes | str, where: str) -> dict[str, Any]:
    """A manifest's JSON, checked to be a bundle manifest of this format (``where`` names it in errors)."""
    try:
        m = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise CheckpointError(f"{where}: format {got!r}, this widedeep reads {BUNDLE_FORMAT!r}")
    return m
