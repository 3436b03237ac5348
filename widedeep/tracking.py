"""Experiment tracking and a model registry on MLflow, an optional extra.

``pip install 'widedeep[mlflow]'`` (the ``mlflow-skinny`` client: tracking, the file store and
the registry, without MLflow's server and its pinned dependencies) or ``pip install mlflow``.
Without it everything else works; only naming a registry URI (``models:/NAME@ALIAS``) or turning
tracking on fails, with an error saying to install the extra.

- Tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else a local file store
  ``file:<storage_path>/mlruns`` (``file:./mlruns`` without a storage path). MLflow 3 keeps its
  file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; for a
  ``file:`` URI that opt-out is set here (any other tracking URI is used as given).
- Runs: ``widedeep train`` logs the resolved config as params, every epoch's validation metrics
  (step = epoch; live from Ray Train's controller through ``widedeep.train.tracking``'s
  ``ray.train.UserCallback``), the best metrics, and the checkpoint URIs as tags
  (``widedeep.checkpoint``, ``widedeep.latest_checkpoint``); ``widedeep retrain`` logs its checks.
- Registry: a registered model version's ``source`` is the artifact's own path or URI (a bundle
  or a checkpoint directory; nothing is copied), tagged ``widedeep.kind`` = ``bundle`` or
  ``checkpoint``. Aliases ``champion`` (serving) and ``challenger`` (verified candidate) move
  between versions; ``resolve("models:/widedeep-recommender@champion")`` gives the source, and
  ``widedeep serve``, ``export`` and ``retrain`` accept such URIs wherever they take a path.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widedeep.errors import ConfigError

REGISTRY_PREFIX = "models:/"
KIND_TAG = "widedeep.kind"
INSTALL_HINT = "install the extra: pip install 'widedeep[mlflow]' (or pip install mlflow)"


@dataclass(frozen=True)
class TrackingConfig:
    """The ``tracking:`` section of a job config.

    ``enabled``: log this run to MLflow. ``uri``: the tracking (and registry) URI (default: see
    the module docstring). ``experiment``: the MLflow experiment. ``register_as``: register the
    best checkpoint under this model name, with the ``aliases`` given.
    """

    enabled: bool = False
    uri: str | None = None
    experiment: str = "widedeep"
    register_as: str | None = None
    aliases: list[str] | None = None

    def __post_init__(self) -> None:
        if self.register_as is not None and not self.register_as.strip():
            raise ConfigError("register_as: must be a model name or null")


def is_registry_uri(location: Any) -> bool:
    return isinstance(location, str) and location.startswith(REGISTRY_PREFIX)


def mlflow_module() -> Any:
    """The ``mlflow`` package, or a ``ConfigError`` saying how to install it."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            f"MLflow tracking and registry URIs need MLflow, which is not installed: {INSTALL_HINT}"
        ) from None
    return mlflow


def tracking_uri(uri: str | None = None, storage_path: str | None = None) -> str:
    """The tracking URI to use: ``uri``, ``MLFLOW_TRACKING_URI``, or a file store under ``storage_path``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        base = Path(storage_path).expanduser().resolve() if storage_path and "://" not in storage_path else Path.cwd()
        uri = f"file:{base / 'mlruns'}"
    return uri


def client(uri: str) -> Any:
    """An ``MlflowClient`` for tracking and registry at ``uri``."""
    mlflow = mlflow_module()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module docstring
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params (``optim.dense.lr`` -> ``"0.003"``)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def start_run(
    uri: str, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None
) -> str:
    """Create a run (and the experiment if needed), log ``params``; returns the run id."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else c.create_experiment(experiment)
    run = c.create_run(exp_id, run_name=run_name, tags=tags or {})
    from mlflow.entities import Param

    items = list(flat(params).items())
    for i in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
    """Log the finite numbers of ``metrics`` (others are skipped)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    ms = [
        Metric(k, float(v), now, step or 0)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    if ms:
        client(uri).log_batch(run_id, metrics=ms)


def set_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v)[:5000])


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


def register(
    uri: str,
    name: str,
    source: str,
    kind: str,
    run_id: str | None = None,
    aliases: list[str] | tuple[str, ...] = (),
    tags: dict[str, str] | None = None,
) -> str:
    """Register ``source`` (a bundle or checkpoint path/URI) as a new version of ``name``; returns the version."""
    c = client(uri)
    mlflow = mlflow_module()
    try:
        c.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        c.create_registered_model(name)
    mv = c.create_model_version(name, source=str(source), run_id=run_id, tags={KIND_TAG: kind, **(tags or {})})
    for alias in aliases:
        c.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)


def set_alias(uri: str, name: str, alias: str, version: str) -> None:
    client(uri).set_registered_model_alias(name, alias, version)


def resolve(location: str, kind: str | None = None, uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> the registered path or URI; anything
    else is returned unchanged. ``kind`` (``bundle`` / ``checkpoint``): the version must be one."""
    if not is_registry_uri(location):
        return location
    rest = location[len(REGISTRY_PREFIX) :]
    c = client(tracking_uri(uri))
    mlflow = mlflow_module()
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = c.get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
            mv = c.get_model_version(name, version)
        else:
            raise ConfigError(f"{location}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    except mlflow.exceptions.MlflowException as e:
        raise ConfigError(f"{location}: not found in the registry at {tracking_uri(uri)} ({e.message})") from None
    got = (mv.tags or {}).get(KIND_TAG)
    if kind is not None and got is not None and got != kind:
        raise ConfigError(f"{location}: version {mv.version} is a {got}, a {kind} is needed here")
    return str(mv.source)


def model_name(location: str) -> str | None:
    """The registered model name of a ``models:/`` URI (None for a path)."""
    if not is_registry_uri(location):
        return None
    rest = location[len(REGISTRY_PREFIX) :]
    return rest.split("@", 1)[0] if "@" in rest else rest.rsplit("/", 1)[0]
