"""``widedeep.serve.deploy``: the config a client PUTs to a cluster's Serve (no cluster needed here;
``tests/cluster/test_notebooks_cluster.py`` deploys it to the dev cluster)."""

from __future__ import annotations

import pytest
import yaml

from widedeep.errors import ConfigError
from widedeep.paths import platform_path
from widedeep.serve.deploy import ServeDeployError, app_config, merged_config, proxy_host


def test_app_config_is_platform_serve_yaml_with_the_bundle_and_overrides():
    shipped = yaml.safe_load(platform_path("serve.yaml").read_text())["applications"][0]
    app = app_config("s3://b/bundle", candidates=50, name="nb")
    assert app["name"] == "nb" and app["route_prefix"] == "/" and app["import_path"] == shipped["import_path"]
    assert app["args"] == {**shipped["args"], "bundle": "s3://b/bundle", "candidates": 50}
    assert app["deployments"] == shipped["deployments"]
    with pytest.raises(ConfigError, match=r"unknown \['candidatez'\]"):
        app_config("s3://b/bundle", candidatez=5)


def test_a_deploy_keeps_the_other_apps_and_replaces_its_own():
    other = {"name": "other", "import_path": "x:y", "route_prefix": "/other"}
    current = {
        "applications": {
            "other": {"status": "RUNNING", "deployed_app_config": other},
            "recommender": {"status": "RUNNING", "deployed_app_config": {"name": "recommender", "args": {"old": 1}}},
        }
    }
    app = app_config("s3://b/v2")
    cfg = merged_config(current, app, port=8123, host="127.0.0.1", proxy_location="HeadOnly")
    assert cfg == {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": 8123},
        "applications": [other, app],
    }
    assert merged_config({}, app, port=1, host="h", proxy_location="EveryNode")["applications"] == [app]
    imperative = {"applications": {"adhoc": {"status": "RUNNING", "deployed_app_config": None}}}
    with pytest.raises(ServeDeployError, match=r"'adhoc' .* not deployed from a config"):
        merged_config(imperative, app, port=1, host="h", proxy_location="HeadOnly")


def test_the_proxy_is_on_the_dashboards_host():
    assert proxy_host("http://10.0.0.5:8265") == "10.0.0.5"
    with pytest.raises(ConfigError, match="RAY_ADDRESS='auto'"):
        proxy_host("auto")
