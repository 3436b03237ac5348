"""``widedeep.serve.app:build_app``: the Serve application builder (the ``import_path`` of
``platform/serve.yaml``, also used by ``widedeep serve`` and the tests).

::

    pipeline: fused (default)          pipeline: chain
    HTTP -> Ingress                    HTTP -> Ingress -> Retriever -> Ranker (@serve.batch)
            (prepare, retrieve,
             @serve.batch rank)

The bundle path reaches the replicas as ``user_config: {bundle: ...}``. Deploying a config
whose only change is a deployment's ``user_config: {bundle: NEW}`` keeps the app's code version,
so Serve calls ``reconfigure`` on the running replicas: the model swaps in place without a
restart or a failed request, and a bundle that fails to load is reported (``GET /v1/model``'s
``last_load_error``) while the current model keeps serving. Changing ``args`` (``args.bundle``
included) or deploying with ``serve.run`` changes the code version instead: Serve replaces the
replicas (a rolling update), and new replicas whose bundle fails to load fail to start.
Nothing runs at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from widedeep.serve.deployments import Ranker, Retriever
from widedeep.serve.ingress import Ingress
from widedeep.serve.schemas import AppArgs


def build_app(args: AppArgs) -> Application:
    """The recommender application for ``args`` (Serve validates a config's ``args`` dict into ``AppArgs``)."""
    return build_app_with(args)


def build_app_with(
    args: AppArgs | Mapping[str, Any], options: Mapping[str, Mapping[str, Any]] | None = None
) -> Application:
    """``build_app`` plus per-deployment option overrides (``{"Ranker": {"autoscaling_config": ...}}``),
    for code that deploys without a config file (tests, ``widedeep serve``)."""
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(dict(args))
    opts = {k: dict(v) for k, v in (options or {}).items()}
    unknown = set(opts) - {"Ingress", "Retriever", "Ranker"}
    if unknown:
        raise ValueError(
            f"options: unknown deployment(s) {sorted(unknown)}; deployments are Ingress, Retriever, Ranker"
        )
    user_config = {"bundle": a.bundle}
    init = a.model_dump(exclude={"bundle"})  # the bundle travels as user_config only: a swap is not a redeploy
    if a.pipeline == "fused":
        return Ingress.options(user_config=user_config, **opts.get("Ingress", {})).bind(init)
    retriever = Retriever.options(user_config=user_config, **opts.get("Retriever", {})).bind(
        a.verify_bundle, a.torch_threads
    )
    ranker = Ranker.options(user_config=user_config, **opts.get("Ranker", {})).bind(
        a.max_batch_size, a.batch_wait_timeout_s, a.verify_bundle, a.torch_threads
    )
    return Ingress.options(**opts.get("Ingress", {})).bind(init, retriever, ranker)
