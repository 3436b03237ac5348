"""The HTTP Ingress: FastAPI routes, request validation, and the recommend/rank flow.

Where the time goes (measured on the 2-core dev box, see ``widedeep bench serve``): a Serve
request costs ~5 ms of proxy -> replica overhead (the no-op floor) and every further
``DeploymentHandle`` hop ~4-6 ms more (actor call, router, serialisation, event-loop handoffs),
while retrieval + ranking of 500 candidates costs ~1-3 ms. So with ``pipeline: fused`` (the
default) the Ingress replica retrieves and ranks in process, batching concurrent requests'
scoring with ``@serve.batch`` exactly as the Ranker deployment does; ``pipeline: chain`` sends
each request Ingress -> Retriever -> Ranker for deployments where retrieval and ranking must
scale separately (GPU rankers). Both run the same ``RecommendPipeline`` code.

Errors: pydantic errors -> 422 with ``error: "body.<field>: <msg>"``; malformed JSON -> 400;
a body over ``max_body_bytes`` -> 413; a request the bundle cannot serve (unknown feature
field, unknown item, k above the maximum) -> 422 naming the field; overload -> 503.
"""

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.exceptions import BackPressureError

from widedeep.errors import ServingError
from widedeep.serve.deployments import ModelSlot, ranked, set_threads
from widedeep.serve.drift import ReplicaDrift
from widedeep.serve.pipeline import RequestError
from widedeep.serve.schemas import (
    AppArgs,
    ErrorResponse,
    RankRequest,
    RankResponse,
    RecommendRequest,
    RecommendResponse,
)
from widedeep.serve.telemetry import ServingMetrics

log = logging.getLogger(__name__)

INGRESS_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 32,
    "max_queued_requests": 128,
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 12,
        "upscale_delay_s": 10,
        "downscale_delay_s": 60,
    },
    "ray_actor_options": {"num_cpus": 1},
}
HEALTH_TIMEOUT_S = 5.0  # chain /healthz: how long the Retriever and Ranker get to answer
_ERRORS = {
    400: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    503: {"model": ErrorResponse},
}


def _common_prefix(locs: list[tuple]) -> tuple:
    out = []
    for parts in zip(*locs, strict=False):  # the common prefix of paths of any lengths
        if any(p != parts[0] for p in parts):
            break
        out.append(parts[0])
    return tuple(out)


def _loc(loc: Any) -> str:
    return ".".join(str(x) for x in loc)


class BodyLimit:
    """ASGI middleware: a body larger than ``BodyLimit.max_bytes`` gets 413 before parsing.

    A class attribute, set by the Ingress constructor: the FastAPI object reaches the replica as
    a pickled copy, so state put on ``api`` would not be seen by the app actually serving.
    """

    max_bytes = 1 << 20

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = BodyLimit.max_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, int(declared), limit)
        seen = 0
        too_big = False

        async def limited() -> dict:
            nonlocal seen, too_big
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    too_big = True
                    return {"type": "http.disconnect"}
            return msg

        if declared is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            try:
                await self.app(scope, limited, send)
            except Exception:
                if too_big:
                    return await _too_large(send, seen, limit)
                raise
            return
        await self.app(scope, receive, send)


async def _too_large(send: Any, size: int, limit: int) -> None:
    body = json.dumps({"error": f"body: {size} bytes exceeds the limit of {limit} bytes", "field": "body"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


api = FastAPI(
    title="widedeep recommender",
    description="Retrieval (two-tower) + Wide & Deep ranking. Errors name the offending field.",
    version="1",
)
api.add_middleware(BodyLimit)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    if first.get("type") == "json_invalid":
        status, field = 400, "body"
        msg = f"body: malformed JSON ({first.get('ctx', {}).get('error', first.get('msg'))})"
    else:
        status = 422
        # a value matching no member of a union gives one error per member (loc ends in the
        # member's type): report the value's own path, with the most telling member message
        same = [e for e in errors if tuple(e.get("loc", ()))[:2] == tuple(first.get("loc", ()))[:2]]
        loc = _common_prefix([tuple(e.get("loc", ())) for e in same]) if len(same) > 1 else tuple(first.get("loc", ()))
        field = _loc(loc) or "body"
        best = next((e for e in same if e.get("type") == "finite_number"), first)
        msg = f"{field}: {best.get('msg')}"
    detail = [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
        for e in errors[:20]
    ]
    return JSONResponse({"error": msg, "field": field, "detail": detail}, status_code=status)


@api.exception_handler(RequestError)
async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)


@api.exception_handler(ServingError)
async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "field": None}, status_code=503)


