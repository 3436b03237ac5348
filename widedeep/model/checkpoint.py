"""Self-describing checkpoint directories, loadable without pickle.

::

    CKPT/
      model.safetensors      every model tensor: MLP, wide bias, the packed tables and their
                             fused optimizer state (FTRL z/n, row-wise Adagrad sums) — i.e.
                             ``model.state_dict()``
      optimizer.safetensors  the dense (torch) optimizer's tensors, keyed ``state.<i>.<name>``
      optimizer.json         its scalars and param groups
      feature_space.json     the FeatureSpace the model was trained on
      config.yaml            the resolved TrainConfig
      metrics.json           the metrics reported with this checkpoint
      checkpoint.json        format, task, epoch / step / data position, early-stopping state,
                             versions, the feature-space hash

Why this layout: a checkpoint must outlive the code that wrote it and be safe to load from an
untrusted place, so tensors go to safetensors and everything else is JSON/YAML; the model is
rebuilt from ``config.yaml`` + ``feature_space.json`` through the task registry. Loading
checks that the FeatureSpace on disk hashes to what ``checkpoint.json`` recorded and names
both hashes when it does not.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

import widedeep
from widedeep.errors import CheckpointError
from widedeep.features import FeatureSpace
from widedeep.model.build import build_model_from_dict
from widedeep.paths import FS_ERRORS, Location, short_error

FORMAT = "widedeep.checkpoint/1"
_FILES = ("model.safetensors", "feature_space.json", "config.yaml", "checkpoint.json")


def _versions() -> dict[str, str]:
    out = {"widedeep": widedeep.__version__, "torch": torch.__version__}
    try:
        import ray  # optional here (reading and writing checkpoints needs no Ray); recorded when present

        out["ray"] = ray.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _tensor_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (views of the packed tables)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def optimizer_to_files(opt: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a torch optimizer's state_dict into tensors (safetensors) and JSON scalars."""
    if opt is None:
        return {}, {"kind": None}
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = v
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return _tensor_dict(tensors), {
        "kind": type(opt).__name__,
        "param_groups": sd["param_groups"],
        "scalars": scalars,
    }


def optimizer_from_files(
    opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    if meta.get("kind") != type(opt).__name__:
        raise CheckpointError(f"optimizer: checkpoint has {meta.get('kind')}, the config builds {type(opt).__name__}")
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    feature_space: Any,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    task: str,
    state: Mapping[str, Any],
) -> Path:
    """Write a checkpoint directory (created): the tensors, then the JSON/YAML that describe them."""
    p = Path(path)
    tables = write_checkpoint_tensors(p, model=model, optimizer=optimizer)
    write_checkpoint_meta(
        p, feature_space=feature_space, config=config, metrics=metrics, task=task, state=state, tables=tables
    )
    return p


def write_checkpoint_tensors(
    path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any] | None:
    """The tensor half of ``save_checkpoint`` (the model and the dense optimizer state, the bulk
    of a checkpoint's bytes); returns the table layout ``write_checkpoint_meta`` records, if any.

    Split from the metadata so the training loop can time the write and record it in the
    checkpoint's own metrics (``widedeep.train.timings``)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    # issue 16 hook: sharded tables are stored by global row range (widedeep.kernels.table_store);
    # rank 0 writes its pieces here, the other workers theirs (widedeep.train.sharded_training)
    from widedeep.kernels.table_store import write_checkpoint_tables

    tables = write_checkpoint_tables(p, model, rank=0)
    if tables is not None:
        sd = {k: v for k, v in sd.items() if k not in tables[1]}
    save_file(_tensor_dict(sd), str(p / "model.safetensors"))
    opt_t, opt_meta = optimizer_to_files(optimizer)
    save_file(opt_t, str(p / "optimizer.safetensors"))
    (p / "optimizer.json").write_text(json.dumps(opt_meta, indent=1, sort_keys=True))
    return None if tables is None else tables[0]


def write_checkpoint_meta(
    path: str | Path,
    *,
    feature_space: Any,
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    task: str,
    state: Mapping[str, Any],
    tables: dict[str, Any] | None = None,
) -> None:
    """The descriptive half of ``save_checkpoint``; ``checkpoint.json`` last (``read_meta`` and
    ``is_checkpoint_dir`` treat a directory without it as incomplete)."""
    p = Path(path)
    (p / "feature_space.json").write_text(feature_space.to_json())
    (p / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=True))
    (p / "metrics.json").write_text(json.dumps(dict(metrics), indent=1, sort_keys=True, default=float))
    meta = {
        "format": FORMAT,
        "task": task,
        "feature_space_hash": feature_space.content_hash,
        "versions": _versions(),
        **dict(state),
    }
    if tables is not None:
        meta["tables"] = tables
    (p / "checkpoint.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=float))


def refuse_in_sample(split: str, fit_splits: tuple[str, ...], fitted_by: str) -> None:
    """Raise ``CheckpointError`` when ``split`` is one the models were fitted on: their figures
    there would measure memorization, not what serving sees."""
    if split in fit_splits:
        raise CheckpointError(
            f"{fitted_by}: fitted on the {'+'.join(fit_splits)} split(s), so figures on the {split!r} split "
            "would be in-sample; evaluate on a split after them (test)"
        )


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` returns. ``model`` is on CPU in eval mode."""

    model: torch.nn.Module
    feature_space: Any
    config: dict[str, Any]
    metrics: dict[str, Any]
    path: str
    meta: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.meta.get("task", "ranking"))

    @property
    def fit_splits(self) -> tuple[str, ...]:
        """The prepared splits the weights were fitted on (``refit.fit_splits`` of the job:
        ``("train", "valid")`` for a refit, else ``("train",)``)."""
        return tuple((self.config.get("refit") or {}).get("fit_splits") or ("train",))

    @property
    def selected_by(self) -> str | None:
        """The train-only checkpoint whose validation chose a refit's settings (None otherwise)."""
        return (self.config.get("refit") or {}).get("selected_by")


