"""Pydantic models of the HTTP API and of the application's builder arguments.

Strictness is deliberate: a string where a number belongs, a float where an id belongs, NaN or
infinity, an unknown top-level key: each is a 4xx naming the field, never a silent coercion.
Limits that depend on the deployment (maximum k, maximum items) are checked by the Ingress
against ``AppArgs``, with the same kind of message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Scalar = StrictStr | StrictInt | FiniteFloat | StrictBool
Value = Scalar | list[Scalar] | None
ItemId = StrictStr | StrictInt
Fields = Annotated[dict[str, Value], Field(max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Strict):
    """``POST /v1/recommend``: candidates are retrieved for the user and ranked."""

    user: Fields = Field(
        default_factory=dict,
        description=(
            "the user key (the spec's user_key column) and/or raw user features; "
            "request fields override the bundle's user table"
        ),
    )
    context: Fields = Field(default_factory=dict, description="raw context features (device, time, ...)")
    k: StrictInt | None = Field(
        default=None, ge=1, description="number of items to return (default: the app's default_k)"
    )
    exclude: list[ItemId] = Field(default_factory=list, max_length=10_000, description="item ids never to return")


class RankRequest(_Strict):
    """``POST /v1/rank``: score the given items for the user, in the given order."""

    user: Fields = Field(default_factory=dict)
    context: Fields = Field(default_factory=dict)
    items: list[ItemId] = Field(min_length=1, description="item ids to score (at most the app's max_rank_items)")


class ScoredItem(BaseModel):
    item_id: StrictStr | StrictInt
    score: float = Field(description="the ranker's score of the item (a probability for binary tasks)")


class RecommendResponse(BaseModel):
    """``items`` in recommendation order: the retrieved candidates re-ranked by ``ranker term
    + rerank_blend * retrieval logit`` (the term: ``log sigmoid(ranker)`` or the ranker's logit), the
    order ``widedeep evaluate --task topk`` measures (``rerank_blend`` and ``ranker_term`` in the
    bundle manifest's ``ordering``). With a blend the shown ranker scores need not decrease down
    the list."""

    items: list[ScoredItem]
    model_version: str


class RankResponse(BaseModel):
    items: list[ScoredItem]
    model_version: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: ``error`` starts with the field path (``body.k: ...``)."""

    error: str
    field: str | None = None
    detail: list[dict] | None = None


class AppArgs(_Strict):
    """Arguments of ``widedeep.serve.app:build_app`` (the ``args:`` of ``platform/serve.yaml``).

    ``bundle`` is delivered to the replicas as ``user_config``: changing it (``serve deploy`` of
    the edited config) swaps the model in place through ``reconfigure``, without a restart.
    """

    bundle: str = Field(
        description="serving bundle (widedeep export): a directory readable on every node, or a "
        "URI (s3://, gs://, file://, ...) that each node copies to a local cache and verifies"
    )
    candidates: int = Field(500, ge=1, le=100_000, description="N: candidates retrieved and ranked per request")
    default_k: int = Field(10, ge=1)
    max_k: int = Field(100, ge=1)
    max_rank_items: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    pipeline: Literal["fused", "chain"] = Field(
        "fused",
        description="fused: the Ingress replica retrieves and ranks in process (no extra actor hop; "
        "the fastest on a small machine); chain: Ingress -> Retriever -> Ranker deployments "
        "(retrieval and ranking scale on their own, e.g. rankers on GPU nodes)",
    )
    max_batch_size: int = Field(16, ge=1, description="@serve.batch size of ranking")
    batch_wait_timeout_s: float = Field(
        0.0, ge=0.0, le=1.0, description="how long a batch waits to fill (0: take what is queued)"
    )
    torch_threads: int = Field(
        1, ge=1, description="intra-op threads per replica (replicas, not threads, are the unit of scale)"
    )
    verify_bundle: bool = Field(True, description="check the bundle's file hashes on load")
    drift_window: int = Field(
        2048,
        ge=8,
        le=1_000_000,
        description="requests in each replica's sliding window of "
        "feature drift against the bundle's training profile (GET /v1/model, drift gauges)",
    )

    @model_validator(mode="after")
    def _k_range(self) -> AppArgs:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        if self.max_k > self.candidates:
            raise ValueError(f"max_k ({self.max_k}) must be <= candidates ({self.candidates})")
        return self
