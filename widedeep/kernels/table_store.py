"""Embedding tables in a checkpoint by global row range, so a run saved on N workers resumes on M.

Layout (inside a checkpoint directory, next to ``model.safetensors``)::

    tables/<module>.rank<r>.safetensors   the rows worker r holds of every table of <module>
                                          (replicated tables: written once, by rank 0), keyed
                                          ``<table>#<kind>``: kind ``weight`` [n, D] and the
                                          optimizer state ``adagrad_sum`` [n] / ``ftrl_z``,
                                          ``ftrl_n`` [n, D] (fp32), n the rows of its range

and in ``checkpoint.json`` under ``tables`` (:func:`tables_meta`): the format, the sharding plan
and world size that wrote it, and per module its optimizer, its tables (name, rows, dim) and
every piece: file, table and global rows ``range(start, stop, step)``.

Why by row range: the pieces describe rows, not workers, so any placement can read them —
:func:`load_tables` fills each module with exactly the rows this process holds (all of them
for a plain module: export and serving load a sharded checkpoint into one process), reading
only the overlapping slice of a contiguous piece (``safe_open(...).get_slice``) so that no
worker reads whole tables it does not hold. A checkpoint written without sharding (every table
packed in ``model.safetensors``) is read the same way through :class:`PackedSource`, so a
replicated run can resume sharded too.

Everything is safetensors + JSON: nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from widedeep.errors import CheckpointError
from widedeep.kernels.sharded import (
    ShardedTableBatchedEmbeddingBag,
    embedding_modules,
    table_storage,
    table_tensors,
)
from widedeep.kernels.sharding import RowRange, ShardingPlan, TablePlan

FORMAT = "widedeep.tables/1"
TABLES_DIR = "tables"


def _piece_file(module: str, rank: int) -> str:
    return f"{TABLES_DIR}/{module or 'tables'}.rank{rank:05d}.safetensors"


def _plans(m: Any) -> tuple[int, list[TablePlan]]:
    if isinstance(m, ShardedTableBatchedEmbeddingBag):
        return m.world, list(m.table_plans)
    return 1, [TablePlan(tc.name) for tc in m.layout.tables]


def _writer_ranges(m: Any, t: int) -> list[tuple[int, RowRange]]:
    """(rank, rows) of every piece of table ``t`` of module ``m`` across the world."""
    world, plans = _plans(m)
    n = m.layout.tables[t].num_rows
    if world == 1 or not plans[t].sharded:
        return [(0, RowRange(0, n, 1))]
    return [(r, plans[t].row_range(n, r, world)) for r in range(world)]


def tables_meta(model: torch.nn.Module) -> dict[str, Any]:
    """The ``tables`` entry of ``checkpoint.json``: every piece all workers write together."""
    modules: dict[str, Any] = {}
    world = 1
    plans: list[TablePlan] = []
    for name, m in embedding_modules(model):
        w, p = _plans(m)
        world = max(world, w)
        plans += p
        pieces = []
        for t, tc in enumerate(m.layout.tables):
            for r, rr in _writer_ranges(m, t):
                pieces.append({"table": tc.name, "file": _piece_file(name, r), **rr.to_dict()})
        modules[name] = {
            "optimizer": m.optimizer.kind,
            "tables": [{"name": tc.name, "num_rows": tc.num_rows, "dim": tc.dim} for tc in m.layout.tables],
            "pieces": pieces,
        }
    return {"format": FORMAT, "plan": ShardingPlan(world, tuple(plans)).to_dict(), "modules": modules}


def write_rank_tables(path: str | Path, model: torch.nn.Module, rank: int) -> list[Path]:
    """Write the pieces worker ``rank`` owns under ``path/tables/``; returns the files written."""
    out = []
    for name, m in embedding_modules(model):
        tensors: dict[str, torch.Tensor] = {}
        for t, tc in enumerate(m.layout.tables):
            if not any(r == rank for r, _ in _writer_ranges(m, t)):
                continue
            inner, i, _ = table_storage(m, t)
            for kind, v in table_tensors(inner, i).items():
                # a copy: safetensors refuses views sharing one storage
                tensors[f"{tc.name}#{kind}"] = v.detach().to("cpu", copy=True).contiguous()
        if tensors:
            f = Path(path) / _piece_file(name, rank)
            f.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(f), metadata={"format": FORMAT})
            out.append(f)
    return out


class TableSource(Protocol):
    """Rows of one tensor kind of one table, read from a checkpoint."""

    def fill(self, table: str, kind: str, rows: RowRange, out: torch.Tensor) -> None: ...


def _overlap(a: RowRange, b: RowRange) -> RowRange | None:
    """Contiguous overlap of two step-1 ranges."""
    lo, hi = max(a.start, b.start), min(a.stop, b.stop)
    return RowRange(lo, hi, 1) if hi > lo else None


class PieceSource:
    """The pieces listed in ``checkpoint.json`` (row-range files under ``tables/``)."""

    def __init__(self, root: Path, pieces: Iterable[Mapping[str, Any]]) -> None:
        self.root = root
        self.by_table: dict[str, list[tuple[str, RowRange]]] = {}
        for p in pieces:
            self.by_table.setdefault(str(p["table"]), []).append(
                (str(p["file"]), RowRange(int(p["start"]), int(p["stop"]), int(p["step"])))
            )
        for f in {f for v in self.by_table.values() for f, _ in v}:
            if not (root / f).is_file():
                raise CheckpointError(
                    f"{root}: table piece {f} is missing (listed in checkpoint.json); the checkpoint is incomplete"
                )

    def fill(self, table: str, kind: str, rows: RowRange, out: torch.Tensor) -> None:
        filled = 0
        for f, pr in self.by_table.get(table, []):
            with safe_open(str(self.root / f), framework="pt") as sf:
                key = f"{table}#{kind}"
                if key not in sf.keys():
                    raise CheckpointError(f"{self.root / f}: no tensor {key!r} (optimizer state of another kind?)")
                if pr.step == 1 and rows.step == 1:
                    ov = _overlap(pr, rows)
                    if ov is None:
                        continue
                    part = sf.get_slice(key)[ov.start - pr.start : ov.stop - pr.start]
                    out[ov.start - rows.start : ov.stop - rows.start] = part.to(out.device, out.dtype)
                    filled += len(ov)
                    continue
                piece = sf.get_tensor(key)
            g = torch.arange(pr.start, pr.stop, pr.step)
            keep = (g >= rows.start) & (g < rows.stop) & ((g - rows.start) % rows.step == 0)
            if bool(keep.any()):
                out[((g[keep] - rows.start) // rows.step).to(out.device)] = piece[keep].to(out.device, out.dtype)
                filled += int(keep.sum())
        if filled != len(rows):
            raise CheckpointError(
                f"{self.root}: table {table!r} {kind}: the pieces cover {filled} of the {len(rows)} rows "
                f"range({rows.start}, {rows.stop}, {rows.step}) needed here"
            )


class PackedSource:
    """Tables packed in ``model.safetensors`` as a plain module writes them
    (``<module>.weight`` flat, ``<module>.adagrad_sum`` per row, ``<module>.ftrl_*`` flat)."""

    def __init__(self, file: Path, prefix: str, module: Any) -> None:
        self.file, self.prefix, self.layout = file, prefix, module.layout

    def fill(self, table: str, kind: str, rows: RowRange, out: torch.Tensor) -> None:
        lay = self.layout
        t = lay.table_index(table)
        tc = lay.tables[t]
        key = f"{self.prefix}.{kind}" if self.prefix else kind
        per_row = kind != "adagrad_sum"
        base = lay.elem_offsets[t] if per_row else lay.row_offsets[t]
        width = tc.dim if per_row else 1
        hi = rows.start + (len(rows) - 1) * rows.step + 1 if len(rows) else rows.start
        with safe_open(str(self.file), framework="pt") as sf:
            if key not in sf.keys():
                raise CheckpointError(f"{self.file}: no tensor {key!r} for table {table!r}")
            sl = sf.get_slice(key)
            want = lay.total_elems if per_row else lay.total_rows
            if sl.get_shape() != [want]:
                raise CheckpointError(
                    f"{self.file}: {key} has shape {sl.get_shape()}, the model's tables need [{want}]"
                )
            flat = sl[base + rows.start * width : base + hi * width]
        block = flat.view(-1, tc.dim) if per_row else flat
        out.copy_(block[:: rows.step].to(out.device, out.dtype))


def load_tables(model: torch.nn.Module, sources: Mapping[str, TableSource], where: str) -> None:
    """Fill every embedding module of ``model`` (by name) with the rows it holds from ``sources``."""
    for name, m in embedding_modules(model):
        src = sources.get(name)
        if src is None:
            raise CheckpointError(f"{where}: no tables stored for module {name!r} (stored: {sorted(sources)})")
        with torch.no_grad():
            for t, tc in enumerate(m.layout.tables):
                inner, i, rows = table_storage(m, t)
                for kind, view in table_tensors(inner, i).items():
                    src.fill(tc.name, kind, rows, view)


def piece_sources(root: Path, meta: Mapping[str, Any], model: torch.nn.Module) -> dict[str, TableSource]:
    """Sources of a checkpoint written by row range, checked against ``model``'s tables."""
    tm = meta["tables"]
    if tm.get("format") != FORMAT:
        raise CheckpointError(f"{root}/checkpoint.json: tables format {tm.get('format')!r}, expected {FORMAT!r}")
    out: dict[str, TableSource] = {}
    for name, m in embedding_modules(model):
        entry = tm["modules"].get(name)
        if entry is None:
            raise CheckpointError(f"{root}: no tables stored for module {name!r} (stored: {sorted(tm['modules'])})")
        mine = [{"name": tc.name, "num_rows": tc.num_rows, "dim": tc.dim} for tc in m.layout.tables]
        if entry["tables"] != mine:
            raise CheckpointError(f"{root}: module {name!r} stores tables {entry['tables']}, the model has {mine}")
        if entry["optimizer"] != m.optimizer.kind:
            raise CheckpointError(
                f"{root}: module {name!r} was trained with {entry['optimizer']}, the config builds {m.optimizer.kind}"
            )
        out[name] = PieceSource(root, entry["pieces"])
    return out


