"""Build a ``QueryBatch`` from live queries: a courier's state and the stops still to visit.

The service (and the MLflow pyfunc wrapper) call this; the batch then goes through the same
``EtaFeaturizer.transform`` as training rows. Plain Python and numpy only: a 50-stop route must
featurise in well under a millisecond or two, so no DataFrame is built per request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np

from features import schema as s
from features.eta_queries import QueryBatch
from features.geo import haversine_km

if TYPE_CHECKING:  # only the historical requests (examples, parity tests) need pandas
    import pandas as pd

_EPOCH_DAY = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class CourierState:
    """Where and when the courier is, and what the route has done so far (optional)."""

    time: dt.datetime  # tz-aware
    lat: float
    lng: float
    courier_id: str | None = None
    vehicle_type: str | None = None
    route_started_at: dt.datetime | None = None  # dispatch time
    stops_done: int | None = None
    km_done: float | None = None
    last_aoi_id: str | None = None
    done_aoi_ids: tuple[str, ...] | None = None  # areas of the stops done so far, in order
    depot_lat: float | None = None
    depot_lng: float | None = None
    route_id: str | None = None


@dataclass(frozen=True)
class StopInput:
    stop_id: str
    lat: float
    lng: float
    zone_id: str | None = None
    aoi_id: str | None = None
    stop_type: str | None = None
    packages: int = 1
    ready_time: dt.datetime | None = None
    planned_arrival: dt.datetime | None = None
    booked_window_start: dt.datetime | None = None  # the customer's booked delivery slot
    booked_window_end: dt.datetime | None = None


@dataclass(frozen=True)
class RouteQuery:
    state: CourierState
    stops: Sequence[StopInput]  # in planned order when ``ordered``


class ZoneResolver:
    """Zone ids for stops that do not bring one: H3 cells at the model's resolution."""

    def __init__(self, resolution: int = s.DEFAULT_H3_RESOLUTION) -> None:
        from features.zones import cell_of  # H3 (and pandas): loaded where requests are served

        self.resolution = resolution
        self._cell_of = cell_of

    def __call__(self, lat: float, lng: float) -> str:
        return self._cell_of(lat, lng, self.resolution)


