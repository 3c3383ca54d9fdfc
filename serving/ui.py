"""The planner's and dispatcher's page: ``/ui/`` on the same BentoML service.

The page (``serving/ui/``: HTML, plain JavaScript, CSS) draws zones and stops on SVG with a
projection computed from the data itself, so it works offline: no map tiles, no CDN. The JSON
endpoints here only gather what the page needs; every number comes from the service's loaded
engines (``DemandEngine.forecast`` here, ``POST /v1/eta`` from the page), never from a second
copy of the prediction code.

* ``GET /ui/api/zones?date=&hour=``: zone polygons (H3 boundaries), the date's daily forecast
  band per zone, the volume observed before ``hour``, totals per depot and for the city.
* ``GET /ui/api/zone?id=&date=&hour=``: one zone's hourly bands (planned at midnight, and
  re-planned at ``hour`` from the morning's volume) with the actual volume so far.
* ``GET /ui/api/routes?date=`` and ``GET /ui/api/route?id=``: routes from the deliveries table
  and, for one route, the ``/v1/eta`` request at dispatch beside its actual arrivals.
* ``GET /ui/api/models``: ``/v1/model-info`` with metric tables (model against baselines).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import h3
import pandas as pd
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from features import schema as s
from serving.demand import DemandEngine, StoreUnavailable
from serving.example_requests import route_request
from serving.schemas import MAX_STOPS, DemandRequest, DemandResponse, ZoneDemand
from serving.ui_data import (
    DeliveriesSnapshot,
    DeliveriesTable,
    DeliveriesUnavailable,
    metric_tables,
    run_started,
)

log = logging.getLogger("doorstep.serving")

UI_DIR = Path(__file__).resolve().parent / "ui"
RECENT_DATES = 14  # route dates offered by the page, newest first
CACHE_VIEWS = 8  # (date, hour) forecasts kept per process


class UiError(Exception):
    """A request the page cannot be answered; ``status`` and a message for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class DemandView:
    """The forecasts behind one (date, hour) of the page: planned at midnight, re-planned at
    ``hour`` (the same response when ``hour`` is 0)."""

    date: dt.date
    hour: int
    live: bool  # the date is today; else a replay of the demand store's last day
    plan: DemandResponse
    now: DemandResponse


def polygon(zone_id: str) -> list[list[float]] | None:
    """``[[lng, lat], ...]`` of an H3 cell; None for a zone id that is not one."""
    if not h3.is_valid_cell(zone_id):
        return None
    return [[round(lng, 6), round(lat, 6)] for lat, lng in h3.cell_to_boundary(zone_id)]


def default_view(last: pd.Timestamp | None, tz: str, now: dt.datetime) -> tuple[dt.date, int, bool]:
    """Today at the current local hour when the demand store reaches yesterday; otherwise a
    replay of the store's last day at the same hour (a demo city's data ends in the past)."""
    local = now.astimezone(ZoneInfo(tz))
    if last is None or last.date() >= local.date() - dt.timedelta(days=1):
        return local.date(), local.hour, True
    return last.date(), local.hour, False


def _date_param(request: Request, name: str = "date") -> dt.date | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as exc:
        raise UiError(400, f"{name}: {raw!r} is not a date (YYYY-MM-DD)") from exc


def _hour_param(request: Request) -> int | None:
    raw = request.query_params.get("hour")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or not 0 <= int(raw) <= 23:
        raise UiError(400, f"hour: {raw!r} is not an hour 0-23")
    return int(raw)


def _band(b: Any) -> dict[str, float]:
    return {"p10": b.p10, "p50": b.p50, "p90": b.p90}


def _iso(value: Any) -> str | None:
    return None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()


