"""Bundles at URIs (``file://`` is the scheme available offline; s3/gs take the same code path
through ``pyarrow.fs``): copied to a local cache once per version, the copy verified like a local
bundle, clear errors naming the URI."""

from __future__ import annotations

import shutil

import pytest

from tests.serve.conftest import corrupt_copy
from widedeep.errors import CheckpointError
from widedeep.export.bundle_writer import upload_bundle
from widedeep.serve.bundle import load_bundle, read_manifest
from widedeep.serve.bundle_uri import fetch_bundle


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("WIDEDEEP_BUNDLE_CACHE", str(d))
    return d


def _uri(path) -> str:
    return path.resolve().as_uri()  # file:///...


def _mtimes(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_uri_bundle_is_copied_once_and_loaded_like_a_local_one(bundles, tmp_path, cache):
    src = tmp_path / "remote" / "current"
    shutil.copytree(bundles[0], src)
    uri = _uri(src)
    b = load_bundle(uri)
    assert b.version == "v1" and b.source == uri
    assert b.path.parent == cache and b.path != src
    assert {p.name for p in b.path.iterdir()} == {p.name for p in src.iterdir()}
    local = load_bundle(bundles[0])
    assert b.item_keys.tolist() == local.item_keys.tolist() and b.fs.content_hash == local.fs.content_hash
    assert read_manifest(uri)["model_version"] == "v1"

    before = _mtimes(b.path)
    again = load_bundle(uri)  # a re-deploy of the same version: the cached copy, not copied again
    assert again.path == b.path and _mtimes(again.path) == before
    assert [p.name for p in cache.iterdir()] == [b.path.name]  # no temp directories left behind

    shutil.rmtree(src)  # a new bundle published at the same URI: a new manifest, a new copy
    shutil.copytree(bundles[1], src)
    b2 = load_bundle(uri)
    assert b2.version == "v2" and b2.path != b.path and b2.path.parent == cache


def test_the_copy_is_verified(bundles, tmp_path, cache):
    bad = corrupt_copy(bundles[0], tmp_path / "bad")
    uri = _uri(bad)
    with pytest.raises(CheckpointError) as e:
        load_bundle(uri)
    msg = str(e.value)
    assert msg.startswith(f"{uri}: ") and "ranker.safetensors: sha256" in msg and "does not match" in msg
    assert not cache.exists() or list(cache.iterdir()) == []  # a bad copy is not kept

    good = tmp_path / "good"
    shutil.copytree(bundles[0], good)
    copy = fetch_bundle(_uri(good))
    corrupt = corrupt_copy(copy, tmp_path / "corrupt-copy")  # damage the cached copy itself
    shutil.copy(corrupt / "ranker.safetensors", copy / "ranker.safetensors")
    with pytest.raises(CheckpointError, match=r"ranker\.safetensors: sha256 .* does not match"):
        load_bundle(_uri(good))
    assert not copy.exists()  # dropped from the cache: the next load fetches it again and works
    assert load_bundle(_uri(good)).version == "v1"


def test_unknown_scheme_and_missing_uri_are_clear_errors(tmp_path, cache):
    with pytest.raises(CheckpointError, match=r"^nosuchfs://bucket/b: cannot open this URI .*pyarrow\.fs"):
        load_bundle("nosuchfs://bucket/b")
    missing = _uri(tmp_path / "nothing-here")
    with pytest.raises(CheckpointError) as e:
        load_bundle(missing)
    assert str(e.value).startswith(f"{missing}: not a serving bundle (no manifest.json there)")
    with pytest.raises(CheckpointError, match=r"no manifest\.json"):
        read_manifest(missing)


def test_upload_then_load(bundles, tmp_path, cache):
    local = tmp_path / "local"
    shutil.copytree(bundles[1], local)
    uri = _uri(tmp_path / "store" / "models" / "v2")
    upload_bundle(local, uri)
    assert (local / "manifest.json").exists()  # the local bundle is left whole
    assert load_bundle(uri).version == "v2"
    with pytest.raises(CheckpointError, match=r"exists and is not empty; choose a new --out"):
        upload_bundle(local, uri)