def _nan(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _epoch(x: dt.datetime | None) -> float:
    return float("nan") if x is None else x.timestamp()


def _aoi_done(
    routes: Sequence[RouteQuery], stops: list[StopInput], t_query: np.ndarray
) -> np.ndarray:
    """Stops of each target's area already done on its route; NaN when the request cannot tell."""
    counts: list[dict[str, int] | None] = []
    for r in routes:
        done = r.state.done_aoi_ids
        if done is None:
            counts.append({} if r.state.stops_done == 0 else None)
            continue
        tally: dict[str, int] = {}
        for a in done:
            tally[a] = tally.get(a, 0) + 1
        counts.append(tally)
    out = np.full(len(stops), np.nan)
    for j, (st, q) in enumerate(zip(stops, t_query, strict=True)):
        tally = counts[q]
        if tally is not None and st.aoi_id:
            out[j] = tally.get(st.aoi_id, 0)
    return out


def build_batch(routes: Sequence[RouteQuery], tz: str, zones: ZoneResolver) -> QueryBatch:
    """One query per route; targets in the given order (``t_seq`` = position in the list)."""
    zone_info = ZoneInfo(tz)
    nq = len(routes)
    q_time = np.empty(nq)
    q_day = np.empty(nq, dtype=np.int64)
    q_clock = np.empty(nq)
    q_wd = np.empty(nq, dtype=np.int64)
    q_elapsed = np.full(nq, np.nan)
    sizes = np.array([len(r.stops) for r in routes], dtype=np.int64)
    for i, r in enumerate(routes):
        local = r.state.time.astimezone(zone_info)
        q_time[i] = r.state.time.timestamp()
        q_day[i] = (local.date() - _EPOCH_DAY).days
        q_clock[i] = local.hour * 60 + local.minute + local.second / 60
        q_wd[i] = local.weekday()
        if r.state.route_started_at is not None:
            q_elapsed[i] = (q_time[i] - r.state.route_started_at.timestamp()) / 60.0
    stops = [st for r in routes for st in r.stops]
    t_query = np.repeat(np.arange(nq, dtype=np.int64), sizes)
    t_seq = np.arange(len(stops), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    t_lat = np.array([st.lat for st in stops], dtype=np.float64)
    t_lng = np.array([st.lng for st in stops], dtype=np.float64)
    ready = np.array(
        [np.nan if st.ready_time is None else st.ready_time.timestamp() for st in stops]
    )
    planned, w_start, w_end = (
        np.array([_epoch(getattr(st, name)) for st in stops], dtype=np.float64)
        for name in ("planned_arrival", "booked_window_start", "booked_window_end")
    )
    qt = q_time[t_query]
    return QueryBatch(
        q_route=np.array([r.state.route_id or "" for r in routes], dtype=object),
        q_courier=np.array([r.state.courier_id or "" for r in routes], dtype=object),
        q_vehicle=np.array([(r.state.vehicle_type or "").lower() for r in routes], dtype=object),
        q_time=q_time,
        q_day=q_day,
        q_route_day=q_day.copy(),
        q_clock_min=q_clock,
        q_weekday=q_wd,
        q_lat=np.array([r.state.lat for r in routes], dtype=np.float64),
        q_lng=np.array([r.state.lng for r in routes], dtype=np.float64),
        q_depot_lat=np.array([_nan(r.state.depot_lat) for r in routes]),
        q_depot_lng=np.array([_nan(r.state.depot_lng) for r in routes]),
        q_elapsed_min=q_elapsed,
        q_n_done=np.array([_nan(r.state.stops_done) for r in routes]),
        q_km_done=np.array([_nan(r.state.km_done) for r in routes]),
        q_last_aoi=np.array([r.state.last_aoi_id or "" for r in routes], dtype=object),
        t_query=t_query,
        t_stop_id=np.array([st.stop_id for st in stops], dtype=object),
        t_lat=t_lat,
        t_lng=t_lng,
        t_zone=np.array([st.zone_id or zones(st.lat, st.lng) for st in stops], dtype=object),
        t_aoi=np.array([st.aoi_id or "" for st in stops], dtype=object),
        t_stop_type=np.array(
            [st.stop_type or s.StopType.UNKNOWN.value for st in stops], dtype=object
        ),
        t_packages=np.array([float(st.packages) for st in stops]),
        t_ready_min=np.where(np.isfinite(ready), (qt - ready) / 60.0, np.nan),
        t_seq=t_seq,
        t_aoi_done=_aoi_done(routes, stops, t_query),
        t_label_min=np.full(len(stops), np.nan),
        t_planned_min=(planned - qt) / 60.0,
        t_window_start_min=(w_start - qt) / 60.0,
        t_window_end_min=(w_end - qt) / 60.0,
    )


def requests_from_deliveries(
    deliveries: pd.DataFrame, *, ordered_by_plan: bool = False
) -> list[RouteQuery]:
    """Every historical query moment of every route as a live request (examples, parity tests).

    Built independently of ``queries_from_deliveries`` (a plain loop over routes) so a parity
    test can show both paths give the same features. Labels are not part of a request.
    """
    import pandas as pd

    out: list[RouteQuery] = []
    d = deliveries.sort_values([s.ROUTE_ID, s.ARRIVAL_TIME, s.STOP_ID], kind="stable")
    for route_id, r in d.groupby(s.ROUTE_ID, sort=False):
        if len(r) < 3:
            continue
        rows = list(r.itertuples(index=False))
        first = rows[0]
        depot = (getattr(first, s.DEPOT_LAT), getattr(first, s.DEPOT_LNG))
        dispatch = getattr(first, s.DISPATCH_TIME).to_pydatetime()
        km = 0.0
        for k in range(-1, len(rows)):
            if k < 0:
                t, lat, lng, last_aoi = dispatch, depot[0], depot[1], None
            else:
                row = rows[k]
                prev = (
                    depot if k == 0 else (getattr(rows[k - 1], s.LAT), getattr(rows[k - 1], s.LNG))
                )
                if pd.notna(prev[0]) and pd.notna(prev[1]):
                    km += float(
                        haversine_km(prev[0], prev[1], getattr(row, s.LAT), getattr(row, s.LNG))
                    )
                t = getattr(row, s.ARRIVAL_TIME).to_pydatetime()
                lat, lng = getattr(row, s.LAT), getattr(row, s.LNG)
                last_aoi = _opt(getattr(row, s.AOI_ID))
            done = [_opt(getattr(x, s.AOI_ID)) or "" for x in rows[: k + 1]]
            targets = [
                x
                for x in rows[k + 1 :]
                if getattr(x, s.READY_TIME).to_pydatetime()
                <= t
                < getattr(x, s.ARRIVAL_TIME).to_pydatetime()
                and (getattr(x, s.ARRIVAL_TIME).to_pydatetime() - t).total_seconds() <= 240 * 60
            ]
            if not targets:
                continue
            if ordered_by_plan:
                targets.sort(key=lambda x: getattr(x, s.PLANNED_SEQ))
            state = CourierState(
                time=t,
                lat=float(lat),
                lng=float(lng),
                courier_id=str(getattr(first, s.COURIER_ID)),
                vehicle_type=_opt(getattr(first, s.VEHICLE_TYPE)),
                route_started_at=dispatch,
                stops_done=k + 1,
                km_done=km,
                last_aoi_id=last_aoi,
                done_aoi_ids=tuple(done),
                depot_lat=None if pd.isna(depot[0]) else float(depot[0]),
                depot_lng=None if pd.isna(depot[1]) else float(depot[1]),
                route_id=str(route_id),
            )
            stops = [
                StopInput(
                    stop_id=str(getattr(x, s.STOP_ID)),
                    lat=float(getattr(x, s.LAT)),
                    lng=float(getattr(x, s.LNG)),
                    zone_id=_opt(getattr(x, s.ZONE_ID)),
                    aoi_id=_opt(getattr(x, s.AOI_ID)),
                    stop_type=_opt(getattr(x, s.STOP_TYPE)),
                    packages=int(getattr(x, s.PACKAGES)),
                    ready_time=getattr(x, s.READY_TIME).to_pydatetime(),
                    planned_arrival=_opt_time(getattr(x, s.PLANNED_ARRIVAL)),
                    booked_window_start=_opt_time(getattr(x, s.WINDOW_START, None)),
                    booked_window_end=_opt_time(getattr(x, s.WINDOW_END, None)),
                )
                for x in targets
            ]
            out.append(RouteQuery(state, stops))
    return out


def _opt_time(value: Any) -> dt.datetime | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else value.to_pydatetime()


def _opt(value: Any) -> str | None:
    import pandas as pd

    return None if value is None or pd.isna(value) or str(value) == "" else str(value)