class UiApi:
    """The page's endpoints over the running service instance (``get_service`` returns it,
    or None while it starts)."""

    def __init__(self, get_service: Callable[[], Any]) -> None:
        self.get_service = get_service
        self._views: dict[tuple[Any, ...], DemandView] = {}
        self._lock = threading.Lock()
        self._deliveries: DeliveriesTable | None = None

    # --- plumbing ---------------------------------------------------------------------------

    def service(self) -> Any:
        svc = self.get_service()
        if svc is None:
            raise UiError(503, "the service is starting; try again in a few seconds")
        return svc

    def deliveries(self) -> DeliveriesSnapshot:
        path = self.service().config.deliveries
        if self._deliveries is None or str(self._deliveries.path) != str(path):
            self._deliveries = DeliveriesTable(path)
        try:
            return self._deliveries.snapshot()
        except DeliveriesUnavailable as exc:
            raise UiError(404, str(exc)) from exc

    def demand_engine(self) -> DemandEngine:
        svc = self.service()
        if svc.demand_engine is None:
            reason = svc.errors.get("demand", "no demand model configured")
            raise UiError(503, f"No demand model is loaded, so there is no forecast: {reason}")
        engine: DemandEngine = svc.demand_engine
        return engine

    def view(self, date: dt.date | None, hour: int | None) -> DemandView:
        """The forecasts for (date, hour), computed once per demand-store version."""
        engine = self.demand_engine()
        try:
            snap = engine.store.snapshot()
        except StoreUnavailable as exc:
            raise UiError(503, str(exc)) from exc
        d0, h0, live = default_view(snap.last_ts, engine.tz, dt.datetime.now(dt.UTC))
        date = date or d0
        hour = h0 if hour is None else hour
        live = live and date == d0
        key = (date, hour, snap.stamp, engine.info.version)
        with self._lock:  # one forecast at a time: concurrent first visits share the result
            cached = self._views.get(key)
            if cached is not None:
                return cached
            try:
                plan = engine.forecast(DemandRequest(date=date, zones=None, cutoff_hour=0, days=1))
                now = (
                    plan
                    if hour == 0
                    else engine.forecast(
                        DemandRequest(date=date, zones=None, cutoff_hour=hour, days=1)
                    )
                )
            except ValueError as exc:
                raise UiError(422, f"date {date}: {exc}") from exc
            if len(self._views) >= CACHE_VIEWS:
                self._views.pop(next(iter(self._views)))
            view = DemandView(date, hour, live, plan, now)
            self._views[key] = view
            return view

    def warm(self) -> None:
        """Compute the default view, so the first visit does not wait for the forecast."""
        try:
            self.view(None, None)
        except UiError as exc:
            log.info("planner's page: nothing to warm (%s)", exc.message)

    # --- demand ---------------------------------------------------------------------------

    def zones(self, date: dt.date | None, hour: int | None) -> dict[str, Any]:
        depots = self._zone_depots()
        try:
            view = self.view(date, hour)
        except UiError as exc:
            if exc.status != 503:
                raise
            return self._zones_without_forecast(exc.message, depots)
        plan = {z.zone_id: z for z in view.plan.zones}
        zones, unmapped = [], []
        for z in view.now.zones:
            shape = polygon(z.zone_id)
            if shape is None:
                unmapped.append(z.zone_id)
                continue
            zones.append(self._zone_row(z, plan[z.zone_id], shape, depots.get(z.zone_id)))
        by_depot: dict[str, dict[str, Any]] = {}
        for row in zones:
            if row["depot_id"] is None:
                continue
            agg = by_depot.setdefault(
                row["depot_id"],
                {"depot_id": row["depot_id"], "zones": 0, "p50": 0.0, "observed": 0.0},
            )
            agg["zones"] += 1
            agg["p50"] += row["p50"]
            agg["observed"] += row["observed"]
        city = view.plan.total_daily[0]
        engine = self.demand_engine()
        return {
            "forecast": True,
            "message": None,
            "date": view.date.isoformat(),
            "hour": view.hour,
            "live": view.live,
            "tz": engine.tz,
            "history_until": _iso(view.now.history_until),
            "model": view.plan.model.model_dump(),
            "zones": zones,
            "unmapped": unmapped,
            "depots": sorted(by_depot.values(), key=lambda r: r["depot_id"]),
            "city": {**_band(city), "observed": sum(r["observed"] for r in zones)},
        }

    @staticmethod
    def _zone_row(
        now: ZoneDemand, plan: ZoneDemand, shape: list[list[float]], depot: str | None
    ) -> dict[str, Any]:
        day = plan.daily[0]
        return {
            "zone_id": now.zone_id,
            "polygon": shape,
            "depot_id": depot,
            "known": now.known,
            **_band(day),
            "observed": now.observed_today,
            "rest_p50": round(sum(b.p50 for b in now.hourly), 3),
        }

    def _zones_without_forecast(self, message: str, depots: dict[str, str]) -> dict[str, Any]:
        """Still draw the zones the data knows (the demand store's, else the deliveries')."""
        ids: list[str] = []
        svc = self.service()
        engine = svc.demand_engine
        with contextlib.suppress(StoreUnavailable, UiError):
            ids = sorted(engine.store.snapshot().zones) if engine is not None else []
        ids = ids or sorted(depots)
        shapes = [(z, polygon(z)) for z in ids]
        tz = svc.eta_engine.tz if svc.eta_engine is not None else s.DEFAULT_TZ
        return {
            "forecast": False,
            "message": message,
            "tz": tz,
            "zones": [
                {"zone_id": z, "polygon": p, "depot_id": depots.get(z)}
                for z, p in shapes
                if p is not None
            ],
            "unmapped": [z for z, p in shapes if p is None],
            "depots": [],
            "city": None,
        }

    def _zone_depots(self) -> dict[str, str]:
        try:
            return self.deliveries().zone_depot
        except UiError:
            return {}

    def zone(self, zone_id: str, date: dt.date | None, hour: int | None) -> dict[str, Any]:
        view = self.view(date, hour)
        plan = next((z for z in view.plan.zones if z.zone_id == zone_id), None)
        now = next((z for z in view.now.zones if z.zone_id == zone_id), None)
        if plan is None or now is None:
            raise UiError(404, f"zone {zone_id!r} is not in the demand store")
        snap = self.demand_engine().store.snapshot()
        day = pd.Timestamp(view.date)
        rows = snap.hourly[
            (snap.hourly[s.ZONE_ID] == zone_id)
            & (snap.hourly[s.TS] >= day)
            & (snap.hourly[s.TS] < day + pd.Timedelta(hours=view.hour))
        ]
        return {
            "zone_id": zone_id,
            "date": view.date.isoformat(),
            "hour": view.hour,
            "known": plan.known,
            "day": _band(plan.daily[0]),
            "plan": [{"hour": b.ts.hour, **_band(b)} for b in plan.hourly],
            "replan": [{"hour": b.ts.hour, **_band(b)} for b in now.hourly]
            if view.hour > 0
            else [],
            "actual": [
                {"hour": int(t.hour), "volume": float(v)}
                for t, v in zip(rows[s.TS], rows[s.VOLUME], strict=True)
            ],
        }

    # --- routes -----------------------------------------------------------------------------

    def routes(self, date: dt.date | None) -> dict[str, Any]:
        snap = self.deliveries()
        dates = snap.dates[:RECENT_DATES]
        date = date or (dates[0] if dates else None)
        day = snap.frame[snap.frame[s.ROUTE_DATE] == date]
        first = day.sort_values(s.PLANNED_SEQ).groupby(s.ROUTE_ID, sort=False).first()
        sizes = {str(k): int(v) for k, v in day.groupby(s.ROUTE_ID).size().items()}
        routes = [
            {
                "route_id": str(rid),
                "courier_id": str(row[s.COURIER_ID]),
                "vehicle_type": None if pd.isna(row[s.VEHICLE_TYPE]) else str(row[s.VEHICLE_TYPE]),
                "depot_id": None if pd.isna(row[s.DEPOT_ID]) else str(row[s.DEPOT_ID]),
                "stops": sizes[str(rid)],
                "dispatch_time": _iso(row[s.DISPATCH_TIME]),
            }
            for rid, row in first.sort_values(s.DISPATCH_TIME).iterrows()
        ]
        return {
            "date": None if date is None else date.isoformat(),
            "dates": [d.isoformat() for d in dates],
            "routes": routes,
        }

    def route(self, route_id: str) -> dict[str, Any]:
        snap = self.deliveries()
        rows = snap.frame[snap.frame[s.ROUTE_ID] == route_id]
        if rows.empty:
            raise UiError(404, f"route {route_id!r} is not in the deliveries table")
        rows = rows.sort_values(s.PLANNED_SEQ).head(MAX_STOPS)
        first = rows.iloc[0]
        return {
            "route_id": route_id,
            "courier_id": str(first[s.COURIER_ID]),
            "depot_id": None if pd.isna(first[s.DEPOT_ID]) else str(first[s.DEPOT_ID]),
            "request": route_request(rows),
            "stops": [
                {
                    "stop_id": str(r[s.STOP_ID]),
                    "planned_seq": int(r[s.PLANNED_SEQ]),
                    "planned_arrival": _iso(r[s.PLANNED_ARRIVAL]),
                    "arrival_time": _iso(r[s.ARRIVAL_TIME]),
                    "window_start": _iso(r[s.WINDOW_START]),
                    "window_end": _iso(r[s.WINDOW_END]),
                }
                for _, r in rows.iterrows()
            ],
        }

    # --- models -----------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        info = self.service().info()
        for model in info["models"].values():
            model.update(metric_tables(model.get("metrics", {})))
            from_registry = str(model.get("source", "")).startswith(("models:/", "runs:/"))
            run_id = model.get("run_id")
            # a Bento's packed model has no registry to ask (and must not create one)
            model["trained_at"] = run_started(run_id) if from_registry and run_id else None
        return info