def _localize(path: str | Path | Location) -> tuple[Path, str | None]:
    """A local directory for ``path``; a checkpoint on remote storage is downloaded to a temp dir
    (returned second, for the caller to remove)."""
    loc = Location.of(path, CheckpointError)
    if loc.is_local:
        return loc.local_path(), None
    tmp = tempfile.mkdtemp(prefix="widedeep-ckpt-")
    try:
        loc.download(tmp)
    except FS_ERRORS as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{path}: cannot download checkpoint: {short_error(e)}") from None
    return Path(tmp), tmp


def read_meta(path: str | Path | Location) -> dict[str, Any]:
    """``checkpoint.json`` of a checkpoint directory (a local path or a URI), after checking that
    its required files are there; reads no tensors."""
    loc = Location.of(path, CheckpointError)
    try:
        missing = [f for f in _FILES if not (loc / f).is_file()]
        if missing:
            raise CheckpointError(f"{path}: not a widedeep checkpoint (missing {', '.join(missing)})")
        meta = json.loads((loc / "checkpoint.json").read_text())
    except FS_ERRORS as e:
        raise CheckpointError(f"{path}: cannot read checkpoint.json: {short_error(e)}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}/checkpoint.json: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_feature_space(path: str | Path, meta: Mapping[str, Any]) -> FeatureSpace:
    """The checkpoint's FeatureSpace, checked against the hash ``checkpoint.json`` recorded."""
    p = Path(path)
    fs = FeatureSpace.load(str(p / "feature_space.json"))
    want = meta.get("feature_space_hash")
    if want and fs.content_hash != want:
        raise CheckpointError(f"{p}: feature_space.json hashes to {fs.content_hash} but checkpoint.json records {want}")
    return fs


def load_state_into(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load weights (and the dense optimizer state) of checkpoint ``path`` into live objects."""
    p = Path(path)
    from widedeep.kernels.sharded import has_sharded_tables

    meta_path = p / "checkpoint.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if "tables" in meta or has_sharded_tables(model):  # issue 16: tables by row range and/or sharded here
        from widedeep.kernels.table_store import load_model_state

        load_model_state(p, meta, model)
        _load_optimizer(p, optimizer)
        return
    sd = load_file(str(p / "model.safetensors"))
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{p}/model.safetensors: tensors do not match the model (missing {missing}, unexpected {extra})"
        )
    for k, v in sd.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{p}/model.safetensors: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(sd)
    _load_optimizer(p, optimizer)


def _load_optimizer(p: Path, optimizer: torch.optim.Optimizer | None) -> None:
    if optimizer is not None:
        meta = json.loads((p / "optimizer.json").read_text())
        tensors = load_file(str(p / "optimizer.safetensors"))
        optimizer_from_files(optimizer, tensors, meta)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint directory (local path or URI), on CPU, in eval mode."""
    local, tmp = _localize(path)
    try:
        if not local.is_dir():
            raise CheckpointError(f"{path}: checkpoint directory not found")
        meta = read_meta(local)
        fs = load_feature_space(local, meta)
        raw_cfg = yaml.safe_load((local / "config.yaml").read_text()) or {}
        task = str(meta.get("task", raw_cfg.get("task", "ranking")))
        model = build_model_from_dict(task, fs, raw_cfg)
        load_state_into(local, model)
        model.eval()
        metrics_path = local / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        return LoadedCheckpoint(model, fs, raw_cfg, metrics, str(path), meta)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def is_checkpoint_dir(path: str | os.PathLike[str]) -> bool:
    return all((Path(path) / f).exists() for f in _FILES)
