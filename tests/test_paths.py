"""``widedeep.paths.Location``: local paths and URIs through one type (the one place paths resolve)."""

from __future__ import annotations

import numpy as np
import pyarrow.fs as pafs
import pytest

from widedeep.errors import CheckpointError, DataError
from widedeep.paths import Location, is_uri, read_json, write_json


def test_a_local_path_and_its_file_uri_reach_the_same_files(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    (tmp_path / "d" / "train" / "b.parquet").write_bytes(b"x")
    (tmp_path / "d" / "train" / "a.parquet").write_bytes(b"y")
    (tmp_path / "d" / "train" / "notes.txt").write_text("hello")
    local, uri = Location.of(tmp_path / "d"), Location.of((tmp_path / "d").as_uri())
    for loc in (local, uri):
        assert loc.is_local and loc.is_dir() and not loc.is_file()
        train = loc / "train"
        assert [f.name for f in train.files(".parquet")] == ["a.parquet", "b.parquet"]
        assert (train / "notes.txt").read_text() == "hello" and (train / "notes.txt").is_file()
        assert not (loc / "missing").exists() and (loc / "missing").files() == []
        assert train.parent.path == loc.path and train.name == "train"
        assert loc.local_path() == tmp_path / "d"
    assert str(local / "train") == str(tmp_path / "d" / "train")
    assert str(uri / "train") == (tmp_path / "d" / "train").as_uri()  # the scheme is kept
    assert not is_uri(str(tmp_path)) and is_uri(uri) and is_uri("s3://b/k") and not is_uri(local)


def test_relative_and_home_paths_resolve_to_absolute_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Location.of("rel/x").path == str(tmp_path / "rel" / "x")
    assert Location.of("~/y").path == str(tmp_path / "y")


def test_download_and_upload_copy_directories(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f.json").write_text("{}")
    dest = Location.of((tmp_path / "store" / "ck").as_uri())
    dest.upload(tmp_path / "src")
    assert (dest / "sub" / "f.json").read_text() == "{}"
    back = dest.download(tmp_path / "back")
    assert (back / "sub" / "f.json").read_text() == "{}"


def test_uri_query_options_configure_the_file_system_and_survive_joins():
    """The options a local S3 server needs (endpoint, http) reach the file system; no request is made."""
    uri = "s3://bucket/prepared?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    loc = Location.of(uri)
    assert isinstance(loc.fs, pafs.S3FileSystem) and loc.path == "bucket/prepared" and not loc.is_local
    options = loc.fs.__reduce__()[1][0]  # the S3FileSystem's constructor arguments
    assert options["endpoint_override"] == "127.0.0.1:9" and options["scheme"] == "http"
    assert options["region"] == "us-east-1"
    train = loc / "train"
    assert str(train) == "s3://bucket/prepared/train?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    again = Location.of(str(train))  # a Ray task gets the string and resolves it again
    assert again.path == "bucket/prepared/train" and again.fs.__reduce__()[1][0]["endpoint_override"] == "127.0.0.1:9"
    with pytest.raises(ValueError, match="not on the local file system"):
        loc.local_path()


def test_a_uri_pyarrow_cannot_open_raises_the_callers_error_naming_it():
    with pytest.raises(DataError, match=r"^nosuchfs://x/y: cannot open this URI .*pyarrow\.fs"):
        Location.of("nosuchfs://x/y")
    with pytest.raises(CheckpointError, match="nosuchfs://x/y"):
        Location.of("nosuchfs://x/y", CheckpointError)


def test_json_round_trips_through_a_path_and_a_uri_creating_local_parents(tmp_path):
    """What a job writes with ``--metrics-out`` (a path or a URI) its client reads back with ``read_json``."""
    doc = {"auc": np.float32(0.75), "history": [{"epoch": 1, "valid_auc": 0.7}]}
    path, uri = tmp_path / "a" / "b" / "m.json", (tmp_path / "u" / "m.json").as_uri()
    for where in (path, str(path), uri, Location.of(uri)):
        write_json(where, doc)
        back = read_json(where)
        assert back == {"auc": 0.75, "history": [{"epoch": 1, "valid_auc": 0.7}]}
    assert path.read_text().startswith('{\n "auc": 0.75')  # sorted keys, indented: readable by people too
    loc = Location.of(uri)
    loc.write_text("replaced")
    assert loc.read_text() == "replaced"
    loc.delete_file()
    assert not loc.exists()
    loc.delete_file()  # already gone: not an error


def test_read_json_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path}/missing.json: cannot read"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=rf"^{(tmp_path / 'bad.json').as_uri()}: not valid JSON"):
        read_json((tmp_path / "bad.json").as_uri())