def _remote_cause(e: BaseException) -> BaseException:
    """The exception another replica raised. A handle call re-raises it wrapped in a ``RayTaskError``
    that is also an instance of the original class, but whose ``str()`` is the remote traceback
    (process id, node IP, actor id, file paths): a client must see the original message only."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def _as_request_error(e: BaseException) -> RequestError | None:
    """A RequestError raised here or in another replica, as a plain one carrying only its message."""
    cause = _remote_cause(e)
    if not isinstance(cause, RequestError):
        return None
    return RequestError(cause.field, cause.message, cause.status)


def _as_serving_error(e: BaseException) -> ServingError | None:
    """A ServingError from another replica (its model could not be loaded), message only."""
    cause = _remote_cause(e)
    if not isinstance(cause, ServingError) or isinstance(cause, RequestError):
        return None
    return ServingError(*cause.args)


def _scored(items: list[tuple[Any, float]], version: str) -> JSONResponse:
    return JSONResponse({"items": [{"item_id": i, "score": s} for i, s in items], "model_version": version})


def _body(e: RequestError) -> RequestError:
    """Pipeline fields (``user.age``) as HTTP body paths (``body.user.age``)."""
    if e.field.startswith("body"):
        return e
    return RequestError(f"body.{e.field}", e.message, e.status)


async def _awaited(response: Any) -> Any:
    """A ``DeploymentResponse`` as a coroutine (``asyncio.wait_for`` cancels it on timeout). Defined
    above ``Ingress``: Serve serializes the class when it is decorated, with the globals it sees then."""
    return await response


@serve.deployment(name="Ingress", **INGRESS_OPTIONS)
@serve.ingress(api)
class Ingress:
    """HTTP entry point. ``retriever`` / ``ranker`` are handles in the chain, ``None`` when fused."""

    def __init__(self, args: dict[str, Any], retriever: Any = None, ranker: Any = None) -> None:
        self.args = AppArgs.model_validate({**args, "bundle": args.get("bundle", "")})
        set_threads(self.args.torch_threads)
        BodyLimit.max_bytes = self.args.max_body_bytes
        self.fused = self.args.pipeline == "fused"
        self.retriever = retriever
        self.ranker = ranker
        self.metrics = ServingMetrics("Ingress")
        self.slot = ModelSlot(self.args.verify_bundle, self.metrics)
        self.drift = ReplicaDrift(self.metrics, self.args.drift_window)
        self._batch.set_max_batch_size(self.args.max_batch_size)
        self._batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        if self.fused:
            await self.slot.load(str(user_config["bundle"]))

    def check_health(self) -> None:
        if self.fused:
            self.slot.get()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batch(self, jobs: list[Any]) -> list[Any]:
        """Concurrent requests' retrieval (one index search) and scoring (one MLP call) together."""
        out: list[Any] = [None] * len(jobs)
        groups: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(id(job[0]), []).append(i)  # a model swap can put two versions in one batch
        for idx in groups.values():
            pipe = jobs[idx[0]][0]
            results, retrieve_ms, rank_ms = pipe.serve_batch([jobs[i][1:] for i in idx], self.args.candidates)
            for i, res in zip(idx, results, strict=True):
                out[i] = (*res, retrieve_ms if jobs[i][2] is None else None, rank_ms)
        return out

    def _k(self, k: int | None) -> int:
        k = self.args.default_k if k is None else k
        if k > self.args.max_k:
            raise RequestError("body.k", f"must be <= {self.args.max_k} (this deployment's max_k), got {k}")
        return k

    async def _fused(
        self, user: dict, context: dict, k: int | None, exclude: list, items: list | None
    ) -> tuple[str, list[tuple[Any, float]]]:
        pipe = self.slot.get()
        t0 = time.perf_counter()
        try:
            q = pipe.prepare(user, context)
            rows = None if items is None else pipe.item_rows(items, "body.items")
        except RequestError as e:
            raise _body(e) from None
        self.metrics.stage("prepare", (time.perf_counter() - t0) * 1e3)
        self.metrics.feature_oov(q.oov)
        self.drift.observe(pipe, q.row)
        ex = pipe.exclude_rows(exclude) if exclude else None
        rows, logits, key, retrieve_ms, rank_ms = await self._batch((pipe, q, rows, ex))
        if retrieve_ms is not None:
            self.metrics.stage("retrieve", retrieve_ms)
            self.metrics.retrieved(len(rows))
        self.metrics.stage("rank", rank_ms)
        return pipe.version, ranked(pipe, rows, logits, k, key)

    async def _chain(
        self, user: dict, context: dict, k: int | None, exclude: list, items: list | None
    ) -> tuple[str, list[tuple[Any, float]]]:
        try:
            version, path, row, rows, retrieval = await self.retriever.retrieve.remote(
                user, context, None if items is not None else self.args.candidates, exclude
            )
            return await self.ranker.rank.remote(version, path, row, rows, k, items, retrieval)
        except BackPressureError as e:
            raise ServingError(f"overloaded: {e}") from None
        except Exception as e:
            re = _as_request_error(e)
            if re is not None:
                raise _body(re) from None
            se = _as_serving_error(e)
            if se is not None:
                raise se from None
            # a replica lost with its node, an actor error: its text names hosts, pids and actor ids
            log.warning("chain request failed downstream: %s", e, exc_info=e)
            raise ServingError(f"a Retriever or Ranker replica failed ({type(e).__name__}); retry") from None

    async def _run(
        self, user: dict, context: dict, k: int | None, exclude: list, items: list | None
    ) -> tuple[str, list[tuple[Any, float]]]:
        if self.fused:
            return await self._fused(user, context, k, exclude, items)
        return await self._chain(user, context, k, exclude, items)

    # The routes return JSONResponse directly: FastAPI would otherwise build and re-validate a
    # pydantic object per scored item (500 of them for /v1/rank); response_model still documents it.
    @api.post("/v1/recommend", response_model=RecommendResponse, responses=_ERRORS)
    async def recommend(self, req: RecommendRequest) -> JSONResponse:
        """Retrieve ``candidates`` items for the user and return the top ``k`` by the ranker's score."""
        k = self._k(req.k)
        version, items = await self._run(req.user, req.context, k, req.exclude, None)
        return _scored(items, version)

    @api.post("/v1/rank", response_model=RankResponse, responses=_ERRORS)
    async def rank(self, req: RankRequest) -> JSONResponse:
        """Score the given items for the user; scores come back in the given order."""
        if len(req.items) > self.args.max_rank_items:
            raise RequestError(
                "body.items", f"at most {self.args.max_rank_items} items per request, got {len(req.items)}"
            )
        version, items = await self._run(req.user, req.context, None, [], req.items)
        return _scored(items, version)

    @api.get("/v1/model")
    async def model(self) -> dict[str, Any]:
        """Model version, provenance, request fields and feature summary; this replica's OOV rates;
        ``last_load_error`` (``{bundle, error, at}``) when the last model swap failed and the
        previous version is still being served (``null`` otherwise); ``drift``: the request
        window's drift against the model's training data per query-side feature (the replica that
        prepares requests: this Ingress when fused, a Retriever in the chain; ``null`` for a
        bundle without a training profile)."""
        info = self.slot.info() if self.fused else await self.ranker.model_info.remote()
        info["serving"] = {
            **self.args.model_dump(exclude={"bundle"}),
            "oov_rates_this_replica": self.metrics.oov_rates(),
        }
        info["drift"] = self.drift.info(self.slot.get()) if self.fused else await self.retriever.drift_info.remote()
        return info

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 with the model version served: this replica's (fused), the Ranker's (chain, the version
        its answers carry; ``versions`` gives both deployments', which differ for a moment during a
        swap). 503 when no model is loaded, or a chain deployment does not answer within
        ``HEALTH_TIMEOUT_S`` (its replica lost with a node, say): a health check never hangs."""
        if self.fused:
            return JSONResponse({"status": "ok", "model_version": self.slot.get().version})
        try:
            ranker, retriever = await asyncio.wait_for(
                asyncio.gather(_awaited(self.ranker.version.remote()), _awaited(self.retriever.version.remote())),
                HEALTH_TIMEOUT_S,
            )
        except Exception as e:  # a timeout, a lost replica, no model loaded yet: unhealthy, said plainly
            log.warning("healthz: the Retriever or Ranker did not answer: %r", e, exc_info=e)
            reason = "timed out" if isinstance(e, asyncio.TimeoutError) else type(_remote_cause(e)).__name__
            body = {"status": "unavailable", "model_version": None, "error": f"Retriever/Ranker: {reason}"}
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {"status": "ok", "model_version": ranker, "versions": {"Retriever": retriever, "Ranker": ranker}}
        )
