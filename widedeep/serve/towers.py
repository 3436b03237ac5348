"""The two-tower retriever's user tower, as serving runs it: one request row -> one vector.

Like the ranker (``scoring.py``), the tower is extracted from the trained ``TwoTower`` into its
own small safetensors format so that serving imports neither training code nor the kernel;
``tests/serve/test_towers.py`` checks it against ``model.user_embedding``. Item vectors are
computed once at export (``widedeep.retrieval.data.embed``) and live in the bundle's index.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from widedeep.errors import CheckpointError
from widedeep.features import TableInfo
from widedeep.model.two_tower import HISTORY_COLUMN
from widedeep.serve.scoring import _pool

TOWER_FORMAT = "widedeep.user_tower/1"


@dataclass(frozen=True)
class TowerSpec:
    """Structure of the user tower: its tables, numerics and MLP depth."""

    feature_space_hash: str
    tables: list[TableInfo]
    dense: list[str]
    n_linear: int
    output_dim: int  # of the search vector (the MLP's output, + 1 with append_one)
    append_one: bool = False  # a popularity prior is folded into the item vectors: user vectors end with a 1

    def to_json(self) -> str:
        return json.dumps({"format": TOWER_FORMAT, **asdict(self)}, indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str, where: str = "user_tower.json") -> TowerSpec:
        d = json.loads(text)
        if d.pop("format", None) != TOWER_FORMAT:
            raise CheckpointError(f"{where}: not a {TOWER_FORMAT} document")
        d["tables"] = [TableInfo(**t) for t in d["tables"]]
        return TowerSpec(**d)


def extract_user_tower(model: Any, fs: Any) -> tuple[TowerSpec, dict[str, torch.Tensor]]:
    """``(spec, tensors)`` of a trained ``TwoTower``'s user tower."""
    m = getattr(model, "module", model)
    tower = m.user_tower
    feats = m.user_features
    tensors: dict[str, torch.Tensor] = {}
    tables = []
    for i, (column, num_rows, pooling, multi) in enumerate(feats.tables):
        w = tower.tbe.table_weight(i).detach().clone()
        tensors[f"table.{i}"] = w
        tables.append(
            TableInfo(
                f"user/{column}",
                column,
                int(num_rows),
                int(w.shape[1]),
                pooling if pooling in ("sum", "mean") else "sum",
                bool(multi),
                "user" if column == HISTORY_COLUMN else fs.feature_side(column),
            )
        )
    linears = [x for x in tower.mlp if isinstance(x, torch.nn.Linear)]
    for j, lin in enumerate(linears):
        tensors[f"mlp.{j}.weight"] = lin.weight.detach().clone()
        tensors[f"mlp.{j}.bias"] = lin.bias.detach().clone()
    one = bool(m.cfg.popularity_prior)  # see TwoTowerConfig.popularity_prior / search_vectors
    spec = TowerSpec(
        str(fs.content_hash), tables, list(feats.dense), len(linears), int(linears[-1].out_features) + one, one
    )
    return spec, {k: v.contiguous() for k, v in tensors.items()}


def save_user_tower(directory: Path, spec: TowerSpec, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(directory / "user_tower.safetensors"))
    (directory / "user_tower.json").write_text(spec.to_json())


def load_user_tower(directory: Path) -> UserTower:
    spec = TowerSpec.from_json((directory / "user_tower.json").read_text(), str(directory / "user_tower.json"))
    return UserTower(spec, load_file(str(directory / "user_tower.safetensors")))


class UserTower:
    """Pooled user/context embeddings + numerics -> ReLU MLP -> L2-normalised vector.

    Args:
        spec: the tower's structure.
        tensors: its weights.
    """

    def __init__(self, spec: TowerSpec, tensors: dict[str, torch.Tensor]) -> None:
        self.spec = spec
        self.t = tensors

    def columns(self) -> list[str]:
        return [t.column for t in self.spec.tables] + list(self.spec.dense)

    @torch.no_grad()
    def embed(self, rows: pa.Table) -> np.ndarray:
        """float32 ``[rows, D]`` vectors of prepared user/context rows."""
        parts = [_pool(self.t[f"table.{i}"], rows, t) for i, t in enumerate(self.spec.tables)]
        for name in self.spec.dense:
            parts.append(torch.from_numpy(np.array(rows.column(name).to_numpy(), dtype=np.float32)).unsqueeze(1))
        h = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for j in range(self.spec.n_linear):
            h = F.linear(h, self.t[f"mlp.{j}.weight"], self.t[f"mlp.{j}.bias"])
            if j < self.spec.n_linear - 1:
                h = torch.relu(h)
        h = F.normalize(h, dim=1)
        if self.spec.append_one:
            h = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype)], dim=1)
        return h.numpy()
