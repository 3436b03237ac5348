"""The feature spec: what a user writes in YAML, validated into frozen dataclasses.

Why a dataclass per kind: each kind has its own keys, and a key that belongs to another kind
(``n_quantiles`` on a categorical) is as much a typo as a misspelling. The ``kind`` key picks
the dataclass, and the strict loader in ``widedeep.config`` rejects everything else with the
key path (``features[3].hash_buckets: must be > 0``).

Example (see ``platform/specs/*.yaml``)::

    label: {condition: 'income == ">50K"', values: ["<=50K", ">50K"]}
    user_key: null
    features:
      - {name: education, kind: categorical, side: user, dim: 16}
      - {name: age, kind: numeric, normalize: cdf, n_quantiles: 100}
      - {name: age_bucket, kind: bucketized, column: age, boundaries: [18, 25, 30, 35, 40, 45, 50, 55, 60, 65]}
      - {name: education_x_occupation, kind: crossed, inputs: [education, occupation], hash_buckets: 1000}

Defaults are the paper's: categoricals feed both sides with 32-dim embeddings, numerics are
normalised by their empirical CDF, crosses feed the wide side.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from widedeep.config import from_dict, read_yaml, to_dict
from widedeep.errors import ConfigError, FeatureSpecError

Side = Literal["user", "item", "context"]
RESERVED = ("label", "user_key", "item_key")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


def _check_common(name: str, dim: int) -> None:
    if not _NAME_RE.match(name):
        raise FeatureSpecError(f"name: {name!r} is not a valid feature name (letters, digits, _ . -)")
    if name in RESERVED:
        raise FeatureSpecError(f"name: {name!r} is reserved for a prepared column")
    if dim <= 0:
        raise FeatureSpecError(f"dim: must be > 0, got {dim}")


@dataclass(frozen=True)
class VocabularyFeature:
    """What the categorical kinds share: values looked up in a fitted vocabulary (``min_count``,
    ``max_size``) or hashed into ``hash_buckets``, on the wide and/or deep side.

    Values are compared as strings (ints are formatted in decimal), so ``7`` and ``"7"`` are
    the same category in training and in a JSON request. Missing, rare and unseen values map
    to the one out-of-vocabulary id (the last id). Not a kind of its own: a spec names
    ``categorical`` or ``multivalent``.
    """

    name: str
    column: str | None = None
    side: Side = "context"
    wide: bool = True
    deep: bool = True
    dim: int = 32
    min_count: int = 1
    max_size: int | None = None
    hash_buckets: int | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        _check_common(self.name, self.dim)
        if self.min_count < 1:
            raise FeatureSpecError(f"min_count: must be >= 1, got {self.min_count}")
        if self.max_size is not None and self.max_size < 1:
            raise FeatureSpecError(f"max_size: must be >= 1, got {self.max_size}")
        if self.hash_buckets is not None and self.hash_buckets <= 0:
            raise FeatureSpecError(f"hash_buckets: must be > 0, got {self.hash_buckets}")
        if self.hash_buckets is not None and self.hash_buckets >= 2**62:
            raise FeatureSpecError(f"hash_buckets: must be < 2**62, got {self.hash_buckets}")


@dataclass(frozen=True)
class CategoricalFeature(VocabularyFeature):
    """One value per row (``VocabularyFeature``'s vocabulary or hashing)."""

    kind: Literal["categorical"] = "categorical"


@dataclass(frozen=True)
class MultivalentFeature(VocabularyFeature):
    """A list of values per row (installed apps, genres), pooled by ``combiner``.

    The column is a list column, or a string column split on ``separator`` (``"Action|Comedy"``).
    """

    kind: Literal["multivalent"] = "multivalent"
    combiner: Literal["sum", "mean"] = "mean"
    separator: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.separator == "":
            raise FeatureSpecError("separator: must not be empty")


@dataclass(frozen=True)
class NumericFeature:
    """A number for the deep side, made finite and normalised.

    Order of operations: missing (null / NaN) -> ``missing``; +-inf -> ``infinity``; ``clip``;
    ``log1p``; then ``normalize`` (``cdf``: the empirical CDF over ``n_quantiles`` quantiles,
    in [0, 1], the paper's scheme; ``standard``: (x - mean) / std; ``none``).
    """

    name: str
    kind: Literal["numeric"] = "numeric"
    column: str | None = None
    side: Side = "context"
    normalize: Literal["cdf", "standard", "none"] = "cdf"
    n_quantiles: int = 100
    log1p: bool = False
    clip: list[float] | None = None
    missing: Literal["median", "mean", "zero", "error"] = "median"
    infinity: Literal["clip", "missing", "error"] = "clip"
    optional: bool = False

    def __post_init__(self) -> None:
        _check_common(self.name, 1)
        if self.n_quantiles < 2:
            raise FeatureSpecError(f"n_quantiles: must be >= 2, got {self.n_quantiles}")
        if self.clip is not None and (len(self.clip) != 2 or not self.clip[0] < self.clip[1]):
            raise FeatureSpecError(f"clip: must be [low, high] with low < high, got {self.clip}")


@dataclass(frozen=True)
class BucketizedFeature:
    """A number turned into a categorical (for the wide side and crosses).

    ``boundaries`` (sorted) or ``num_buckets`` fitted as quantiles on the training split.
    Id ``i`` holds values in ``[b[i-1], b[i])``; missing values get their own last id.
    """

    name: str
    column: str
    kind: Literal["bucketized"] = "bucketized"
    side: Side = "context"
    boundaries: list[float] | None = None
    num_buckets: int | None = None
    wide: bool = True
    deep: bool = False
    dim: int = 8
    optional: bool = False

    def __post_init__(self) -> None:
        _check_common(self.name, self.dim)
        if (self.boundaries is None) == (self.num_buckets is None):
            raise FeatureSpecError("boundaries: give exactly one of boundaries or num_buckets")
        if self.boundaries is not None:
            b = list(self.boundaries)
            if not b or any(not x < y for x, y in itertools.pairwise(b)):
                raise FeatureSpecError(f"boundaries: must be a non-empty, strictly increasing list, got {b}")
        if self.num_buckets is not None and self.num_buckets < 2:
            raise FeatureSpecError(f"num_buckets: must be >= 2, got {self.num_buckets}")


@dataclass(frozen=True)
class CrossedFeature:
    """The cross product of two or more categorical / bucketized / multivalent features.

    Computed from the component features' ids (never raw strings), hashed into ``hash_buckets``.
    With a multivalent component the cross is multivalent (the cartesian product per row).

    A **history cross** (``history: FEATURE``) is the paper's cross-product over sets
    ("user_installed_app=netflix AND impression_app=pandora"): its first component is the values
    of the item-side feature ``history`` over the user's latest ``history_cap`` positive items
    *before* the row (most recent first, distinct), crossed with ``inputs`` of the row's own item
    (one input is enough). It is not a column of the raw data: prepare leaves it out, and the one
    transform ``widedeep.retrieval.liked`` computes it at training, evaluation and serving. At
    most ``max_pairs`` pairs per row are kept (those of the most recent history values).
    """

    name: str
    inputs: list[str]
    hash_buckets: int
    kind: Literal["crossed"] = "crossed"
    wide: bool = True
    deep: bool = False
    dim: int = 8
    combiner: Literal["sum", "mean"] = "sum"
    history: str | None = None
    history_cap: int = 20
    max_pairs: int = 256

    def __post_init__(self) -> None:
        _check_common(self.name, self.dim)
        if len(self.inputs) < (1 if self.history else 2):
            raise FeatureSpecError(f"inputs: a cross needs at least two features, got {self.inputs}")
        if self.history_cap < 1:
            raise FeatureSpecError(f"history_cap: must be >= 1, got {self.history_cap}")
        if self.max_pairs < 1:
            raise FeatureSpecError(f"max_pairs: must be >= 1, got {self.max_pairs}")
        if len(set(self.inputs)) != len(self.inputs):
            raise FeatureSpecError(f"inputs: repeated feature in {self.inputs}")
        if self.hash_buckets <= 0:
            raise FeatureSpecError(f"hash_buckets: must be > 0, got {self.hash_buckets}")
        if self.hash_buckets >= 2**62:
            raise FeatureSpecError(f"hash_buckets: must be < 2**62, got {self.hash_buckets}")


#: what a ``candidate_score`` feature measures (``widedeep.retrieval.candidate_scores``)
CANDIDATE_SCORES = ("similarity", "hits", "popularity")


@dataclass(frozen=True)
class CandidateScoreFeature:
    """A retrieval score of the (user's history, candidate) pair, bucketized: a ranker input.

    The item-to-item source's evidence for the candidate, as the ranker is asked to order the
    candidates that source (and the two-tower index) propose: ``score`` is

    - ``similarity``: the sum, over the user's history items, of the candidate's cosine with each
      (co-occurrence among the train split's positives, each item's top neighbours);
    - ``hits``: how many history items have the candidate among their neighbours;
    - ``popularity``: the candidate's popularity (``widedeep.retrieval.popularity``).

    The history is the liked column of the history crosses over ``history`` (declare one: the
    score shares its history and its cap). Not a column of the raw data: prepare leaves it out and
    the one transform ``widedeep.retrieval.candidate_scores`` computes it at training (for logged
    rows and for every sampled negative, each with its own item), evaluation and serving. Id ``i``
    holds scores in ``[b[i-1], b[i])`` of ``boundaries``; always on the pair side.
    """

    name: str
    score: Literal["similarity", "hits", "popularity"]
    history: str
    boundaries: list[float]
    kind: Literal["candidate_score"] = "candidate_score"
    wide: bool = True
    deep: bool = True
    dim: int = 4

    @property
    def side(self) -> str:
        """Always ``pair``: a function of the user's history and the candidate."""
        return "pair"

    def __post_init__(self) -> None:
        _check_common(self.name, self.dim)
        if self.score not in CANDIDATE_SCORES:
            raise FeatureSpecError(f"score: must be one of {list(CANDIDATE_SCORES)}, got {self.score!r}")
        b = list(self.boundaries)
        if not b or any(not x < y for x, y in itertools.pairwise(b)):
            raise FeatureSpecError(f"boundaries: must be a non-empty, strictly increasing list, got {b}")
        if not (self.wide or self.deep):
            raise FeatureSpecError(f"{self.name!r} feeds neither the wide nor the deep side")


@dataclass(frozen=True)
class HistoryFeature:
    """The user's set as a deep input: an embedding bag over their latest liked values of ``history``.

    The paper's deep part takes the embeddings of the user's set ("User Installed Apps") next to
    the impression app (Cheng et al. 2016, Fig. 4); the history crosses give the wide part the same
    set as memorized (liked, candidate) pairs, this gives the deep part a generalizing summary of it.
    Its values are the history crosses' liked column over ``history`` (``liked_column(history)``:
    the values of that item-side feature over the user's latest positives before the row, most
    recent first, each once), so declare a history cross over ``history``: the feature shares its
    history and its cap (``history_cap``, when given, must equal the crosses'). Not a column of the
    raw data: prepare leaves it out and the one transform ``widedeep.retrieval.liked`` computes the
    column at training (causal), evaluation and serving (from the bundle's user table).

    Deep only, pooled by ``combiner`` over ids of ``history``'s id space (its table has that
    feature's ``num_rows``, so a vocabulary extended at retrain grows both). Its embedding table is
    its own, not shared with ``history``'s: the candidate's embedding and a liked item's have
    different roles (what is scored vs. what the user has), the paper shares nothing explicitly,
    and a separate table keeps every table one feature's (its own ``dim``, optimizer state and
    serving side: user, computed once per request). Always on the user side.
    """

    name: str
    history: str
    kind: Literal["history"] = "history"
    history_cap: int | None = None
    dim: int = 32
    combiner: Literal["sum", "mean"] = "mean"

    @property
    def side(self) -> str:
        """Always ``user``: a function of the user's past alone."""
        return "user"

    @property
    def wide(self) -> bool:
        """Never wide: the wide part has the history crosses."""
        return False

    @property
    def deep(self) -> bool:
        return True

    def __post_init__(self) -> None:
        _check_common(self.name, self.dim)
        if self.history_cap is not None and self.history_cap < 1:
            raise FeatureSpecError(f"history_cap: must be >= 1, got {self.history_cap}")


Feature = (
    CategoricalFeature
    | MultivalentFeature
    | NumericFeature
    | BucketizedFeature
    | CrossedFeature
    | CandidateScoreFeature
    | HistoryFeature
)
KINDS: dict[str, type] = {
    "categorical": CategoricalFeature,
    "multivalent": MultivalentFeature,
    "numeric": NumericFeature,
    "bucketized": BucketizedFeature,
    "crossed": CrossedFeature,
    "candidate_score": CandidateScoreFeature,
    "history": HistoryFeature,
}

_COND_RE = re.compile(r"^\s*([^\s=!<>]+)\s*(==|!=|>=|<=|>|<|\bin\b)\s*(.+?)\s*$")


@dataclass(frozen=True)
class LabelSpec:
    """The label: binary from ``condition`` (``'income == ">50K"'``, ``'rating >= 4'``) or a
    regression target (``task: regression``, ``column``). ``values``, when given, is the
    declared set of raw values; anything else is a bad row."""

    column: str | None = None
    task: Literal["binary", "regression"] = "binary"
    condition: str | None = None
    values: list[Any] | None = None

    def __post_init__(self) -> None:
        if self.condition is None and self.column is None:
            raise FeatureSpecError("column: give the label column or a condition")
        if self.condition is not None:
            if self.task != "binary":
                raise FeatureSpecError("condition: only a binary label takes a condition")
            col, _, _ = parse_condition(self.condition)
            if self.column is not None and self.column != col:
                raise FeatureSpecError(f"condition: names column {col!r} but column is {self.column!r}")
        elif self.task == "binary" and self.values is not None and len(self.values) != 2:
            raise FeatureSpecError(
                "values: a binary label without a condition must declare exactly [negative, positive]"
            )

    @property
    def source(self) -> str:
        return self.column if self.column is not None else parse_condition(self.condition or "")[0]


def parse_condition(text: str) -> tuple[str, str, Any]:
    """``'rating >= 4'`` -> ("rating", ">=", 4); the value is a YAML scalar (or list for ``in``)."""
    m = _COND_RE.match(text)
    if not m:
        raise FeatureSpecError(
            f"condition: cannot parse {text!r}; expected 'COLUMN OP VALUE' with OP in == != >= <= > < in"
        )
    col, op, raw = m.group(1), m.group(2), m.group(3)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise FeatureSpecError(f"condition: cannot parse the value {raw!r}: {e}") from None
    if op == "in" and not isinstance(value, list):
        raise FeatureSpecError(f"condition: 'in' needs a list, got {raw!r}")
    if op != "in" and isinstance(value, (list, dict)):
        raise FeatureSpecError(f"condition: {op} needs a scalar, got {raw!r}")
    return col, op, value


@dataclass(frozen=True)
class _SpecDoc:
    label: LabelSpec
    features: list[Any]
    version: int = 1
    name: str = ""
    format: Literal["auto", "parquet", "csv", "criteo", "movielens"] = "auto"
    user_key: str | None = None
    item_key: str | None = None
    description: str = ""


@dataclass(frozen=True)
class FeatureSpec:
    """The validated spec: label, roles and features in declaration order."""

    label: LabelSpec
    features: tuple[Feature, ...]
    version: int = 1
    name: str = ""
    format: str = "auto"
    user_key: str | None = None
    item_key: str | None = None
    description: str = ""

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = to_dict(self)
        d["features"] = [to_dict(f) for f in self.features]
        return d

    @property
    def hash(self) -> str:
        """sha256 of the normalised spec (defaults filled in), so cosmetic YAML edits don't change it."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def liked_column(feature: str) -> str:
    """The column holding a row's history values of ``feature`` (a history cross's first component)."""
    return f"__liked__.{feature}"


def cross_components(f: CrossedFeature) -> list[str]:
    """The id columns a cross is computed from: the history column first for a history cross."""
    return [liked_column(f.history), *f.inputs] if f.history else list(f.inputs)


def is_history_cross(f: Feature) -> bool:
    """A cross over the user's history (computed from the logs, never by ``prepare``)."""
    return isinstance(f, CrossedFeature) and f.history is not None


