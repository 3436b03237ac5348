"""How the candidate sources are merged and how the final list is ordered, chosen on the valid split.

Three settings decide the served list besides the trained models: the share of the N candidates
taken from the item-to-item source (``SourceMix.item_share``), the weight of the item-to-item
score in the retrieval score (``SourceMix.item_weight``, in units of the index's search score),
and the weight of the retrieval logit against the ranker's log-probability (``blend``,
``widedeep.retrieval.candidates.final_scores``). They are picked here by NDCG@10 of the final list
on the valid split's users (train history, train exclusions), never on test, and the same choice
is what evaluation reports and what a bundle serves.

Who chooses: models fitted on the train split only, whose valid figures are out of sample. For a
refit pair (``widedeep.train.config.RefitConfig``: fitted on train and valid) those are the
``selected_by`` checkpoints, the train-only run whose validation chose the refit's epochs
(``choosers_of``); the choice is then applied to the refit models with the item-to-item source
fitted again on the refit's splits (``choose_fitted``, the one path of ``evaluate --task topk``
and of ``widedeep export``).

Cost: the candidate set depends only on the share, so the ranker scores each share's candidates
once; the weights then only re-order (numpy). The grids are geometric and wide, so no point of
them is fitted to one data set: a weight of 0 (the source or the retrieval score unused) is
always among the choices.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from widedeep.errors import CheckpointError
from widedeep.evaluation.topk import EvalData, order_by, ranker_logits, retrieve_sourced
from widedeep.evaluation.tuning import EaseRefused, Tuned, tune_ease, tune_item_knn, tune_source
from widedeep.model.checkpoint import LoadedCheckpoint, load_checkpoint
from widedeep.retrieval.candidates import RankerTerm, SourceMix, ranker_term_of
from widedeep.retrieval.interactions import CSR
from widedeep.retrieval.neighbors import ItemNeighbors, NeighborSettings
from widedeep.retrieval.topk import ranking_metrics

log = logging.getLogger(__name__)

SELECT_BY = "ndcg@10"
ITEM_SHARES = (0.0, 0.25, 0.5, 0.75)
ITEM_WEIGHTS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
BLENDS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
SELECT_KS = (10, 50)


@dataclass(frozen=True)
class Ordering:
    """The chosen merge and order, with the valid-split figures of the choice and of every setting."""

    mix: SourceMix
    blend: float
    ranker_term: RankerTerm = "log_sigmoid"
    valid: dict[str, float] = field(default_factory=dict)
    grid: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "item_share": self.mix.item_share,
            "item_weight": self.mix.item_weight,
            "rerank_blend": self.blend,
            "ranker_term": self.ranker_term,
            "selected_on": "valid",
            "select_by": SELECT_BY,
            "valid": self.valid,
        }


def item_scores_at(neighbors: ItemNeighbors, history: Any, rows: np.ndarray, users_per_block: int = 512) -> np.ndarray:
    """float32 ``[U, n]`` item-to-item score of each candidate row (0 for padding)."""
    out = np.zeros(rows.shape, dtype=np.float32)
    for lo in range(0, rows.shape[0], users_per_block):
        hi = min(rows.shape[0], lo + users_per_block)
        safe = torch.from_numpy(np.maximum(rows[lo:hi], 0))
        out[lo:hi] = torch.gather(neighbors.score(history, lo, hi), 1, safe).numpy()
    return np.where(rows >= 0, out, 0.0)


def select_ordering(
    retriever: Any,
    ranker: Any | None,
    ranker_fs: Any | None,
    valid: EvalData,
    neighbors: ItemNeighbors,
    n: int,
    temperature: float,
    ranker_term: RankerTerm = "log_sigmoid",
) -> Ordering:
    """The (share, item weight, blend) with the best ``SELECT_BY`` on ``valid``, the ranker's logit
    read as ``ranker_term`` (``widedeep.retrieval.candidates.ranker_term_of``: fixed by how the
    ranker was trained, not chosen here)."""
    t0 = time.monotonic()
    grid: list[dict[str, float]] = []
    for share in ITEM_SHARES:
        c = retrieve_sourced(retriever, valid, n, neighbors, SourceMix(share, 0.0))
        index_score = np.where(c.rows >= 0, c.scores, 0.0).astype(np.float64)  # item_weight 0: the index's score
        item = item_scores_at(neighbors, valid.history, c.rows).astype(np.float64)
        logits = ranker_logits(ranker, ranker_fs, valid, c.rows) if ranker is not None else np.zeros(c.rows.shape)
        for w in ITEM_WEIGHTS:
            retrieval_logits = (index_score + w * item) / temperature
            for blend in BLENDS if ranker is not None else (1.0,):
                final = order_by(c.rows, logits, retrieval_logits, blend, ranker_term)
                m = ranking_metrics(final, valid.relevant, tuple(k for k in SELECT_KS if k <= n), ("recall", "ndcg"))
                grid.append({"item_share": share, "item_weight": w, "rerank_blend": blend, **_metrics(m)})
    best = max(range(len(grid)), key=lambda i: (grid[i][SELECT_BY], -i))
    g = grid[best]
    out = Ordering(
        SourceMix(g["item_share"], g["item_weight"]),
        g["rerank_blend"],
        ranker_term,
        {k: v for k, v in g.items() if "@" in k},
        grid,
    )
    log.info(
        "ordering chosen on valid: share %.2f, item weight %g, blend %g (%s %.4f) of %d settings in %.1fs",
        out.mix.item_share,
        out.mix.item_weight,
        out.blend,
        SELECT_BY,
        g[SELECT_BY],
        len(grid),
        time.monotonic() - t0,
    )
    return out


def _metrics(m: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in m.items() if k != "users"}


@dataclass(frozen=True)
class SourceChoice:
    """The item-to-item source (its valid-tuned neighbourhood, fitted on ``fit_splits``: the train
    split, or the refit's splits after ``refitted``) and the merge and order chosen with it on
    valid: what evaluation reports and a bundle serves."""

    settings: NeighborSettings
    neighbors: ItemNeighbors
    ordering: Ordering
    knn: Tuned
    ease: Tuned | None = None
    source_valid: dict[str, Any] = field(default_factory=dict)
    fit_splits: tuple[str, ...] = ("train",)

    def summary(self) -> dict[str, Any]:
        s = self.settings
        source = {
            "kind": s.kind,
            "neighbors": s.neighbors,
            "shrink": s.shrink,
            "lambda": s.lam,
            "fit_splits": list(self.fit_splits),
        }
        return self.ordering.summary() | {"item_source": source, "item_source_valid": self.source_valid.get("valid")}

    def refitted(self, positives: CSR, fit_splits: tuple[str, ...]) -> SourceChoice:
        """The same choice with the neighbourhood fitted on ``positives`` (users x catalog items of
        ``fit_splits``): the settings chosen on valid, the statistics of what the models fitted."""
        return replace(self, neighbors=ItemNeighbors.fit(positives, self.settings), fit_splits=tuple(fit_splits))


def choose_sources(
    retriever: Any,
    ranker: Any | None,
    ranker_fs: Any | None,
    valid: EvalData,
    n: int,
    temperature: float,
    ranker_term: RankerTerm = "log_sigmoid",
) -> SourceChoice:
    """Tune item-kNN and EASE on ``valid`` (as the baselines), build the item-to-item source from
    the better one (``tune_source``; fitted on ``valid``'s fit splits, the train split), and choose
    the merge and order on ``valid``."""
    knn = tune_item_knn(valid)
    try:
        ease = tune_ease(valid)
    except EaseRefused as e:
        log.warning("%s: the item-to-item source uses the cosine neighbourhood", e)
        ease = None
    settings, source_valid = tune_source(valid, knn, ease)
    neighbors = ItemNeighbors.fit(valid.train_pos, settings)
    ordering = select_ordering(retriever, ranker, ranker_fs, valid, neighbors, n, temperature, ranker_term)
    return SourceChoice(settings, neighbors, ordering, knn, ease, source_valid, valid.fit)


@dataclass(frozen=True)
class Choosers:
    """The models whose valid figures choose the settings (train-fitted, so valid is out of
    sample for them). ``checkpoints``: the ``selected_by`` checkpoints of a refit pair (``{"retriever":
    path, "ranker": path or None}``); None when the evaluated models choose for themselves.
    ``ranker_term``: how the final order reads the evaluated ranker's logit (``ranker_term_of`` its
    job config; a refit and its ``selected_by`` run share that config)."""

    retriever: Any
    ranker: Any | None
    ranker_fs: Any | None
    checkpoints: dict[str, str | None] | None = None
    ranker_term: RankerTerm = "log_sigmoid"


def fit_splits_of(ret: LoadedCheckpoint, rk: LoadedCheckpoint | None) -> tuple[str, ...]:
    """The splits a (retriever, ranker) pair was fitted on; both must say the same (the candidate
    statistics, popularity and neighbourhood are fitted once, for both)."""
    fit = ret.fit_splits
    if rk is not None and rk.fit_splits != fit:
        raise CheckpointError(
            f"retriever {ret.path} was fitted on {'+'.join(fit)} but ranker {rk.path} on "
            f"{'+'.join(rk.fit_splits)} (refit.fit_splits): pair checkpoints fitted on the same splits "
            "(refit both or neither)"
        )
    return fit


def _selector(ck: LoadedCheckpoint, role: str, fs: Any) -> LoadedCheckpoint:
    """The checkpoint that chose ``ck``'s settings, checked: same task and FeatureSpace, train-only."""
    if ck.selected_by is None:
        raise CheckpointError(
            f"{role} {ck.path}: fitted on {'+'.join(ck.fit_splits)} but its config records no "
            "refit.selected_by: no train-only checkpoint to choose its settings on valid with"
        )
    sel = load_checkpoint(ck.selected_by)
    if sel.task != ck.task:
        raise CheckpointError(f"{role} {ck.path}: refit.selected_by {ck.selected_by} is a {sel.task!r} checkpoint")
    if sel.feature_space.content_hash != fs.content_hash:
        raise CheckpointError(
            f"{role} {ck.path}: refit.selected_by {ck.selected_by} has FeatureSpace "
            f"{sel.feature_space.content_hash[:12]}, the evaluated pair {fs.content_hash[:12]}"
        )
    if sel.fit_splits != ("train",):
        raise CheckpointError(
            f"{role} {ck.path}: refit.selected_by {ck.selected_by} was fitted on {'+'.join(sel.fit_splits)}; "
            "its valid figures would be in-sample"
        )
    return sel


def choosers_of(ret: LoadedCheckpoint, rk: LoadedCheckpoint | None) -> Choosers:
    """Who chooses for a (retriever, ranker) pair: the pair itself, or for a refit pair (either
    records ``refit.selected_by``) both ``selected_by`` checkpoints (each checked by ``_selector``)."""
    fit_splits_of(ret, rk)
    term = "log_sigmoid" if rk is None else ranker_term_of(rk.config)
    if ret.selected_by is None and (rk is None or rk.selected_by is None) and ret.fit_splits == ("train",):
        return Choosers(
            ret.model, None if rk is None else rk.model, None if rk is None else rk.feature_space, ranker_term=term
        )
    fs = ret.feature_space
    sel_ret = _selector(ret, "retriever", fs)
    sel_rk = None if rk is None else _selector(rk, "ranker", fs)
    return Choosers(
        sel_ret.model,
        None if sel_rk is None else sel_rk.model,
        None if sel_rk is None else sel_rk.feature_space,
        {"retriever": ret.selected_by, "ranker": None if rk is None else rk.selected_by},
        ranker_term=term,
    )


def choose_fitted(
    choosers: Choosers,
    valid: EvalData,
    n: int,
    temperature: float,
    fit_splits: tuple[str, ...],
    positives: CSR,
) -> SourceChoice:
    """``choose_sources`` on ``valid`` (train-fitted) with ``choosers``, then, when the served or
    evaluated models were fitted on other splits (a refit), the item-to-item source fitted again
    on those splits' ``positives`` (users x ``valid.catalog`` items): the settings are valid's,
    the statistics are what the models fitted."""
    choice = choose_sources(
        choosers.retriever, choosers.ranker, choosers.ranker_fs, valid, n, temperature, choosers.ranker_term
    )
    return choice if tuple(fit_splits) == valid.fit else choice.refitted(positives, fit_splits)
