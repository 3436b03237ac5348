"""cluster.yaml is a valid Ray cluster-launcher config (no cloud calls, no Ray started)."""

import copy
import json
import os

import pytest
import yaml

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def cluster_cfg():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_matches_the_schema_shipped_in_the_ray_wheel(cluster_cfg):
    import jsonschema
    import ray

    schema = json.loads(open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")).read())
    jsonschema.validate(cluster_cfg, schema)
    types = cluster_cfg["available_node_types"]
    assert cluster_cfg["head_node_type"] in types
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cluster_cfg["max_workers"]
    # CPU head, autoscaling GPU workers, setup installs the package
    assert types[cluster_cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t.get("min_workers", 0) < t["max_workers"] for t in gpu)
    assert any("pip install" in c and "widedeep" in c for c in cluster_cfg["setup_commands"])


def test_cluster_yaml_passes_ray_up_validation(cluster_cfg):
    # Ray's private helpers (what `ray up` runs before any cloud call); pinned ray==2.60.0
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster_cfg)))


def test_schema_check_catches_a_typo(cluster_cfg):
    import jsonschema
    import ray

    schema = json.loads(open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")).read())
    bad = copy.deepcopy(cluster_cfg)
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
