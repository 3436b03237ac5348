"""Where files live: local paths and URIs, through one type (``Location``).

Every stage reads and writes on local disk or on shared storage (``s3://``, ``gs://``,
``hdfs://``, ``file://``: whatever ``pyarrow.fs.FileSystem.from_uri`` understands, with that
file system's usual credentials from the environment). Query options of a URI configure its file
system and are kept when a location is joined or printed, so
``s3://bucket/data?endpoint_override=127.0.0.1:9000&scheme=http`` reaches a local S3 server in
every stage, including Ray tasks that receive the location as a string.

Why one module: prepared data, feature spaces, checkpoints and bundles used to resolve paths
five different ways, and a URI accepted by one reader failed in the next. Everything that opens
a path or a URI goes through ``Location.of``.

Example::

    root = Location.of("s3://bucket/prepared?endpoint_override=127.0.0.1:9000&scheme=http")
    text = (root / "feature_space.json").read_text()
    str(root / "train")  # 's3://bucket/prepared/train?endpoint_override=127.0.0.1:9000&scheme=http'
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from widedeep.errors import DataError, WidedeepError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: what ``pyarrow.fs`` raises for bad URIs, missing files or missing credentials
FS_ERRORS: tuple[type[BaseException], ...] = (OSError, pa.ArrowException, ValueError)


def is_uri(location: str | os.PathLike[str] | Location) -> bool:
    """``scheme://...`` (a local path, relative or absolute, is not a URI)."""
    if isinstance(location, Location):
        return bool(location.prefix)
    return isinstance(location, str) and _URI.match(location) is not None


PACKAGED_PLATFORM = "_platform"  # platform/ as shipped inside a built wheel (setup.py copies it there)


def platform_path(*parts: str) -> Path:
    """A file or directory of the project's ``platform/`` tree (job configs, feature specs, the Serve
    config, deploy files), wherever widedeep runs from.

    A source checkout (editable install, ``PYTHONPATH``) reads ``<checkout>/platform``, so edits
    apply at once; an installed wheel, where the package sits in ``site-packages`` with no
    ``platform/`` beside it, reads the copy the build put inside the package
    (``widedeep/_platform``). ``platform/`` itself never becomes a Python package.
    """
    package = Path(__file__).resolve().parent
    checkout = package.parent
    roots = [checkout / "platform"] if (checkout / "pyproject.toml").is_file() else []
    roots.append(package / PACKAGED_PLATFORM)
    for root in roots:
        if root.is_dir():
            return root.joinpath(*parts)
    raise WidedeepError(
        f"platform files not found (looked in {', '.join(map(str, roots))}): install widedeep from a "
        "wheel built by `pip install .`/`python -m build`, or run it from a source checkout"
    )