def ui_app(get_service: Callable[[], Any]) -> Starlette:
    """The page and its endpoints, to mount at ``/ui``. On start-up the default demand view
    is computed in the background, so the first visit finds it ready."""
    api = UiApi(get_service)

    async def zones(request: Request) -> JSONResponse:
        return await _call(lambda: api.zones(_date_param(request), _hour_param(request)))

    async def zone(request: Request) -> JSONResponse:
        zid = request.query_params.get("id", "")
        return await _call(lambda: api.zone(zid, _date_param(request), _hour_param(request)))

    async def routes(request: Request) -> JSONResponse:
        return await _call(lambda: api.routes(_date_param(request)))

    async def route(request: Request) -> JSONResponse:
        return await _call(lambda: api.route(request.query_params.get("id", "")))

    async def models(_: Request) -> JSONResponse:
        return await _call(api.models)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().run_in_executor(None, api.warm)
        yield
        task.cancel()

    app = Starlette(
        routes=[
            Route("/api/zones", zones),
            Route("/api/zone", zone),
            Route("/api/routes", routes),
            Route("/api/route", route),
            Route("/api/models", models),
            Mount("/", StaticFiles(directory=UI_DIR, html=True), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.api = api
    return app


async def _call(fn: Callable[[], dict[str, Any]]) -> JSONResponse:
    try:
        return JSONResponse(await run_in_threadpool(fn))
    except UiError as exc:
        return JSONResponse({"error": exc.message}, status_code=exc.status)
