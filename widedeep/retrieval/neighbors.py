"""The item-to-item candidate source: each item's top neighbours by co-occurrence, queried with the
items a user liked.

Why a second source: the two-tower model places a user by one vector, which blurs a varied taste;
an item-to-item neighbourhood keeps the exact "people who liked X also liked Y" signal that makes
item-kNN strong on rating logs (Sarwar et al. 2001; Linden et al. 2003, Amazon). Merged with the
two-tower candidates (``widedeep.retrieval.candidates``), the ranker sees both kinds.

Two weightings (``NeighborSettings.kind``):

- ``cosine``: the cosine between the item columns of the binary training user x item matrix,
  shrunk towards 0 for pairs few users share: ``co(i, j) / (sqrt(|i| |j|) + shrink)`` (Koren
  2008's shrinkage). The same weights are the item-kNN baseline of the top-K evaluation.
- ``ease``: the closed-form weights of EASE (Steck 2019): ``P = (X^T X + lambda I)^-1``,
  ``B = I - P / diag(P)``, a regression of each item on all others, which discounts neighbours
  that only echo each other. Dense items x items, so refused above ``EASE_MAX_ITEMS``
  (``EaseRefused``); the EASE baseline uses the unpruned weights (``ease_weights``).

Each target item keeps its ``neighbors`` best history weights (sparse; cosine: the largest, EASE:
the largest in absolute value, since its negative weights matter as much), and a user's
score for item j is the sum of j's weights over the user's items. Computed with torch products in
item chunks (never a dense users x items matrix).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from widedeep.retrieval.interactions import CSR

log = logging.getLogger(__name__)

#: the largest catalog EASE fits (its Gram matrix and inverse are dense items x items: 20,000
#: items = 1.6 GB per float32 matrix, and the fit holds about three)
EASE_MAX_ITEMS = 20_000


class EaseRefused(ValueError):
    """The catalog is too large for EASE's dense items x items fit (``EASE_MAX_ITEMS``)."""


@dataclass(frozen=True)
class NeighborSettings:
    """How the neighbourhood is built.

    Args:
        neighbors: history items kept per target item (0 keeps all).
        shrink: the shrinkage term of the cosine (0 = the plain cosine).
        kind: ``cosine`` or ``ease`` (see the module doc).
        lam: EASE's L2 weight ``lambda`` (``kind: ease``).
    """

    neighbors: int = 100
    shrink: float = 0.0
    kind: Literal["cosine", "ease"] = "cosine"
    lam: float = 0.0

    def __post_init__(self) -> None:
        if self.neighbors < 0:
            raise ValueError(f"item neighbours: neighbors must be >= 0 (0 = all), got {self.neighbors}")
        if self.shrink < 0:
            raise ValueError(f"item-kNN: shrink must be >= 0, got {self.shrink}")
        if self.kind not in ("cosine", "ease"):
            raise ValueError(f"item neighbours: kind must be 'cosine' or 'ease', got {self.kind!r}")
        if self.kind == "ease" and not self.lam > 0:
            raise ValueError(f"item neighbours: EASE needs lam > 0, got {self.lam}")