def is_candidate_score(f: Feature) -> bool:
    """A retrieval score of the (history, candidate) pair (computed from the logs, never by ``prepare``)."""
    return isinstance(f, CandidateScoreFeature)


def is_computed(f: Feature) -> bool:
    """Not a prepared column: a history cross, a candidate score or a history feature
    (``widedeep.retrieval.liked``)."""
    return is_history_cross(f) or is_candidate_score(f) or isinstance(f, HistoryFeature)


def history_features(features: Any) -> list[HistoryFeature]:
    """The history features (``kind: history``) of a feature list, in order."""
    return [f for f in features if isinstance(f, HistoryFeature)]


def feature_column(f: Feature) -> str | None:
    """The raw column a feature reads (None for crosses, candidate scores and history features)."""
    if isinstance(f, (CrossedFeature, CandidateScoreFeature, HistoryFeature)):
        return None
    return f.column or f.name


def parse_spec(data: Any, source: str = "") -> FeatureSpec:
    """Validate a spec mapping; errors name the key path (prefixed by ``source`` when given)."""
    try:
        return _parse(data)
    except ConfigError as e:
        msg = f"{source}: {e}" if source else str(e)
        raise FeatureSpecError(msg) from None


def load_spec(path: str | Path) -> FeatureSpec:
    """Read and validate a spec YAML file."""
    return parse_spec(read_yaml(path), source=str(path))


