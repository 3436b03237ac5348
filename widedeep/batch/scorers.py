"""Row scorers: raw-row tables -> scores, from a checkpoint or a serving bundle.

Both go through the one feature transform (``FeatureSpace.transform_checked``, what ``prepare``
and serving run) and differ only in the model they call: a ranking checkpoint rebuilds the
trained ``WideAndDeep`` (on CPU or a GPU); a bundle uses its extracted ranker
(``CandidateScorer.score_table``, the code ``/v1/rank`` runs). ``widedeep predict`` builds one per
Ray Data actor; the benchmark and the tests call the same class in process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from widedeep.data.collate import Collator
from widedeep.errors import CheckpointError
from widedeep.features import FeatureSpace
from widedeep.paths import Location


def model_kind(path: str) -> str:
    """``"checkpoint"`` or ``"bundle"`` by the files at ``path`` (a directory or a URI)."""
    loc = Location.of(path, CheckpointError)
    if (loc / "checkpoint.json").is_file():
        return "checkpoint"
    if (loc / "manifest.json").is_file() and (loc / "ranker.json").is_file():
        return "bundle"
    raise CheckpointError(
        f"{path}: neither a checkpoint (checkpoint.json) nor a serving bundle (manifest.json + ranker.json)"
    )


class CheckpointScorer:
    """A ranking checkpoint's ``WideAndDeep`` in eval mode on ``device``; batches collated by the
    training ``Collator``."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        from widedeep.model.checkpoint import load_checkpoint

        ck = load_checkpoint(path)
        if ck.task != "ranking":
            raise CheckpointError(f"{path}: a {ck.task} checkpoint; predict scores rows with a ranking model")
        self.fs: FeatureSpace = ck.feature_space
        self.device = torch.device(device)
        self.model = ck.model.to(self.device).eval()
        self.collate = Collator(self.fs, require_label=False)

    @torch.no_grad()
    def scores(self, prepared: pa.Table) -> np.ndarray:
        """Scores (probabilities for binary tasks) of prepared rows, float32 ``[n]``."""
        if prepared.num_rows == 0:
            return np.zeros(0, np.float32)
        batch = self.collate(prepared).to(self.device, non_blocking=True)
        return self.model.predict(self.model(batch)).float().cpu().numpy()


class BundleScorer:
    """A serving bundle's ranker; the bundle's files are checked against its manifest first."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        from widedeep.paths import is_uri
        from widedeep.serve.bundle import verify_bundle
        from widedeep.serve.bundle_uri import fetch_bundle
        from widedeep.serve.scoring import CandidateScorer, load_ranker

        if device != "cpu":
            raise CheckpointError(f"{path}: a bundle's ranker scores on CPU; pass the ranking checkpoint to use a GPU")
        root = fetch_bundle(path) if is_uri(path) else Path(path)
        verify_bundle(root)
        self.fs = FeatureSpace.load(root / "feature_space.json")
        spec, tensors = load_ranker(root)
        if spec.feature_space_hash != self.fs.content_hash:
            raise CheckpointError(f"{path}: ranker.json expects FeatureSpace {spec.feature_space_hash}")
        self.ranker = CandidateScorer(spec, tensors)

    def scores(self, prepared: pa.Table) -> np.ndarray:
        if prepared.num_rows == 0:
            return np.zeros(0, np.float32)
        return self.ranker.predict(self.ranker.score_table(prepared))


def load_scorer(path: str, device: str = "cpu") -> Any:
    """The scorer of a checkpoint or bundle directory / URI (``CheckpointScorer`` / ``BundleScorer``)."""
    return CheckpointScorer(path, device) if model_kind(path) == "checkpoint" else BundleScorer(path, device)
