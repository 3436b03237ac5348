"""Bundles at URIs: ``s3://``, ``gs://``, ``hdfs://``, ``file://`` (whatever ``pyarrow.fs.FileSystem.from_uri``
understands, with that file system's usual credentials from the environment).

Loading copies the bundle directory to a local cache and then verifies and loads the copy exactly
like a local bundle (every file's sha256 against the manifest: a copy that went wrong is refused).
Why a local copy: the index, the Parquet tables and the safetensors are read whole at load, and a
replica restarting or a re-deploy of the same version should not fetch them again. The cache key
is the URI plus the bytes of its ``manifest.json``, so a re-deploy of the same bundle reuses the
copy while a new bundle written at the same URI (a new manifest) gets a new one. Copies are made
in a temp directory and renamed into place, so replicas sharing a node never load a partial copy.
Cache directory: ``$WIDEDEEP_BUNDLE_CACHE``, default ``<tempdir>/widedeep-bundles``.

Writing a bundle to a URI is offline work: ``widedeep.export.bundle_writer.upload_bundle``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from widedeep.errors import CheckpointError
from widedeep.paths import FS_ERRORS, Location, short_error
from widedeep.serve.manifest import parse_manifest

log = logging.getLogger(__name__)

CACHE_ENV = "WIDEDEEP_BUNDLE_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "widedeep-bundles")


def filesystem(uri: str) -> tuple[Any, str]:
    """``(pyarrow FileSystem, path inside it)`` for ``uri``; an unknown scheme is a ``CheckpointError`` naming it."""
    loc = Location.of(uri, CheckpointError)
    return loc.fs, loc.path.rstrip("/")


def read_manifest_bytes(uri: str) -> bytes:
    """The raw ``manifest.json`` of the bundle at ``uri``."""
    fs, root = filesystem(uri)
    try:
        with fs.open_input_stream(f"{root}/manifest.json") as f:
            return f.readall()
    except FileNotFoundError:
        raise CheckpointError(
            f"{uri}: not a serving bundle (no manifest.json there); build one with `widedeep export`"
        ) from None
    except FS_ERRORS as e:
        raise CheckpointError(f"{uri}: cannot read manifest.json ({short_error(e)})") from None


def fetch_bundle(uri: str, cache: Path | None = None) -> Path:
    """Copy the bundle at ``uri`` into the local cache (unless that version is there) and return the copy.

    The manifest is checked (JSON, bundle format) before anything else is copied; the files are
    checked against it by ``load_bundle``'s verification of the copy.
    """
    raw = read_manifest_bytes(uri)
    m = parse_manifest(raw, f"{uri}/manifest.json")
    cache = cache or cache_dir()
    dest = cache / hashlib.sha256(uri.encode() + b"\0" + raw).hexdigest()[:24]
    if (dest / "manifest.json").exists():
        log.info("bundle %s (version %s): using the local copy %s", uri, m.get("model_version"), dest)
        return dest
    fs, root = filesystem(uri)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    t0 = time.monotonic()
    try:
        try:
            pafs.copy_files(root, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        except FS_ERRORS as e:
            raise CheckpointError(f"{uri}: copying the bundle to {tmp} failed ({short_error(e)})") from None
        # the manifest that was read and hashed, even if the URI was rewritten meanwhile
        (tmp / "manifest.json").write_bytes(raw)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not (dest / "manifest.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another replica on this node copied it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    dt = time.monotonic() - t0
    log.info(
        "bundle %s (version %s): copied %.1f MB to %s in %.1fs (%.1f MB/s)",
        uri,
        m.get("model_version"),
        size / 1e6,
        dest,
        dt,
        size / 1e6 / max(dt, 1e-9),
    )
    return dest
