"""Extending a serving FeatureSpace with a new window of data, and moving prepared ids between spaces.

Why: continuous training (``widedeep retrain``) warm-starts from the serving model, whose
embedding rows are addressed by id. Refitting the vocabularies on the new window would renumber
every value; extending keeps every existing id and gives the window's new values fresh ids after
them (``widedeep.train.warm_start`` then maps the rows by value, and the old rows keep their
meaning). What stays fixed is what the model's weights were trained against:

- vocabulary features: the serving vocabulary in its id order, then the window's new values that
  pass the spec's ``min_count`` *in the window's training rows*, most frequent first, as long as
  ``max_size`` allows (existing ids are never dropped); everything else is out of vocabulary. The
  OOV id stays the last id (it moves up by the number of new values; warm start maps OOV to OOV).
  A known value's count adds the window's count when it reaches ``min_count`` in the window (the
  window's fit keeps no count below it); the counts are informational, ids never depend on them.
- hashed features and crosses: their buckets do not depend on data; unchanged.
- numerics and fitted bucket boundaries: the serving model's normalisation is kept (the MLP's first
  layer was trained on those inputs); how far the window moved is reported as drift instead.

``remap_ids`` moves prepared rows of one space into another of the same spec by value (OOV to
OOV, a value the target lacks to the target's OOV id) and recomputes the crosses: the verification
gate scores the new window with the serving model this way, and the serving model's own held-out
rows with the new model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.errors import FeatureSpecError
from widedeep.features.space import FeatureSpace
from widedeep.features.spec import CrossedFeature, VocabularyFeature


def extend_space(base: FeatureSpace, fresh: FeatureSpace) -> FeatureSpace:
    """``base`` (serving) extended with the vocabularies of ``fresh`` (fitted on the new window).

    Both must come from the same spec (same ``spec_hash``); the error names both hashes.
    """
    if base.spec.hash != fresh.spec.hash:
        raise FeatureSpecError(
            f"extend: the new window was fitted with spec {fresh.spec.hash[:12]}, the serving "
            f"FeatureSpace has spec {base.spec.hash[:12]}; a retrain keeps the serving spec"
        )
    states: dict[str, dict[str, Any]] = {}
    added: dict[str, int] = {}
    for f in base.features:
        st = base.states.get(f.name)
        if st is None:  # numerics without state never happen; keep whatever base has
            continue
        new = fresh.states.get(f.name, {})
        if isinstance(f, VocabularyFeature) and "vocab" in st:
            states[f.name], added[f.name] = _extend_vocab(f, st, new)
        else:
            states[f.name] = dict(st)
    info = {
        **base.fit_info,
        "extended_from": base.content_hash,
        "window": {
            "train_rows": fresh.fit_info.get("train_rows"),
            "label_mean": fresh.fit_info.get("label_mean"),
            "new_values": {k: v for k, v in sorted(added.items()) if v},
        },
    }
    return FeatureSpace(base.spec, states, info)


def _extend_vocab(f: VocabularyFeature, st: dict[str, Any], new: dict[str, Any]) -> tuple[dict[str, Any], int]:
    vocab = list(st["vocab"])
    counts = [int(c) for c in st["counts"]]
    index = {v: i for i, v in enumerate(vocab)}
    window = dict(zip(new.get("vocab", []), new.get("counts", []), strict=True))  # already >= min_count, count desc
    for v, c in window.items():
        i = index.get(v)
        if i is not None:
            counts[i] += int(c)
    room = len(window) if f.max_size is None else max(0, f.max_size - len(vocab))
    fresh_values = [(v, int(c)) for v, c in window.items() if v not in index][:room]
    vocab += [v for v, _ in fresh_values]
    counts += [c for _, c in fresh_values]
    oov_window = int(new.get("oov_train_count", 0)) + sum(
        int(c) for v, c in window.items() if v not in index and v not in dict(fresh_values)
    )
    out = {
        **st,
        "vocab": vocab,
        "counts": counts,
        "oov_id": len(vocab),
        "num_rows": len(vocab) + 1,
        "oov_train_count": int(st.get("oov_train_count", 0)) + oov_window,
    }
    return out, len(fresh_values)


def id_map(source: FeatureSpace, target: FeatureSpace, name: str) -> np.ndarray | None:
    """``m[source id] = target id`` for a vocabulary feature (by value; OOV -> OOV), None otherwise."""
    ss, ts = source.states.get(name, {}), target.states.get(name, {})
    if "vocab" not in ss or "vocab" not in ts:
        return None
    t_index = {v: i for i, v in enumerate(ts["vocab"])}
    t_oov = int(ts["oov_id"])
    m = np.array([t_index.get(v, t_oov) for v in ss["vocab"]] + [t_oov], dtype=np.int64)
    return m


def remap_ids(table: pa.Table, source: FeatureSpace, target: FeatureSpace) -> pa.Table:
    """Prepared rows of ``source`` as ``target`` would have prepared the same raw rows.

    The two spaces must share the spec and the numeric / bucket states (what ``extend_space``
    guarantees): vocabulary ids are mapped by value, crosses recomputed from the mapped component
    ids; every other column is copied. From an extended space to its serving space this is exact;
    the other way a value that was OOV in ``source`` stays OOV (its raw value is not in the rows).
    """
    if source.spec.hash != target.spec.hash:
        raise FeatureSpecError(f"remap: spec {source.spec.hash[:12]} != {target.spec.hash[:12]}")
    for f in source.features:
        if not isinstance(f, VocabularyFeature) and not isinstance(f, CrossedFeature):
            a, b = source.states.get(f.name), target.states.get(f.name)
            if a != b:
                raise FeatureSpecError(
                    f"remap: feature {f.name!r} has different fitted states in the two spaces; "
                    "only vocabularies may differ"
                )
    out = table
    for f in source.features:
        if f.name not in out.column_names:
            continue
        m = id_map(source, target, f.name)
        if m is None or np.array_equal(m, np.arange(len(m))):
            continue
        col = out.column(f.name).combine_chunks()
        if pa.types.is_list(col.type):
            flat = np.asarray(pc.list_flatten(col).to_numpy(zero_copy_only=False), dtype=np.int64)
            offsets = np.asarray(col.offsets.to_numpy(), dtype=np.int64)
            arr = pa.ListArray.from_arrays(pa.array((offsets - offsets[0]).astype(np.int32)), pa.array(m[flat]))
        else:
            arr = pa.array(m[np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)])
        out = out.set_column(out.column_names.index(f.name), f.name, arr)
    crosses = [
        f.name
        for f in target.features
        if isinstance(f, CrossedFeature) and f.name in out.column_names and all(i in out.column_names for i in f.inputs)
    ]
    return target.add_crosses(out, only=crosses) if crosses else out
