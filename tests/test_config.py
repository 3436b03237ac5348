"""The strict config loader: unknown keys, wrong types and overrides name the key path."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from widedeep.config import apply_overrides, from_dict, to_dict
from widedeep.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    layers: tuple[int, ...] = (8, 4)


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    mode: str = "a"


def test_round_trip_and_defaults():
    cfg = from_dict(Outer, {"name": "x", "inner": {"layers": [3, 2, 1]}})
    assert cfg.inner.layers == (3, 2, 1) and cfg.inner.lr == 0.1
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_key_names_path():
    with pytest.raises(ConfigError, match=r"^inner\.lerning_rate: unknown key"):
        from_dict(Outer, {"name": "x", "inner": {"lerning_rate": 1}})


def test_wrong_type_names_path():
    with pytest.raises(ConfigError, match=r"inner\.layers\[1\]: expected an integer, got 'b'"):
        from_dict(Outer, {"name": "x", "inner": {"layers": [1, "b"]}})


def test_missing_required():
    with pytest.raises(ConfigError, match="name: required key is missing"):
        from_dict(Outer, {})


def test_overrides_parse_yaml_scalars():
    data = apply_overrides({"name": "x"}, ["inner.lr=0.5", "inner.layers=[4, 2]", "name=y"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.lr == 0.5 and cfg.inner.layers == (4, 2) and cfg.name == "y"
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["novalue"])
