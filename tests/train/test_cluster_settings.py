"""The job settings that matter on a cluster, checked without Ray: where workers may be placed, and
checkpoint locations of a run stored at a URI (what ``widedeep export`` is handed next)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from widedeep.errors import ConfigError
from widedeep.train.config import load_train_config
from widedeep.train.driver import checkpoint_location


def test_placement_settings_are_parsed_and_checked():
    cfg = load_train_config(
        None, ["data=/d", "placement_strategy=SPREAD", 'label_selector={"widedeep.io/node": "!head"}']
    )
    assert cfg.placement_strategy == "SPREAD" and cfg.label_selector == {"widedeep.io/node": "!head"}
    assert load_train_config(None, ["data=/d"]).placement_strategy == "PACK"
    with pytest.raises(ConfigError, match="placement_strategy"):
        load_train_config(None, ["data=/d", "placement_strategy=spread"])
    with pytest.raises(ConfigError, match="label_selector"):
        load_train_config(None, ["data=/d", 'label_selector={"gpu": ""}'])


@dataclass
class _Checkpoint:  # what summarize_run reads of a ray.train.Checkpoint
    path: str


def test_checkpoints_of_a_run_stored_at_a_uri_keep_the_scheme():
    s3 = load_train_config(None, ["data=/d", "storage_path=s3://bucket/runs", "run_name=r1"])
    # Ray reports a checkpoint on S3 by its path inside the file system, without the scheme
    assert checkpoint_location(s3, _Checkpoint("bucket/runs/r1/epoch=0002")) == "s3://bucket/runs/r1/epoch=0002"
    local = load_train_config(None, ["data=/d", "storage_path=/tmp/runs", "run_name=r1"])
    assert checkpoint_location(local, _Checkpoint("/tmp/runs/r1/epoch=0002")) == "/tmp/runs/r1/epoch=0002"
    opts = load_train_config(None, ["data=/d", "storage_path=s3://b/runs?scheme=http", "run_name=r1"])
    assert (
        checkpoint_location(opts, _Checkpoint("b/runs/r1/step=00000010")) == "s3://b/runs/r1/step=00000010?scheme=http"
    )


def test_local_mode_refuses_a_storage_uri():
    """Local mode writes checkpoints in place: a URI storage path would become a local folder named
    ``s3:``, so the config is refused, naming both keys; workers (or a local path) are accepted."""
    with pytest.raises(ConfigError, match=r"num_workers: 0 .*storage_path 's3://bucket/runs' is a URI"):
        load_train_config(None, ["data=/d", "num_workers=0", "storage_path=s3://bucket/runs"])
    assert load_train_config(None, ["data=/d", "num_workers=1", "storage_path=s3://bucket/runs"]).num_workers == 1
    assert load_train_config(None, ["data=/d", "num_workers=0", "storage_path=/tmp/runs"]).num_workers == 0
