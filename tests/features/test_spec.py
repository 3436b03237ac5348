"""Spec validation: every shipped spec loads; mistakes are errors that name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from widedeep.errors import FeatureSpecError
from widedeep.features.spec import CrossedFeature, load_spec, parse_condition, parse_spec

SPECS = sorted((ROOT / "platform" / "specs").glob("*.yaml"))


def base(**over):
    d = {
        "label": {"condition": "y == 1"},
        "features": [
            {"name": "a", "kind": "categorical"},
            {"name": "b", "kind": "categorical", "hash_buckets": 10},
            {"name": "x", "kind": "numeric"},
            {"name": "axb", "kind": "crossed", "inputs": ["a", "b"], "hash_buckets": 100},
        ],
    }
    d.update(over)
    return d


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_load(path: Path):
    spec = load_spec(path)
    assert spec.features and len(spec.hash) == 64


def test_expected_shipped_specs():
    assert {p.stem for p in SPECS} >= {"adult", "appstore", "criteo", "movielens"}
    adult = load_spec(ROOT / "platform/specs/adult.yaml")
    crosses = {tuple(f.inputs) for f in adult.features if isinstance(f, CrossedFeature)}
    assert crosses == {
        ("education", "occupation"),
        ("native_country", "occupation"),
        ("age_bucket", "education", "occupation"),
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["features"][1].update(hash_buckets=0), "features[1].hash_buckets: must be > 0"),
        (lambda d: d["features"][3].update(hash_buckets=-5), "features[3].hash_buckets: must be > 0"),
        (lambda d: d["features"][0].update(colour="red"), "features[0].colour: unknown key"),
        (lambda d: d["features"][0].update(n_quantiles=10), "features[0].n_quantiles: unknown key"),
        (lambda d: d["features"][0].update(kind="categorial"), "features[0].kind: must be one of"),
        (lambda d: d["features"][2].update(n_quantiles=1), "features[2].n_quantiles: must be >= 2"),
        (lambda d: d["features"][2].update(missing="drop"), "features[2].missing: must be one of"),
        (lambda d: d["features"][0].update(dim=0), "features[0].dim: must be > 0"),
        (lambda d: d["features"][0].update(min_count=0), "features[0].min_count: must be >= 1"),
        (lambda d: d["features"][0].update(side="server"), "features[0].side: must be one of"),
        (lambda d: d["features"][3].update(inputs=["a", "nope"]), "features[3].inputs[1]: unknown feature 'nope'"),
        (lambda d: d["features"][3].update(inputs=["a", "x"]), "features[3].inputs[1]: 'x' is numeric"),
        (lambda d: d["features"][3].update(inputs=["a"]), "features[3].inputs: a cross needs at least two"),
        (lambda d: d["features"].append({"name": "a"}), "features[4].name: duplicate feature name 'a'"),
        (lambda d: d["features"].append({"name": "label"}), "features[4].name: 'label' is reserved"),
        (lambda d: d["features"][2].update(clip=[3, 1]), "features[2].clip: must be [low, high]"),
        (lambda d: d.update(label={"condition": "y ~ 1"}), "label.condition: cannot parse"),
        (lambda d: d.update(label={}), "label.column: give the label column or a condition"),
        (lambda d: d.update(bogus=1), "bogus: unknown key"),
        (lambda d: d.update(features=[]), "features: at least one feature"),
    ],
)
def test_spec_errors_name_the_key_path(mutate, message):
    d = base()
    mutate(d)
    with pytest.raises(FeatureSpecError) as e:
        parse_spec(d)
    assert message in str(e.value)


def test_bucketized_needs_boundaries_or_num_buckets():
    d = base()
    d["features"].append({"name": "xb", "kind": "bucketized", "column": "x"})
    with pytest.raises(FeatureSpecError, match=r"features\[4\].boundaries: give exactly one"):
        parse_spec(d)


def test_conditions_parse():
    assert parse_condition('income == ">50K"') == ("income", "==", ">50K")
    assert parse_condition("rating >= 4") == ("rating", ">=", 4)
    assert parse_condition("kind in [a, b]") == ("kind", "in", ["a", "b"])


def test_spec_hash_ignores_cosmetics_but_not_content():
    a, b = parse_spec(base()), parse_spec(base())
    assert a.hash == b.hash
    d = base()
    d["features"][0]["min_count"] = 3
    assert parse_spec(d).hash != a.hash
    d = base()
    d["features"][0]["wide"] = True  # the default, spelled out
    assert parse_spec(d).hash == a.hash


def test_load_spec_error_names_the_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("label: {condition: 'y == 1'}\nfeatures:\n  - {name: a, hash_buckets: 0}\n")
    with pytest.raises(FeatureSpecError, match=r"s.yaml: features\[0\].hash_buckets: must be > 0"):
        load_spec(p)
