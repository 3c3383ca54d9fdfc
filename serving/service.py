"""The doorstep BentoML service: ``bentoml serve serving.service:Doorstep`` or ``doorstep serve``.

Thin by design: validate (``serving/schemas.py``), compute features with ``features/`` and
predict with the bundles (``serving/eta.py``, ``serving/demand.py``), answer. It never imports
``training/``. Models are loaded once per worker process from the MLflow registry (or a Bento's
packed copy); nothing else is kept, so any number of replicas can run side by side.

Speed notes (measured in ``benchmarks/bench_serving.py``): async endpoints (a plain ``def``
runs in a one-thread pool), no adaptive batching (a route is already a batch; BentoML's batcher
answered 503s under load), LightGBM on one thread per request with one worker per core, the
request timer cancelled when a response starts, and ``gc.freeze()`` after the models load so
the collector never walks the trees' objects again.

Start-up: BentoML's arbiter imports this module only to read the service's definition, so the
model code (LightGBM, scikit-learn, the feature and demand code, the planner's page) is
imported by the workers, in ``__init__`` and the page's start-up, not here.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import bentoml
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.asgi import ApiKeyMiddleware, model_info_app, patch_timeout_timer
from serving.config import load_serving_config
from serving.schemas import (
    DemandRequest,
    DemandResponse,
    EtaBatchRequest,
    EtaBatchResponse,
    EtaRequest,
    EtaResponse,
    MatrixRequest,
    MatrixResponse,
)

if TYPE_CHECKING:
    from serving.demand import DemandEngine
    from serving.eta import EtaEngine

log = logging.getLogger("doorstep.serving")
# read at import for the decorator's worker count only; each instance re-reads its config
CONFIG = load_serving_config()
patch_timeout_timer()

_STATE: dict[str, Any] = {}  # this process's service instance, for the mounted info route


def _model_info() -> dict[str, Any]:
    svc = _STATE.get("service")
    if svc is None:
        return {"ready": False, "models": {}, "errors": {"service": "starting"}}
    return svc.info()


def _body(content: bytes) -> Response:
    """A prepared JSON body: the route's declared response model documents it (OpenAPI)."""
    return Response(content, media_type="application/json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class DeferredApp(Starlette):  # type: ignore[misc]
    """A mounted Starlette app built when it first runs: at a worker's start-up (BentoML
    enters a mounted Starlette app's lifespan there), never in the arbiter."""

    def __init__(self, build: Callable[[], Starlette]) -> None:
        self._build = build
        self._app: Starlette | None = None
        super().__init__(lifespan=self._lifespan)

    def inner(self) -> Starlette:
        if self._app is None:
            self._app = self._build()
        return self._app

    @property
    def routes(self) -> list[BaseRoute]:
        """The built app's routes: BentoML's mount matches a Starlette app's paths on them."""
        return list(self.inner().routes)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        app = self.inner()
        async with app.router.lifespan_context(app):
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        app: ASGIApp = self.inner()
        await app(scope, receive, send)


def _accelerate(bundle: Any, config: Any) -> Any:
    """Compiled trees for the ETA bundle. A local model copy records its boosters' cache keys
    beside it, so later workers skip serialising every booster to find its binary."""
    from doorstep.fast_trees import accelerate, read_known_keys, save_known_keys
    from serving.loader import bundle_file, local_model_dir

    model_dir = local_model_dir(config, "eta")
    if model_dir is None:
        return accelerate(bundle, compile_missing=config.compile_trees)
    st = bundle_file(model_dir, "eta").stat()
    fingerprint = f"{st.st_size}-{st.st_mtime_ns}"
    keys_file = model_dir / "tree-keys.json"
    known = read_known_keys(keys_file, fingerprint)
    report = accelerate(bundle, compile_missing=config.compile_trees, known_keys=known)
    if report.keys and report.keys != known:
        save_known_keys(keys_file, fingerprint, report.keys)
    return report


def _read_store(store: Any) -> None:
    from serving.demand import StoreUnavailable

    try:
        store.snapshot()
    except StoreUnavailable as exc:
        log.warning("%s (the /v1/demand endpoint answers 503 until it is readable)", exc)


def _ui() -> Starlette:
    from serving.ui import ui_app

    return ui_app(lambda: _STATE.get("service"))


@bentoml.service(
    name="doorstep",
    workers=CONFIG.workers or "cpu_count",
    traffic={"timeout": 30},
    metrics={"enabled": True},
)
@bentoml.asgi_app(model_info_app(_model_info), path="/v1")
@bentoml.asgi_app(DeferredApp(_ui), path="/ui")
class Doorstep:
    """Per-stop ETAs with calibrated windows, travel-time matrices, and zone demand."""

    @bentoml.on_deployment
    def pin_models() -> None:  # type: ignore[misc]
        """Once per server, before any worker starts: registry aliases -> exact versions."""
        from serving.launch import pin_models_for_workers

        try:
            resolved = pin_models_for_workers()
        except Exception as exc:  # the workers report it as not ready, with the reason
            log.warning("could not resolve the registry aliases: %s", exc)
            return
        for kind, what in resolved.versions.items():
            log.info("serving %s: %s", kind, what)
        for kind, why in resolved.missing.items():
            log.warning("%s not served: %s", kind, why)

    def __init__(self) -> None:
        from doorstep.fast_trees import AccelerationReport
        from serving.demand import DemandEngine, DemandStore
        from serving.eta import EtaEngine
        from serving.loader import load_models

        self.config = load_serving_config()
        models = load_models(self.config)
        self.errors = dict(models.errors)
        self.eta_engine: EtaEngine | None = None
        self.trees = AccelerationReport()
        self.demand_engine: DemandEngine | None = None
        if models.eta is not None and models.eta_info is not None:
            models.eta.num_threads = 1  # one worker per core: threads would only contend
            if models.eta.leg is not None:
                models.eta.leg.num_threads = 1
            self.trees = _accelerate(models.eta, self.config)
            if not self.trees.complete:
                log.warning(
                    "serving %d booster(s) with LightGBM (no compiled copy for this CPU: run "
                    "`doorstep models compile eta`): %s",
                    len(self.trees.missing),
                    ", ".join(self.trees.missing),
                )
            self.eta_engine = EtaEngine(models.eta, models.eta_info)
        if models.demand is not None and models.demand_info is not None:
            models.demand.num_threads = 1
            tz = self.eta_engine.tz if self.eta_engine is not None else "Asia/Shanghai"
            store = DemandStore(str(self.config.demand_store))
            self.demand_engine = DemandEngine(models.demand, models.demand_info, store, tz)
            # read the store now, not on a planner's first request, but beside the start-up:
            # the ETA endpoints need no demand history (the read is cached and locked)
            threading.Thread(target=_read_store, args=(store,), daemon=True).start()
        _STATE["service"] = self
        # the models are loaded for good: keep the collector off their millions of objects
        gc.collect()
        gc.freeze()
        log.info("doorstep service ready in process %d: %s", os.getpid(), self.info()["ready"])

    def __is_ready__(self) -> bool:
        return self.eta_engine is not None and (
            self.demand_engine is not None or not self.config.require_demand
        )

    def info(self) -> dict[str, Any]:
        models = {}
        if self.eta_engine is not None:
            models["eta"] = self.eta_engine.info.as_dict()
            models["eta"]["compiled_boosters"] = self.trees.compiled
            models["eta"]["lightgbm_boosters"] = self.trees.missing
        if self.demand_engine is not None:
            models["demand"] = self.demand_engine.info.as_dict()
            models["demand"]["store"] = str(self.demand_engine.store.path)
        return {"ready": self.__is_ready__(), "models": models, "errors": self.errors}

    def _log_route(self, req: EtaRequest) -> None:
        if self.config.log_identifiers:
            log.info("eta courier=%s route=%s", req.courier.courier_id, req.courier.route_id)

    @bentoml.api(route="/v1/eta")
    async def eta(self, request: EtaRequest, /) -> EtaResponse:
        """One route: the courier's state and the stops left, ordered (a plan) or unordered.
        Returns per-stop P10/P50/P90 minutes, the arrival time and the delivery window."""
        if self.eta_engine is None:
            return _error(503, f"ETA model not loaded: {self.errors.get('eta')}")  # type: ignore[return-value]
        self._log_route(request)
        return _body(self.eta_engine.predict_json([request]))  # type: ignore[return-value]

    @bentoml.api(route="/v1/eta/batch")
    async def eta_batch(self, request: EtaBatchRequest, /) -> EtaBatchResponse:
        """Many routes in one call (each with its own mode); answers in the same order."""
        if self.eta_engine is None:
            return _error(503, f"ETA model not loaded: {self.errors.get('eta')}")  # type: ignore[return-value]
        total = sum(len(r.stops) for r in request.routes)
        if total > self.config.max_batch_stops:
            return _error(  # type: ignore[return-value]
                413, f"routes: {total} stops in one batch, at most {self.config.max_batch_stops}"
            )
        return _body(self.eta_engine.predict_json(request.routes, batch=True))  # type: ignore[return-value]

    @bentoml.api(route="/v1/eta/matrix")
    async def eta_matrix(self, request: MatrixRequest, /) -> MatrixResponse:
        """Travel minutes from every origin to every destination, leaving at a time: the
        leg model's matrix for routing solvers (0 on the diagonal of identical points)."""
        if self.eta_engine is None:
            return _error(503, f"ETA model not loaded: {self.errors.get('eta')}")  # type: ignore[return-value]
        from serving.eta import ModelUnavailable

        try:
            return self.eta_engine.matrix(request)
        except ModelUnavailable as exc:
            return _error(503, str(exc))  # type: ignore[return-value]

    @bentoml.api(route="/v1/demand")
    async def demand(self, request: DemandRequest, /) -> DemandResponse:
        """Zone volume for the rest of a date (hourly, re-planned from what was observed so far)
        and the next days (daily), P10/P50/P90, with the city totals."""
        if self.demand_engine is None:
            return _error(503, f"demand model not loaded: {self.errors.get('demand')}")  # type: ignore[return-value]
        from serving.demand import StoreUnavailable

        try:
            return self.demand_engine.forecast(request)
        except StoreUnavailable as exc:
            return _error(503, str(exc))  # type: ignore[return-value]
        except ValueError as exc:  # e.g. a date the demand store has no recent history for
            return _error(422, f"date: {exc}")  # type: ignore[return-value]


# the key is read when each worker builds its app (None: no key, every request passes)
Doorstep.add_asgi_middleware(ApiKeyMiddleware)  # type: ignore[attr-defined]