def packed_sources(file: Path, model: torch.nn.Module) -> dict[str, TableSource]:
    """Sources of a checkpoint whose tables are packed in ``model.safetensors``."""
    return {name: PackedSource(file, name, m) for name, m in embedding_modules(model)}


def embedding_state_keys(model: torch.nn.Module) -> set[str]:
    """``state_dict`` keys that belong to embedding modules (stored by row range instead)."""
    keys = set()
    for name, m in embedding_modules(model):
        keys |= {f"{name}.{k}" if name else k for k in m.state_dict()}
    return keys


def plain_state_keys(model: torch.nn.Module) -> set[str]:
    """The ``state_dict`` keys a plain (unsharded) build of the same model has for its tables."""
    keys = set()
    for name, m in embedding_modules(model):
        state = {"sgd": [], "rowwise_adagrad": ["adagrad_sum"], "ftrl": ["ftrl_z", "ftrl_n"]}[m.optimizer.kind]
        kinds = ["weight", *state]
        keys |= {f"{name}.{k}" if name else k for k in kinds}
    return keys


def load_model_state(root: Path, meta: Mapping[str, Any], model: torch.nn.Module) -> None:
    """Load a checkpoint's ``model.safetensors`` and its tables into ``model`` (plain or sharded),
    whichever way the tables were stored: by row range (``meta['tables']``) or packed."""
    file = root / "model.safetensors"
    if "tables" in meta:
        sources, stored_tables = piece_sources(root, meta, model), set()
    else:
        sources, stored_tables = packed_sources(file, model), plain_state_keys(model)
    own = set(model.state_dict()) - embedding_state_keys(model)
    with safe_open(str(file), framework="pt") as sf:
        stored = set(sf.keys()) - stored_tables
        missing, extra = sorted(own - stored), sorted(stored - own)
        if missing or extra:
            raise CheckpointError(f"{file}: tensors do not match the model (missing {missing}, unexpected {extra})")
        tensors = {k: sf.get_tensor(k) for k in own}
    current = model.state_dict()
    for k, v in tensors.items():
        if tuple(current[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{file}: {k} has shape {tuple(v.shape)}, the model expects {tuple(current[k].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    load_tables(model, sources, str(root))


def write_checkpoint_tables(path: Path, model: torch.nn.Module, rank: int) -> tuple[dict[str, Any], set[str]] | None:
    """For a model with row-wise sharded tables: write worker ``rank``'s pieces under ``path`` and
    return (the ``tables`` entry of checkpoint.json, the state keys stored there rather than in
    ``model.safetensors``). ``None`` (nothing written) for a model without sharded tables, whose
    checkpoint keeps every table packed in ``model.safetensors``."""
    from widedeep.kernels.sharded import has_sharded_tables

    if not has_sharded_tables(model):
        return None
    write_rank_tables(path, model, rank)
    return tables_meta(model), embedding_state_keys(model)