def _history_crosses(feats: list[Any], i: int, history: str, what: str) -> list[CrossedFeature]:
    """The history crosses over ``history``, which ``features[i]`` (``what``) reads the liked column
    of; none is an error naming the field."""
    crosses = [x for x in feats if isinstance(x, CrossedFeature) and x.history == history]
    if not crosses:
        raise FeatureSpecError(
            f"features[{i}].history: no history cross over {history!r}; {what} reads the history crosses' "
            f"liked column (declare a crossed feature with history: {history!r})"
        )
    return crosses


def _parse(data: Any) -> FeatureSpec:
    doc = from_dict(_SpecDoc, data)
    if doc.version != 1:
        raise FeatureSpecError(f"version: unsupported spec version {doc.version} (this widedeep reads 1)")
    if not doc.features:
        raise FeatureSpecError("features: at least one feature is required")
    feats: list[Feature] = []
    for i, raw in enumerate(doc.features):
        path = f"features[{i}]"
        if not isinstance(raw, dict):
            raise FeatureSpecError(f"{path}: expected a mapping, got {raw!r}")
        kind = raw.get("kind", "categorical")
        if kind not in KINDS:
            raise FeatureSpecError(f"{path}.kind: must be one of {sorted(KINDS)}, got {kind!r}")
        feats.append(from_dict(KINDS[kind], {**raw, "kind": kind}, path))
    names: dict[str, int] = {}
    for i, f in enumerate(feats):
        if f.name in names:
            raise FeatureSpecError(
                f"features[{i}].name: duplicate feature name {f.name!r} (also features[{names[f.name]}])"
            )
        names[f.name] = i
    for i, f in enumerate(feats):
        if isinstance(f, CrossedFeature):
            for j, inp in enumerate(f.inputs):
                if inp not in names:
                    raise FeatureSpecError(f"features[{i}].inputs[{j}]: unknown feature {inp!r}")
                comp = feats[names[inp]]
                if not isinstance(comp, (VocabularyFeature, BucketizedFeature)):
                    raise FeatureSpecError(
                        f"features[{i}].inputs[{j}]: {inp!r} is {comp.kind}; "
                        "crosses take categorical, multivalent or bucketized features"
                    )
            if f.history is not None:
                h = feats[names[f.history]] if f.history in names else None
                if h is None:
                    raise FeatureSpecError(f"features[{i}].history: unknown feature {f.history!r}")
                if not isinstance(h, VocabularyFeature) or h.side != "item":
                    raise FeatureSpecError(
                        f"features[{i}].history: {f.history!r} must be an item-side categorical or multivalent "
                        "feature (the history is the values of the items the user liked)"
                    )
                if any(isinstance(feats[names[x]], CrossedFeature) for x in f.inputs):
                    raise FeatureSpecError(f"features[{i}].inputs: a history cross takes no cross as input")
        elif isinstance(f, CandidateScoreFeature):
            _history_crosses(feats, i, f.history, "a candidate score")
            h = feats[names[f.history]]
            if not isinstance(h, CategoricalFeature) or h.side != "item":
                raise FeatureSpecError(
                    f"features[{i}].history: {f.history!r} must be the item-side categorical feature of the item ids"
                )
        elif isinstance(f, HistoryFeature):
            cap = _history_crosses(feats, i, f.history, "a history feature")[0].history_cap
            if f.history_cap is not None and f.history_cap != cap:
                raise FeatureSpecError(
                    f"features[{i}].history_cap: {f.history_cap} differs from the history crosses' over "
                    f"{f.history!r} ({cap}); a history feature shares their history (leave it out or give {cap})"
                )
        elif not isinstance(f, NumericFeature) and not (f.wide or f.deep) and not _used_in_cross(f.name, feats):
            raise FeatureSpecError(
                f"features[{i}]: {f.name!r} feeds neither the wide nor the deep side and no cross uses it"
            )
    return FeatureSpec(
        label=doc.label,
        features=tuple(feats),
        version=doc.version,
        name=doc.name,
        format=doc.format,
        user_key=doc.user_key,
        item_key=doc.item_key,
        description=doc.description,
    )


def _used_in_cross(name: str, feats: list[Feature]) -> bool:
    return any(isinstance(f, CrossedFeature) and (name in f.inputs or f.history == name) for f in feats)


def spec_from_dict(d: dict[str, Any]) -> FeatureSpec:
    """Rebuild a spec from ``FeatureSpec.to_dict()`` output (used by FeatureSpace.load)."""
    return _parse(d)