def short_error(e: BaseException) -> str:
    """The first line of a file-system error (some, like HDFS's, list dozens of lines)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


@dataclass(frozen=True)
class Location:
    """A file or directory on a ``pyarrow.fs`` file system, printable as the URI it came from.

    Args:
        fs: the file system.
        path: the path inside ``fs`` (absolute for local files).
        prefix: ``""`` for a local path, else what goes before ``path`` in the URI
            (``"s3://"``, ``"file://"``, ``"hdfs://host:8020"``).
        query: the URI's query options (``"?endpoint_override=...&scheme=http"``) or ``""``.
    """

    fs: Any
    path: str
    prefix: str = ""
    query: str = ""

    @staticmethod
    def of(location: str | os.PathLike[str] | Location, error: type[WidedeepError] = DataError) -> Location:
        """Resolve a local path or a URI; a URI ``pyarrow.fs`` cannot open raises ``error`` naming it."""
        if isinstance(location, Location):
            return location
        s = os.fspath(location)
        if not is_uri(s):
            return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(s)))
        try:
            fs, path = pafs.FileSystem.from_uri(s)
        except FS_ERRORS as e:
            raise error(
                f"{s}: cannot open this URI ({short_error(e)}); paths are local or URIs that "
                "pyarrow.fs understands (file://, s3://, gs://, hdfs://, ...)"
            ) from None
        parts = urlsplit(s)
        path = path.rstrip("/") or "/"
        netloc = parts.netloc
        # s3://bucket/key resolves to "bucket/key" (the authority is part of the path);
        # hdfs://host:8020/dir to "/dir" (the authority is the file system's, kept in the prefix)
        keep_netloc = bool(netloc) and not (path == netloc or path.startswith(netloc + "/"))
        prefix = f"{parts.scheme}://{netloc if keep_netloc else ''}"
        return Location(fs, path, prefix, f"?{parts.query}" if parts.query else "")

    def __str__(self) -> str:
        if not self.prefix:
            return self.path
        return f"{self.prefix}{self.path}{self.query}"

    def __truediv__(self, name: str) -> Location:
        return Location(self.fs, self.path.rstrip("/") + "/" + name, self.prefix, self.query)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.fs, self.path.rstrip("/").rsplit("/", 1)[0] or "/", self.prefix, self.query)

    @property
    def is_local(self) -> bool:
        """On this machine's file system (a local path or a ``file://`` URI)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def local_path(self) -> Path:
        """The ``pathlib.Path`` of a local location (``ValueError`` for remote storage)."""
        if not self.is_local:
            raise ValueError(f"{self}: not on the local file system")
        return Path(self.path)

    def _type(self) -> Any:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def files(self, suffix: str = "", *, recursive: bool = False) -> list[Location]:
        """The files of a directory whose names end with ``suffix``, sorted by path (``[]`` if none)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        return [
            Location(self.fs, i.path, self.prefix, self.query)
            for i in sorted(infos, key=lambda i: i.path)
            if i.type == pafs.FileType.File and i.path.endswith(suffix)
        ]

    def open_input_stream(self, compression: str | None = None) -> Any:
        return self.fs.open_input_stream(self.path, compression=compression)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return bytes(f.readall())

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Write this file (replacing it); a local parent directory is created first (object stores
        have no directories to create)."""
        if self.is_local:
            self.fs.create_dir(self.parent.path, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def delete_file(self) -> None:
        """Remove this file (a missing one is not an error)."""
        if self.is_file():
            self.fs.delete_file(self.path)

    def download(self, dest: str | os.PathLike[str]) -> Path:
        """Copy this directory (recursively) to the local directory ``dest``; returns ``dest``."""
        pafs.copy_files(
            self.path, os.fspath(dest), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem()
        )
        return Path(dest)

    def upload(self, src: str | os.PathLike[str]) -> None:
        """Copy the local file or directory ``src`` here (directories recursively)."""
        pafs.copy_files(
            os.fspath(src), self.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs
        )


def read_json(location: str | os.PathLike[str] | Location) -> Any:
    """The JSON document at a local path or a URI (metrics, manifests, histories a job wrote).

    Why: a notebook or a client reads what a job on a cluster wrote to shared storage
    (``s3://...``), and the same code must read a local run; errors name the location."""
    loc = Location.of(location)
    try:
        text = loc.read_text()
    except FS_ERRORS as e:
        raise DataError(f"{loc}: cannot read ({short_error(e)})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{loc}: not valid JSON ({e})") from None


def write_json(location: str | os.PathLike[str] | Location, obj: Any, *, indent: int = 1) -> None:
    """Write ``obj`` as JSON (sorted keys; numpy and other number types as floats) to a local path or
    a URI, so ``--metrics-out s3://...`` of a job on a cluster lands where its client reads it."""
    loc = Location.of(location)
    text = json.dumps(obj, indent=indent, sort_keys=True, default=float)
    try:
        loc.write_text(text)
    except FS_ERRORS as e:
        raise DataError(f"{loc}: cannot write ({short_error(e)})") from None
