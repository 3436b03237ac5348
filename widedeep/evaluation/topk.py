"""Full-catalog top-K evaluation of retrieval, of retrieval + ranking, and of two baselines.

For every user of the evaluated split with at least one positive (``label > 0.5``), the WHOLE
item catalog minus the user's training items is ranked (no sampled negatives):

- **retrieval**: the two-tower user vector against every item vector (exact search, through
  the same ``CandidateGenerator`` the online Retriever uses) -> Recall@10/50/100/500;
- **final**: the top-N candidates re-ranked by the Wide & Deep ranker (user-side prepared
  columns of the user + item-side columns of each candidate from the catalog, pair crosses
  through ``fs.add_crosses``) -> HR@10, NDCG@10, Recall@10, Recall@50;
- **baselines**, through the same ranking engine and exclusions: most-popular, item-kNN
  (shrunk cosine over the training interaction matrix) and EASE (Steck 2019), their settings
  chosen on the valid split (``widedeep.evaluation.tuning``).

Definitions: the *known past* of an evaluated split is every split before it in time
(``known_splits``: the train split for valid, train and valid for test), what a served request
at that moment knows (the bundle's user histories hold every logged row). A user's *seen items*
are every item of their rows in the known past (any label: a seen item is never recommended
again); their *history* (the item-to-item source's and the baselines' query, the retriever's
pooled history, the ranker's history crosses) is its positives, for every method alike. The
*fit splits* are the splits the models' weights were fitted on (``LoadedCheckpoint.fit_splits``:
the train split, or train and valid for a refit, ``widedeep.train.config.RefitConfig``), and
everything else that is fitted is fitted on the same splits: item popularity
(``widedeep.retrieval.popularity``: distinct users with a positive row there), the baselines'
item-item matrices, the item-to-item source's neighbourhood and the candidate scores'
statistics. Evaluating on a fit split is refused (its figures would be in-sample). The settings
(the baselines', the source's, the merge and order) are always chosen on the valid split with
train-fitted models: a refit's ``selected_by`` checkpoints, whose validation chose its epochs
(``widedeep.evaluation.selection.choosers_of``). *Relevant* items are the evaluated split's
positives that are not seen items of the user (re-occurrences can never be recommended, so they
are counted in ``positives_already_in_train`` and left out). The catalog is every item of the
prepared directory (all splits).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from widedeep.data.collate import Collator
from widedeep.errors import CheckpointError, DataError
from widedeep.evaluation.baselines import EASE, EaseRefused, ItemKNN, MostPopular
from widedeep.evaluation.significance import paired_bootstrap, seed_summary
from widedeep.evaluation.tuning import Tuned, tune_ease, tune_item_knn
from widedeep.model.checkpoint import load_checkpoint, refuse_in_sample
from widedeep.model.two_tower import HISTORY_COLUMN, history_source, search_vectors, two_tower_config
from widedeep.paths import Location, write_json
from widedeep.retrieval.candidate_scores import CandidateStats, candidate_stats_from
from widedeep.retrieval.candidates import (
    SOURCE_NAMES,
    CandidateGenerator,
    Candidates,
    RankerTerm,
    SourceMix,
    final_scores,
)
from widedeep.retrieval.data import (
    SPLITS,
    Catalog,
    build_catalog,
    data_root,
    embed,
    first_by_key,
    interactions,
    load_rows,
    read_split,
    side_columns,
    split_columns,
)
from widedeep.retrieval.history import Histories, history_columns, with_history
from widedeep.retrieval.index import ExactIndex
from widedeep.retrieval.interactions import CSR, key_rows, positive_rows
from widedeep.retrieval.liked import liked_from
from widedeep.retrieval.neighbors import ItemNeighbors
from widedeep.retrieval.popularity import item_popularity
from widedeep.retrieval.topk import hit_matrix, ndcg_per_user, rank_topk, ranking_metrics

if TYPE_CHECKING:  # selection builds on this module
    from widedeep.evaluation.selection import Choosers

log = logging.getLogger(__name__)

RETRIEVAL_KS = (10, 50, 100, 500)
FINAL_KS = (10, 50)


def _final_subset(m: dict[str, float]) -> dict[str, float]:
    keys = ("hr@10", "ndcg@10", "recall@10", "recall@50", "ndcg@50", "hr@50")
    return {k: m[k] for k in keys if k in m} | {"users": m["users"]}


def known_splits(split: str) -> tuple[str, ...]:
    """The splits before ``split`` in time (``SPLITS`` order; a directory that is not a split of
    its own knows the train split): a per-user time split puts each user's valid rows after their
    train rows and before their test rows, so at test time the valid rows are history, as they
    are for a served request."""
    return SPLITS[: SPLITS.index(split)] if split in SPLITS[1:] else ("train",)


class EvalData:
    """Users, catalog and interaction sets of one evaluation (built once, shared by all methods).

    ``fit_splits``: what the evaluated models were fitted on (``LoadedCheckpoint.fit_splits``);
    popularity, ``train_pos`` / ``train_users`` (the fitted methods' interaction matrix, named for
    the usual case) and the candidate scores' statistics come from them, the known past (history,
    exclusions) from ``known_splits``. ``fitted_by`` names the models in the in-sample refusal.
    """

    def __init__(
        self,
        fs: Any,
        data_dir: str | Path | Location,
        fit_splits: tuple[str, ...] = ("train",),
        fitted_by: str = "the evaluated models",
    ) -> None:
        t0 = time.monotonic()
        self.fs = fs
        p = Location.of(data_dir)
        self.root = data_root(p)
        self.split_dir = p if p.name in SPLITS and str(p) != str(self.root) else self.root / "test"
        if not fs.user_key or not fs.item_key:
            raise DataError(f"{self.root}: top-K evaluation needs user_key and item_key in the FeatureSpace")
        self.fit = tuple(fit_splits)
        if not self.fit or not set(self.fit) <= set(SPLITS):
            raise CheckpointError(f"{fitted_by}: fit splits {list(self.fit)} are not splits of {list(SPLITS)}")
        refuse_in_sample(self.split_dir.name, self.fit, fitted_by)
        uk, ik = fs.user_key, fs.item_key
        self.catalog: Catalog = build_catalog(fs, self.root)
        user_cols = side_columns(fs, ("user", "context"))
        self.known = known_splits(self.split_dir.name)
        cols = [uk, ik, "label", *user_cols]
        # each split read once, in time order: the known past (train, then the later ones that
        # exist) and the fit splits (every one must exist: the models were fitted on it)
        read = [s for s in SPLITS if s in self.fit or s == "train" or (s in self.known and (self.root / s).exists())]
        tables = {s: read_split(self.root / s, cols) for s in read}
        fit = pa.concat_tables([tables[s] for s in self.fit], promote_options="permissive")
        past = pa.concat_tables([tables[s] for s in self.known if s in tables], promote_options="permissive")
        test = read_split(self.split_dir, cols)
        test_pos = positive_rows(test)
        items = self.catalog.keys
        # relevant = the split's positives that are not seen items of the user (those are
        # excluded from every ranking, so they could never be hit)
        cand_users = first_by_key(test_pos.select([uk]), uk)[0]
        rel = interactions(test_pos, uk, ik, cand_users, items, positives_only=False)
        seen = interactions(past, uk, ik, cand_users, items, positives_only=False)
        n = np.int64(len(items))
        keep = ~np.isin(rel.row_ids() * n + rel.indices, seen.row_ids() * n + seen.indices)
        rel = CSR.from_pairs(rel.row_ids()[keep], rel.indices[keep], rel.n_rows, rel.n_cols)
        has = rel.lengths() > 0
        self.dropped_seen_positives = int((~keep).sum())
        self.users = cand_users[has]  # users with >= 1 positive
        self.relevant = rel.take_rows(np.flatnonzero(has))
        self.exclude = seen.take_rows(np.flatnonzero(has))
        self.train_users = first_by_key(fit.select([uk]), uk)[0]
        self.history = interactions(past, uk, ik, self.users, items, positives_only=True)
        self.train_pos = interactions(fit, uk, ik, self.train_users, items, positives_only=True)
        self.popularity = item_popularity(fit, ik, items, uk)  # float64 [n_items]
        # the user's features: their rows of the fit splits first (train first: every user of a
        # per-user time split has some), else their rows in the evaluated split
        both = pa.concat_tables(
            [fit.select([uk, *user_cols]), test.select([uk, *user_cols])], promote_options="permissive"
        )
        ukeys, urows = first_by_key(both, uk)
        self.user_table = urows.take(pa.array(key_rows(self.users, ukeys)))
        log.info(
            "top-K eval: %d users with positives in %s, %d items in the catalog, %d relevant pairs (%.1fs)",
            len(self.users),
            self.split_dir,
            self.catalog.n_items,
            self.relevant.nnz,
            time.monotonic() - t0,
        )
        if len(self.users) == 0:
            raise DataError(f"{self.split_dir}: no user has a positive (label > 0.5) row to evaluate")
        self._liked: dict[str, dict[str, pa.ListArray]] = {}
        self._stats: dict[str, CandidateStats | None] = {}

    def liked(self, fs: Any) -> dict[str, pa.ListArray]:
        """The evaluated users' liked columns for ``fs``'s history crosses: their latest positives
        of the known past (what the ranker's history is at serving time for these users)."""
        got = self._liked.get(fs.content_hash)
        if got is None:
            got = self._liked[fs.content_hash] = (
                liked_from(fs, self.root, self.known).columns(self.users) if fs.history_crosses else {}
            )
        return got

    def candidate_stats(self, fs: Any) -> CandidateStats | None:
        """The candidate scores' statistics for ``fs`` (the fit splits', as at training and in a
        bundle); None without candidate scores."""
        if fs.content_hash not in self._stats:
            self._stats[fs.content_hash] = candidate_stats_from(fs, self.root, self.fit)
        return self._stats[fs.content_hash]


def user_rows(model: Any, data: EvalData) -> pa.Table:
    """The evaluated users' tower inputs: their features, plus their history of the known past when
    the retriever pools one (``task_config.history``)."""
    m = getattr(model, "module", model)
    if HISTORY_COLUMN not in m.user_features.columns:
        return data.user_table
    id_col = history_source(data.fs)[0]
    past = load_rows(data.root, data.known, history_columns(split_columns(data.root / "train"), id_col))
    hist = Histories.from_rows(past, "user_key", id_col)
    return with_history(data.user_table, hist, data.users, m.cfg.history)


def retrieve_sourced(
    model: Any, data: EvalData, n: int, neighbors: ItemNeighbors | None = None, mix: SourceMix | None = None
) -> Candidates:
    """The candidate stage for every user: the two-tower index, merged with the item-to-item
    source queried with the user's train positives when ``neighbors`` and ``mix`` are given
    (the same ``CandidateGenerator`` the online Retriever uses)."""
    t0 = time.monotonic()
    cfg = getattr(model, "module", model).cfg
    popularity = data.popularity.astype(np.float32)
    item_vecs = search_vectors(cfg, "item", embed(model, "item", data.catalog.table), popularity)
    user_vecs = search_vectors(cfg, "user", embed(model, "user", user_rows(model, data)))
    gen = CandidateGenerator(
        ExactIndex(item_vecs),
        popularity,
        data.catalog.keys,
        seen=(data.users, data.exclude),
        neighbors=neighbors,
        item_vectors=item_vecs,
        mix=mix,
    )
    c = gen.sourced(user_vecs, n, data.exclude, recent=data.history)
    log.info(
        "retrieval: %d users x %d items ranked in %.1fs", len(data.users), data.catalog.n_items, time.monotonic() - t0
    )
    return c


def retrieve(model: Any, data: EvalData, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows [U, n], scores [U, n], sources [U, n])`` of the two-tower retriever alone."""
    c = retrieve_sourced(model, data, n)
    return c.rows, c.scores, c.sources


def ranker_logits(ranker: Any, rfs: Any, data: EvalData, cand: np.ndarray, users_per_chunk: int = 64) -> np.ndarray:
    """float64 ``[U, n]`` ranker logits of every candidate (-inf for padding -1)."""
    user_cols = [c for c in side_columns(rfs, ("user", "context")) if c in data.user_table.column_names]
    item_tab = data.catalog.table
    collator = Collator(rfs, require_label=False)
    liked = data.liked(rfs)
    stats = data.candidate_stats(rfs)
    n_users, _n = cand.shape
    out = np.full(cand.shape, -np.inf, dtype=np.float64)
    t0 = last = time.monotonic()
    ranker.eval()
    for lo in range(0, n_users, users_per_chunk):
        hi = min(n_users, lo + users_per_chunk)
        c = cand[lo:hi]
        valid = c >= 0
        u_idx = np.repeat(np.arange(lo, hi), valid.sum(1))
        t = data.user_table.select(user_cols).take(pa.array(u_idx))
        it = item_tab.take(pa.array(c[valid]))
        for name in it.column_names:
            if name not in t.column_names:
                t = t.append_column(name, it.column(name))
        for name, v in liked.items():  # the history crosses' user side
            t = t.append_column(name, v.take(pa.array(u_idx)))
        t = rfs.add_crosses(t)
        if stats is not None:  # retrieval's evidence for each candidate (never a train item: nothing left out)
            t = stats.add(rfs, t)
        with torch.no_grad():
            block = out[lo:hi]
            block[valid] = ranker(collator(t)).float().numpy()
        now = time.monotonic()
        if now - last > 10:
            rate = hi / (now - t0)
            log.info("re-ranking: %d/%d users (%.0f users/s, ETA %.0fs)", hi, n_users, rate, (n_users - hi) / rate)
            last = now
    return out


def order_by(
    cand: np.ndarray,
    logits: np.ndarray,
    retrieval_logits: np.ndarray | None,
    blend: float,
    term: RankerTerm = "log_sigmoid",
) -> np.ndarray:
    """The candidates of every user in ``final_scores`` order (padding -1 stays last)."""
    valid = cand >= 0
    s = np.full(cand.shape, -np.inf, dtype=np.float64)
    s[valid] = final_scores(logits[valid], None if retrieval_logits is None else retrieval_logits[valid], blend, term)
    return np.take_along_axis(cand, np.argsort(-s, axis=1, kind="stable"), 1)


def rerank(
    ranker: Any,
    rfs: Any,
    data: EvalData,
    cand: np.ndarray,
    retrieval_logits: np.ndarray | None = None,
    blend: float = 0.0,
    term: RankerTerm = "log_sigmoid",
    users_per_chunk: int = 64,
) -> np.ndarray:
    """The candidates of every user re-ordered by the ranker (padding -1 stays last).

    The order is by ``ranker term + blend * retrieval logit`` (``final_scores``; the term is
    ``log sigmoid(ranker logit)`` or the logit, ``term``): with ``blend = 0``
    the ranker alone orders the list; ``blend > 0`` keeps part of the retrieval score, i.e. the
    learned estimate of how likely the user is to engage with the item at all, which a ranker
    trained on impressions (P(label | shown)) does not model.
    """
    return order_by(cand, ranker_logits(ranker, rfs, data, cand, users_per_chunk), retrieval_logits, blend, term)


def valid_data(fs: Any, data: EvalData) -> EvalData | None:
    """The valid split of the evaluated data (where every baseline setting is chosen), or None
    when the prepared directory has no valid split."""
    valid = data.root / "valid"
    if str(data.split_dir) == str(valid):
        return data
    return EvalData(fs, valid) if valid.exists() else None


def baselines(
    data: EvalData,
    k: int,
    valid: EvalData | None = None,
    knn_t: Tuned | None = None,
    ease_t: Tuned | None = None,
    lists: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Most-popular, item-kNN and EASE through the same engine, exclusions and metrics.

    Item-kNN's neighbours and shrinkage and EASE's ``lambda`` are chosen on ``valid``
    (``widedeep.evaluation.tuning``; ``knn_t`` / ``ease_t``: choices already made); without a
    valid split they keep fixed defaults (100 neighbours, no shrinkage, ``lambda`` 500) and say
    so (``selected_on: defaults``). EASE is ``{"skipped": reason}`` above ``EASE_MAX_ITEMS``.
    ``lists``: when given, receives each baseline's top-K rows (for paired comparisons).
    """
    out: dict[str, Any] = {}
    ks = tuple(x for x in RETRIEVAL_KS if x <= k) or (k,)

    def run(label: str, score: Any) -> dict[str, float]:
        rows, _ = rank_topk(score, len(data.users), data.catalog.n_items, k, data.exclude, label=label)
        if lists is not None:
            lists[label] = rows
        return ranking_metrics(rows, data.relevant, ks)

    pop = MostPopular(data.popularity)
    out["most_popular"] = run("most-popular", lambda lo, hi: pop.score(data.history, lo, hi))
    knn_t = knn_t or (tune_item_knn(valid) if valid is not None else None)
    kp = knn_t.params if knn_t else {"neighbors": 100.0, "shrink": 0.0}
    knn = ItemKNN(data.train_pos, neighbors=int(kp["neighbors"]), shrink=kp["shrink"])
    out["item_knn"] = run("item-kNN", lambda lo, hi: knn.score(data.history, lo, hi))
    out["item_knn"] |= knn_t.summary() if knn_t else {"params": kp, "selected_on": "defaults"}
    try:
        ease_t = ease_t or (tune_ease(valid) if valid is not None else None)
        lam = ease_t.params["lambda"] if ease_t else 500.0
        ease = EASE(data.train_pos, lam)
    except EaseRefused as e:
        log.warning("%s", e)
        out["ease"] = {"skipped": str(e)}
        return out
    out["ease"] = run("EASE", lambda lo, hi: ease.score(data.history, lo, hi))
    out["ease"] |= ease_t.summary() if ease_t else {"params": {"lambda": lam}, "selected_on": "defaults"}
    return out


def source_figures(cand: Candidates, final: np.ndarray | None, data: EvalData, n: int) -> dict[str, Any]:
    """Per-source figures of the merged candidate list: each source's share of the candidates and
    of the final top-10, the recall of what each source contributed, and the merged list's own
    metrics in retrieval-score order."""
    ks = tuple(x for x in (10, 50, n) if x <= n)
    out: dict[str, Any] = {"merged": ranking_metrics(cand.rows, data.relevant, ks)}
    hits = hit_matrix(cand.rows, data.relevant)
    n_rel = data.relevant.lengths()
    for code, name in enumerate(SOURCE_NAMES):
        mine = cand.sources == code
        if not mine.any():
            continue
        out[name] = {
            "candidates_share": float(mine.sum() / max((cand.rows >= 0).sum(), 1)),
            f"recall@{n}_contributed": float(np.mean((hits & mine).sum(1) / n_rel)),
        }
        if final is not None:
            top = final[:, :10]
            pos = _positions(cand.rows, top)
            src_top = np.where(pos >= 0, np.take_along_axis(cand.sources, np.maximum(pos, 0), 1), -1)
            out[name]["final_top10_share"] = float((src_top == code).sum() / max((top >= 0).sum(), 1))
    return out


def _positions(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per user, the column of ``rows`` holding each of ``items`` (-1 when absent)."""
    n_users, width = rows.shape
    span = np.int64(max(int(rows.max(initial=0)), int(items.max(initial=0))) + 2)
    base = np.arange(n_users, dtype=np.int64)[:, None] * span
    flat = (base + rows + 1).ravel()  # +1: padding -1 stays inside its user's range
    order = np.argsort(flat, kind="stable")
    want = (base + items + 1).ravel()
    at = np.minimum(np.searchsorted(flat[order], want), flat.size - 1)
    found = (flat[order][at] == want) & (items.ravel() >= 0)
    return np.where(found, order[at] % width, -1).reshape(items.shape)


def evaluate_topk(
    retriever: Any,
    data: EvalData,
    ranker: Any | None,
    ranker_fs: Any | None,
    n_candidates: int,
    blend: float = 0.0,
    temperature: float = 1.0,
    choosers: Choosers | None = None,
) -> dict[str, Any]:
    """All metrics as the JSON document ``run_topk`` writes.

    With a valid split, the item-to-item source (item-kNN's valid-tuned neighbourhood) is merged
    into the candidates and the merge and final order are chosen on valid
    (``widedeep.evaluation.selection``) by ``choosers`` (default: the evaluated models; a refit
    pair's ``selected_by`` checkpoints), the source then fitted on ``data``'s fit splits; without
    one, the two-tower candidates alone are re-ranked with ``blend``.
    """
    from widedeep.evaluation.selection import Choosers, choose_fitted  # selection builds on this module

    k = max(max(RETRIEVAL_KS), n_candidates)
    rows, _, _ = retrieve(retriever, data, k)
    result: dict[str, Any] = {
        "users": len(data.users),
        "items": int(data.catalog.n_items),
        "candidates": int(n_candidates),
        "positives_already_in_train": int(data.dropped_seen_positives),
        "retrieval": ranking_metrics(rows, data.relevant, RETRIEVAL_KS),
    }
    valid = valid_data(data.fs, data)
    knn_t = ease_t = neighbors = mix = None
    who = choosers or Choosers(retriever, ranker, ranker_fs)
    if valid is not None:
        choice = choose_fitted(who, valid, n_candidates, temperature, data.fit, data.train_pos)
        knn_t, ease_t, neighbors = choice.knn, choice.ease, choice.neighbors
        mix, blend = choice.ordering.mix, choice.ordering.blend
        result["ordering"] = choice.summary()
    cand = retrieve_sourced(retriever, data, n_candidates, neighbors, mix)
    final = None
    if ranker is not None:
        t0 = time.monotonic()
        final = rerank(ranker, ranker_fs, data, cand.rows, cand.scores / temperature, blend, who.ranker_term)
        log.info("re-ranked %d x %d candidates in %.1fs", *cand.rows.shape, time.monotonic() - t0)
        result["final"] = _final_subset(ranking_metrics(final, data.relevant, FINAL_KS))
        result["final"]["reranked"] = True
        result["final"]["blend"] = float(blend)
        result["final"]["ranker_term"] = who.ranker_term
    else:
        result["final"] = _final_subset(ranking_metrics(cand.rows, data.relevant, FINAL_KS))
        result["final"]["reranked"] = False
    result["sources"] = source_figures(cand, final, data, n_candidates)
    lists: dict[str, np.ndarray] = {}
    result["baselines"] = baselines(data, max(RETRIEVAL_KS), valid, knn_t, ease_t, lists)
    result["significance"] = versus_best_baseline(final if final is not None else cand.rows, data, result, lists)
    return result


def versus_best_baseline(
    final: np.ndarray, data: EvalData, result: dict[str, Any], lists: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Paired bootstrap of the per-user NDCG@10 of the final list minus the best baseline's (the
    baseline with the highest mean NDCG@10 among item-kNN and EASE)."""
    names = {"item-kNN": "item_knn", "EASE": "ease"}
    have = [(lab, key) for lab, key in names.items() if lab in lists and "ndcg@10" in result["baselines"][key]]
    lab, key = max(have, key=lambda x: result["baselines"][x[1]]["ndcg@10"])
    out = paired_bootstrap(ndcg_per_user(final, data.relevant, 10), ndcg_per_user(lists[lab], data.relevant, 10))
    return {"metric": "ndcg@10", "baseline": key} | out


def format_table(result: dict[str, Any]) -> str:
    cols = ["recall@10", "recall@50", "recall@100", "recall@500", "hr@10", "ndcg@10"]
    rows = [
        ("retrieval (two-tower)", result["retrieval"]),
        *([("candidates, merged (no ranker)", result["sources"]["merged"])] if "sources" in result else []),
        (f"retrieval + ranker (top-{result['candidates']})", result["final"]),
        ("most-popular", result["baselines"]["most_popular"]),
        ("item-kNN", result["baselines"]["item_knn"]),
    ]
    if "recall@10" in result["baselines"].get("ease", {}):
        rows.append(("EASE", result["baselines"]["ease"]))
    w = max(len(r[0]) for r in rows) + 2
    lines = [
        f"top-K over the full catalog: {result['users']} users, {result['items']} items",
        "".ljust(w) + "".join(c.rjust(11) for c in cols),
    ]
    for name, m in rows:
        lines.append(name.ljust(w) + "".join((f"{m[c]:.4f}" if c in m else "-").rjust(11) for c in cols))
    if result.get("selected_by"):  # a refit pair
        chose = ", ".join(str(v) for v in result["selected_by"].values() if v)
        lines.append(f"fitted on {'+'.join(result['fit_splits'])}; settings chosen on valid by {chose}")
    sig = result.get("significance")
    if sig:
        lines.append(
            f"final - {sig['baseline']} NDCG@10 per user: {sig['mean_diff']:+.4f} "
            f"({100 * sig['level']:.0f}% paired bootstrap CI {sig['ci_low']:+.4f} .. {sig['ci_high']:+.4f}, "
            f"{sig['users']} users)"
        )
    seeds = result.get("seeds")
    if seeds:
        n = len(seeds["checkpoints"])
        for part in ("retrieval", "merged", "final"):
            figs = ", ".join(f"{m} {v['mean']:.4f} +- {v['std']:.4f}" for m, v in seeds[part].items() if m in cols)
            lines.append(f"{part} over {n} seeds: {figs}")
    return "\n".join(lines)


def run_topk(
    retriever_ckpt: str | list[str], ranker_ckpt: str | list[str] | None, data_dir: str, metrics_out: str | None
) -> int:
    """``widedeep evaluate --task topk``: evaluate, print a table, write the metrics JSON.

    Several ``(retriever, ranker)`` pairs (the same job trained with different seeds) are each
    evaluated the same way; the report is the first pair's, plus ``seeds``: the mean and standard
    deviation of every figure of the final list, retrieval and the merged candidates over the
    pairs, and each pair's bootstrap interval against the best baseline.
    """
    rets = [retriever_ckpt] if isinstance(retriever_ckpt, str) else list(retriever_ckpt)
    rks = [ranker_ckpt] if isinstance(ranker_ckpt, str) or ranker_ckpt is None else list(ranker_ckpt)
    if len(rks) == 1 and len(rets) > 1 and rks[0] is None:
        rks = rks * len(rets)
    if len(rks) != len(rets):
        raise CheckpointError(f"--task topk: {len(rets)} --retriever checkpoint(s) but {len(rks)} --ranker ones")
    results: list[dict[str, Any]] = []
    for rt, rk in zip(rets, rks, strict=True):
        results.append(_run_one(rt, rk, data_dir))
        if results[-1]["fit_splits"] != results[0]["fit_splits"]:
            raise CheckpointError(
                f"--task topk: {rt} was fitted on {'+'.join(results[-1]['fit_splits'])} but {rets[0]} on "
                f"{'+'.join(results[0]['fit_splits'])}: the seeds' spread is only meaningful over pairs "
                "trained the same way (refit all or none)"
            )
    result = results[0]
    if len(results) > 1:
        result["seeds"] = {
            part: {m: seed_summary([r[part][m] for r in results]) for m in results[0][part] if "@" in m}
            for part in ("final", "retrieval")
        } | {
            "merged": {
                m: seed_summary([r["sources"]["merged"][m] for r in results])
                for m in results[0]["sources"]["merged"]
                if "@" in m
            },
            "significance": [r["significance"] for r in results],
            "checkpoints": [
                {"retriever": r["retriever"], "ranker": r["ranker"], "selected_by": r["selected_by"]} for r in results
            ],
        }
    print(format_table(result))
    if metrics_out:
        write_json(metrics_out, result, indent=2)  # a local path or a URI
    return 0


def _run_one(retriever_ckpt: str, ranker_ckpt: str | None, data_dir: str) -> dict[str, Any]:
    """The report of one (retriever, ranker) pair: evaluated with what they were fitted on
    (``LoadedCheckpoint.fit_splits``), their settings chosen on valid by train-fitted models
    (themselves, or a refit pair's ``selected_by`` checkpoints)."""
    from widedeep.evaluation.selection import choosers_of, fit_splits_of  # selection builds on this module

    ret = load_checkpoint(retriever_ckpt)
    if ret.task != "retrieval":
        raise CheckpointError(f"{retriever_ckpt}: checkpoint task is {ret.task!r}, expected 'retrieval' (--retriever)")
    fs = ret.feature_space
    rk = ranker = ranker_fs = None
    if ranker_ckpt:
        rk = load_checkpoint(ranker_ckpt)
        ranker, ranker_fs = rk.model, rk.feature_space
        if ranker_fs.content_hash != fs.content_hash:
            raise CheckpointError(
                f"ranker {ranker_ckpt} FeatureSpace {ranker_fs.content_hash[:12]} != retriever "
                f"{retriever_ckpt} FeatureSpace {fs.content_hash[:12]}: train both on the same prepared data"
            )
    fit = fit_splits_of(ret, rk)
    names = f"retriever {retriever_ckpt}" + (f" and ranker {ranker_ckpt}" if ranker_ckpt else "")
    data = EvalData(fs, data_dir, fit, fitted_by=names)
    choosers = choosers_of(ret, rk)
    rc = two_tower_config(ret.config.get("task_config"))
    result = evaluate_topk(ret.model, data, ranker, ranker_fs, rc.candidates, rc.rerank_blend, rc.temperature, choosers)
    result["retriever"] = str(retriever_ckpt)
    result["ranker"] = str(ranker_ckpt) if ranker_ckpt else None
    result["data"] = str(data.split_dir)
    result["fit_splits"] = list(fit)
    result["selected_by"] = choosers.checkpoints
    return result