class ItemNeighbors:
    """Sparse item-item weights ``sim_t[j, i]`` = similarity of history item ``i`` to target item ``j``.

    Build with ``ItemNeighbors.fit`` (from interactions) or ``ItemNeighbors.from_arrays`` (a bundle).
    """

    def __init__(self, sim_t: torch.Tensor, settings: NeighborSettings) -> None:
        self.sim_t = sim_t.coalesce()
        self.n_items = int(sim_t.shape[0])
        self.settings = settings

    @staticmethod
    def fit(
        train: CSR, settings: NeighborSettings, chunk: int = 1024, weights: torch.Tensor | None = None
    ) -> ItemNeighbors:
        """Neighbours from users x items positive interactions ``train`` (``weights``: EASE's
        ``B`` when the caller has it already)."""
        with warnings.catch_warnings():  # torch labels its sparse kernels "beta"; they are exact
            warnings.simplefilter("ignore", UserWarning)
            if settings.kind == "ease":
                b = weights if weights is not None else ease_weights(train, settings.lam)
                return ItemNeighbors(_prune(lambda lo, hi: b[:, lo:hi].float(), b.shape[0], settings, chunk), settings)
            return ItemNeighbors(_fit(train, settings, chunk), settings)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(target rows, history rows, weights)``: what a serving bundle stores."""
        idx = self.sim_t.indices().numpy()
        return idx[0].copy(), idx[1].copy(), self.sim_t.values().numpy().astype(np.float32)

    @staticmethod
    def from_arrays(
        targets: np.ndarray, sources: np.ndarray, weights: np.ndarray, n_items: int, settings: NeighborSettings
    ) -> ItemNeighbors:
        idx = torch.from_numpy(np.stack([np.asarray(targets, np.int64), np.asarray(sources, np.int64)]))
        w = torch.from_numpy(np.array(weights, np.float32))  # a copy: Arrow buffers are read-only
        return ItemNeighbors(torch.sparse_coo_tensor(idx, w, (n_items, n_items)), settings)

    def score(self, history: CSR, lo: int, hi: int) -> torch.Tensor:
        """Scores ``[hi - lo, n_items]`` of rows ``lo..hi-1`` of ``history``: sum over the row's items
        ``i`` of ``sim[i, j]``."""
        h = history.take_rows(np.arange(lo, hi))
        hd = torch.zeros((self.n_items, hi - lo), dtype=torch.float32)
        hd[torch.from_numpy(h.indices), torch.from_numpy(h.row_ids())] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse.mm(self.sim_t, hd).T.contiguous()  # (S^T H^T)^T = H S


def _fit(train: CSR, settings: NeighborSettings, chunk: int) -> torch.Tensor:
    """Shrunk-cosine weights of every target item, pruned (``_prune``)."""
    n_items = train.n_cols
    u_of = torch.from_numpy(train.row_ids())
    i_of = torch.from_numpy(train.indices)
    xt = torch.sparse_coo_tensor(torch.stack([i_of, u_of]), torch.ones(train.nnz), (n_items, train.n_rows)).coalesce()
    norm = torch.from_numpy(np.sqrt(np.bincount(train.indices, minlength=n_items)).astype(np.float32))

    def block(lo: int, hi: int) -> torch.Tensor:
        # co-occurrence of every item with items lo..hi-1: X^T X[:, lo:hi]
        m = (i_of >= lo) & (i_of < hi)
        cols_block = torch.sparse_coo_tensor(  # X[:, lo:hi], sparse [U, hi-lo]
            torch.stack([u_of[m], i_of[m] - lo]), torch.ones(int(m.sum())), (train.n_rows, hi - lo)
        ).coalesce()
        co = torch.sparse.mm(xt, cols_block).to_dense()  # [I, hi-lo]
        den = norm[:, None] * norm[None, lo:hi] + settings.shrink
        return torch.where(den > 0, co / den.clamp_min(1e-12), torch.zeros_like(co))

    return _prune(block, n_items, settings, chunk)


def _prune(
    block: Callable[[int, int], torch.Tensor], n_items: int, settings: NeighborSettings, chunk: int
) -> torch.Tensor:
    """Sparse ``[target, history]`` weights: each target column ``j`` of ``block(lo, hi)`` (history x
    targets lo..hi-1) keeps its ``neighbors`` largest positive weights (EASE: largest in absolute
    value, signs kept), never itself."""
    t0 = time.monotonic()
    keep = n_items - 1 if settings.neighbors <= 0 else min(settings.neighbors, max(n_items - 1, 1))
    rows, cols, vals = [], [], []
    for lo in range(0, n_items, chunk):
        hi = min(n_items, lo + chunk)
        sim = block(lo, hi).clone()
        sim[torch.arange(lo, hi), torch.arange(hi - lo)] = 0.0  # an item is not its own neighbour
        if settings.kind == "ease":  # EASE's negative weights carry as much as its positive ones
            i = torch.topk(sim.abs(), keep, dim=0).indices
            v = torch.gather(sim, 0, i)
            nz = v != 0
        else:
            v, i = torch.topk(sim, keep, dim=0)  # best neighbours of each target item
            nz = v > 0
        tgt = torch.arange(lo, hi).unsqueeze(0).expand_as(i)
        rows.append(i[nz])
        cols.append(tgt[nz])
        vals.append(v[nz])
    r = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
    c = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
    v = torch.cat(vals) if vals else torch.zeros(0)
    log.info(
        "item neighbours (%s): %d items, %d weights kept (%d each) in %.1fs",
        settings.kind,
        n_items,
        int(v.numel()),
        keep,
        time.monotonic() - t0,
    )
    return torch.sparse_coo_tensor(torch.stack([c, r]), v, (n_items, n_items))


def check_ease_size(n_items: int) -> None:
    """Raise ``EaseRefused`` above ``EASE_MAX_ITEMS``."""
    if n_items > EASE_MAX_ITEMS:
        raise EaseRefused(
            f"EASE: the catalog has {n_items} items, above EASE_MAX_ITEMS={EASE_MAX_ITEMS} "
            "(its dense items x items fit would not fit in memory)"
        )


def gram(train: CSR) -> torch.Tensor:
    """Dense ``X^T X`` of the binary interaction matrix (float64; float32 above 4,096 items to halve
    the memory), from a sparse product: no dense users x items matrix."""
    n = train.n_cols
    dtype = torch.float64 if n <= 4096 else torch.float32
    u = torch.from_numpy(train.row_ids())
    i = torch.from_numpy(train.indices)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        x = torch.sparse_coo_tensor(torch.stack([u, i]), torch.ones(train.nnz, dtype=dtype), (train.n_rows, n))
        return torch.sparse.mm(x.t().coalesce(), x.coalesce()).to_dense()


def weights_from_inverse(p: torch.Tensor) -> torch.Tensor:
    """EASE's ``B = I - P diag(1 / diag(P))``: ``B[i, j] = -P[i, j] / P[j, j]``, zero diagonal."""
    b = -p / torch.diagonal(p)[None, :]
    b.fill_diagonal_(0.0)
    return b


def ease_weights(train: CSR, lam: float) -> torch.Tensor:
    """Dense EASE weights ``B`` (``B[i, j]``: weight of history item i for target item j)."""
    check_ease_size(train.n_cols)
    g = gram(train)
    g.diagonal().add_(float(lam))
    return weights_from_inverse(torch.linalg.inv(g))
