"""One simulated day: orders -> stops -> routes -> clock times -> contract rows.

Orders placed before the day's cutoff are delivered that day (those from the cutoff on wait
for tomorrow); orders placed since ``wave2_from_hour`` come as a second wave that a van hands
to the courier at their hub around noon. Each day draws from its own random stream, so a day
is the same whether the city is simulated in one go or streamed to Parquet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from citysim import city as c
from citysim import fleet as f
from citysim.city import FloatArray, IntArray
from citysim.config import STOP_TYPES, VEHICLES, CityConfig
from citysim.days import Calendar, build_calendar
from citysim.demand import DemandModel, Orders, demand_model, orders_from_volume, zone_hour_volume
from citysim.frames import NAT, NS_PER_MIN, Table
from citysim.odd import inject
from citysim.routes import deviate, layout, plan_nearest
from citysim.timing import (
    Routes,
    Stops,
    actual_times,
    planned_times,
    service_draw,
    service_nominal,
    windows,
)
from features import schema as s

DAY_STREAM = 3
NS_PER_HOUR = 60 * NS_PER_MIN
MINUTES_PER_DAY = 1440.0
UNKNOWN_TYPE = -1
# Stop ids are S<yyyymmdd><courier, 5 digits><stop, 3 digits>.
MAX_COURIERS = 100_000
MAX_ROUTE_STOPS = 1000
WINDOW_TYPES = np.array(
    [STOP_TYPES.index(t) for t in (s.StopType.RESIDENTIAL, s.StopType.BUSINESS, s.StopType.SHOP)]
)
STOP_TYPE_LABELS = np.array(
    [t.value for t in STOP_TYPES] + [s.StopType.UNKNOWN.value], dtype=object
)


@dataclass(frozen=True, eq=False)
class Context:
    """What every day needs, derived once from the config and the city."""

    cfg: CityConfig
    city: c.City
    cal: Calendar
    model: DemandModel

    @staticmethod
    def create(cfg: CityConfig, city: c.City) -> Context:
        return Context(cfg, city, build_calendar(cfg), demand_model(cfg, city))


@dataclass(frozen=True)
class DayOutput:
    date: dt.date
    deliveries: Table  # contract columns; see citysim.frames
    demand: Table
    odd: dict[str, int]
    routes: int
    parcels: int


def day_rng(cfg: CityConfig, day: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, DAY_STREAM, day + 1])


def eve_orders(ctx: Context) -> Orders:
    """Orders of the day before the first day, placed after its cutoff (delivered on day 0)."""
    return carried_orders(ctx, 0)


def carried_orders(ctx: Context, day: int) -> Orders:
    """Orders placed on ``day - 1`` from its cutoff on (delivered on ``day``), from that day's
    stream: what ``run_day`` carries into ``day`` without simulating the days before."""
    rng = day_rng(ctx.cfg, day - 1)
    orders = orders_from_volume(
        ctx.model, zone_hour_volume(ctx.cfg, ctx.model, ctx.cal, day - 1, rng), rng
    )
    return orders.take(orders.minute >= ctx.cfg.routes.cutoff_hour * 60).shifted(-MINUTES_PER_DAY)


def day_orders(
    ctx: Context, day: int, carry: Orders, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], Orders, Orders]:
    """The day's zone-hour volume, the orders delivered today (``carry`` plus today's before
    the cutoff) and tomorrow's carry; the first draws of the day's stream."""
    cfg = ctx.cfg
    volume = zone_hour_volume(cfg, ctx.model, ctx.cal, day, rng)
    orders = orders_from_volume(ctx.model, volume, rng)
    late = orders.minute >= cfg.routes.cutoff_hour * 60
    today = Orders.concat([carry, orders.take(~late)])
    return volume, today, orders.take(late).shifted(-MINUTES_PER_DAY)


def run_day(ctx: Context, day: int, carry: Orders) -> tuple[DayOutput, Orders]:
    """Simulate ``day``; ``carry`` are yesterday's late orders. Returns the rows and tomorrow's."""
    cfg = ctx.cfg
    rng = day_rng(cfg, day)
    date = ctx.cal.dates[ctx.cal.index(day)]
    volume, today, tomorrow = day_orders(ctx, day, carry, rng)
    deliveries, odd, n_routes = _deliveries(ctx, day, date, today, rng)
    midnight = pd.Timestamp(date).value
    demand = {
        s.ZONE_ID: np.repeat(ctx.city.zones[s.ZONE_ID].to_numpy(dtype=object), 24),
        s.TS: np.tile(midnight + np.arange(24, dtype=np.int64) * NS_PER_HOUR, volume.shape[0]),
        s.VOLUME: volume.ravel().astype(np.float64),
    }
    out = DayOutput(date, deliveries, demand, odd, n_routes, len(today))
    return out, tomorrow


@dataclass(frozen=True)
class DoorStops:
    """A day's stops (one door, one wave, >= 1 parcel), grouped by route."""

    building: IntArray
    unit: IntArray
    wave: IntArray  # 0: leaves the depot with the courier, 1: handed over at the hub
    route: IntArray  # index into ``courier``
    packages: IntArray
    created: FloatArray  # when the stop's first order was placed (minutes)
    courier: IntArray  # courier index of each route
    late: npt.NDArray[np.bool_]  # per route: an afternoon route


def door_stops(ctx: Context, day: int, orders: Orders, rng: np.random.Generator) -> DoorStops:
    """Who delivers each order today, in which wave, and which orders share a door."""
    cfg, city = ctx.cfg, ctx.city
    n_couriers = len(city.couriers)
    holiday = ctx.cal.holiday[ctx.cal.index(day)]
    p_absent = cfg.fleet.holiday_absence_prob if holiday else cfg.fleet.absence_prob
    absent = rng.random(n_couriers) < p_absent
    late_route = rng.random(n_couriers) < cfg.routes.late_route_share
    courier = f.covering(city, absent)[orders.building]
    # An afternoon route leaves after the van's parcels are in: everything goes at dispatch.
    second = (orders.minute >= cfg.routes.wave2_from_hour * 60) & ~late_route[courier]
    wave = second.astype(np.int64)

    by_time = np.argsort(orders.minute, kind="stable")
    umax = int(ctx.model.units.max()) + 1
    key = ((orders.building * umax + orders.unit) * 2 + wave)[by_time]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    packages = np.bincount(inverse.ravel())
    first = by_time[first]  # the earliest order of each door
    route_courier = np.unique(courier[first])
    route = np.searchsorted(route_courier, courier[first])
    srt = np.lexsort((orders.unit[first], orders.building[first], wave[first], route))
    pick = first[srt]
    return DoorStops(
        orders.building[pick], orders.unit[pick], wave[pick], route[srt], packages[srt],
        orders.minute[pick], route_courier, late_route[route_courier],
    )  # fmt: skip


@dataclass(frozen=True)
class DayPlan:
    """Everything a day's clock times are drawn from: the stops, the routes and their latents
    (pace, rain, service pace), the driven order, the windows. ``service_nominal`` is the
    stops' noiseless time at the door (``stops.service`` is its realised draw)."""

    door: DoorStops
    stop_type: IntArray
    service_nominal: FloatArray
    rain: bool
    vehicle: IntArray
    stops: Stops
    routes: Routes
    planned: FloatArray
    planned_seq: IntArray
    window: tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]
    driven: IntArray
    zone_congestion: FloatArray


def plan_day(ctx: Context, day: int, orders: Orders, rng: np.random.Generator) -> DayPlan:
    """The day's inputs, drawn from ``rng`` up to (not including) the clock times' noise."""
    cfg, city = ctx.cfg, ctx.city
    i = ctx.cal.index(day)
    bld, cou = city.buildings, city.couriers
    door = door_stops(ctx, day, orders, rng)
    building, unit, wave, route = door.building, door.unit, door.wave, door.route
    packages, rc = door.packages, door.courier
    n_routes = len(rc)

    kind = bld[c.KIND].to_numpy()[building]
    stop_type = c.KIND_STOP_TYPE[kind]
    entrance = unit % city.entrances.shape[1]
    lat, lng = city.entrances[building, entrance, 0], city.entrances[building, entrance, 1]
    x, y = city.projection.to_xy(lat, lng)
    # Units are numbered by how much they order; floors must not follow that numbering.
    floor = (unit * 37 + building) % bld[c.FLOORS].to_numpy()[building]
    rain = bool(ctx.cal.rain[i])
    vehicle = cou[f.VEHICLE_INDEX].to_numpy()[rc]
    service_pace = cou[f.SERVICE_PACE].to_numpy()[rc]
    nominal = service_nominal(cfg, stop_type, packages, floor, bld[c.WALKUP].to_numpy()[building])
    service = service_draw(cfg, nominal, service_pace[route], rain, rng)
    stops = Stops(
        lat, lng, bld[c.ZONE_INDEX].to_numpy()[building], building, wave, service,
        bld[c.ACCESS_MIN].to_numpy()[building],
    )  # fmt: skip
    routes = _routes(ctx, day, rc, door.late, vehicle, service_pace, rain, rng)

    slots = layout(route, n_routes)
    depot_xy = city.projection.to_xy(routes.depot_lat, routes.depot_lng)
    hub_xy = (cou[f.HUB_X].to_numpy()[rc], cou[f.HUB_Y].to_numpy()[rc])
    plan = plan_nearest(slots, x, y, wave, depot_xy, hub_xy)
    valid = plan >= 0
    planned_pad, _ = planned_times(cfg, plan, stops, routes)
    n = len(route)
    planned_seq = np.empty(n, dtype=np.int64)
    planned_seq[plan[valid]] = np.nonzero(valid)[1]
    planned = np.empty(n)
    planned[plan[valid]] = planned_pad[valid]
    window = windows(cfg, planned, np.isin(stop_type, WINDOW_TYPES), rng)

    reorder = rng.random(n_routes) < cou[f.REORDER_PROB].to_numpy()[rc]
    reverse = ~reorder & (rng.random(n_routes) < cfg.routes.reverse_prob)
    driven = deviate(
        plan, building, wave, bld[c.X_KM].to_numpy()[building], bld[c.Y_KM].to_numpy()[building],
        cou[f.SWAP_SD].to_numpy()[rc],
        (cou[c.X_KM].to_numpy()[rc], cou[c.Y_KM].to_numpy()[rc], cou[f.SWEEP_BEARING].to_numpy()[rc]),
        reorder, reverse, rng,
    )  # fmt: skip
    zone_congestion = city.zones[c.CONGESTION].to_numpy()
    return DayPlan(
        door, stop_type, nominal, rain, vehicle, stops, routes, planned, planned_seq, window,
        driven, zone_congestion,
    )  # fmt: skip


def stop_numbers(date: dt.date, door: DoorStops) -> IntArray:
    """The numeric part of the stop ids: a route's stops numbered by order time, so they say
    nothing of the visiting order."""
    route = door.route
    n = len(route)
    by_created = np.lexsort((door.created, route))
    rank = np.empty(n, dtype=np.int64)
    rank[by_created] = np.arange(n) - np.searchsorted(route[by_created], route[by_created])
    if n and rank.max() >= MAX_ROUTE_STOPS:
        raise ValueError(f"a route has more than {MAX_ROUTE_STOPS - 1} stops: stop ids would clash")
    return (
        int(date.strftime("%Y%m%d")) * MAX_COURIERS + door.courier[route]
    ) * MAX_ROUTE_STOPS + rank


def _deliveries(
    ctx: Context, day: int, date: dt.date, orders: Orders, rng: np.random.Generator
) -> tuple[Table, dict[str, int], int]:
    cfg, cou = ctx.cfg, ctx.city.couriers
    p = plan_day(ctx, day, orders, rng)
    door, stops, routes, window, driven = p.door, p.stops, p.routes, p.window, p.driven
    wave, route, rc, vehicle = door.wave, door.route, door.courier, p.vehicle
    building, packages, stop_type = door.building, door.packages, p.stop_type
    planned, planned_seq = p.planned, p.planned_seq
    lat, lng, n = stops.lat, stops.lng, len(door.route)
    actual = actual_times(cfg, driven, stops, routes, p.zone_congestion, window[:2], window[2], rng)
    dvalid = driven >= 0
    arrival = np.empty(n)
    departure = np.empty(n)
    arrival[driven[dvalid]] = actual.arrival[dvalid]
    departure[driven[dvalid]] = actual.departure[dvalid]

    second = wave == 1
    ready = np.where(second, actual.handover[route], routes.dispatch[route])
    hub_lat, hub_lng = cou[f.HUB_LAT].to_numpy()[rc], cou[f.HUB_LNG].to_numpy()[rc]
    midnight = pd.Timestamp(date).tz_localize(cfg.tz, nonexistent="shift_forward").value

    def stamp(minutes: np.ndarray) -> np.ndarray:
        ok = np.isfinite(minutes)
        seconds = np.round(np.where(ok, minutes, 0.0) * 60.0).astype(np.int64)
        return np.where(ok, midnight + seconds * 1_000_000_000, NAT)

    unknown = rng.random(n) < cfg.service.unknown_label_share
    numeric: Table = {
        s.ROUTE_ID: route,
        s.COURIER_ID: rc[route],
        s.VEHICLE_TYPE: vehicle[route],
        s.STOP_ID: stop_numbers(date, door),
        s.LAT: lat,
        s.LNG: lng,
        s.ZONE_ID: stops.zone,
        s.DISPATCH_TIME: stamp(routes.dispatch[route]),
        s.READY_TIME: stamp(ready),
        s.READY_LAT: np.where(second, hub_lat[route], routes.depot_lat[route]),
        s.READY_LNG: np.where(second, hub_lng[route], routes.depot_lng[route]),
        s.DEPOT_ID: cou[f.DEPOT_INDEX].to_numpy()[rc][route],
        s.DEPOT_LAT: routes.depot_lat[route],
        s.DEPOT_LNG: routes.depot_lng[route],
        s.AOI_ID: building,
        s.PLANNED_SEQ: planned_seq,
        s.PLANNED_ARRIVAL: stamp(planned),
        s.ARRIVAL_TIME: stamp(arrival),
        s.DEPARTURE_TIME: stamp(departure),
        s.PACKAGES: packages,
        s.STOP_TYPE: np.where(unknown, UNKNOWN_TYPE, stop_type),
        s.WINDOW_START: stamp(window[0]),
        s.WINDOW_END: stamp(window[1]),
    }
    by_plan = np.lexsort((planned_seq, route))
    numeric = {k: v[by_plan] for k, v in numeric.items()}
    numeric, _, odd = inject(numeric, numeric[s.ROUTE_ID], cfg.odd, rng)
    return _labelled(ctx, date, numeric, rc), odd, len(rc)


def _routes(
    ctx: Context,
    day: int,
    rc: np.ndarray,
    late: np.ndarray,
    vehicle: np.ndarray,
    service_pace: np.ndarray,
    rain: bool,
    rng: np.random.Generator,
) -> Routes:
    cfg, cou, dep = ctx.cfg, ctx.city.couriers, ctx.city.depots
    fl, rcfg = cfg.fleet, cfg.routes
    depot = cou[f.DEPOT_INDEX].to_numpy()[rc]
    n, n_depots = len(rc), len(dep)
    depot_shift = rng.normal(0.0, 5.0, n_depots)[depot]
    dispatch = rcfg.dispatch_hour * 60 + depot_shift + cou[f.START_OFFSET_MIN].to_numpy()[rc]
    dispatch = dispatch + rng.normal(0.0, 4.0, n)
    dispatch = np.where(late, rcfg.late_dispatch_hour * 60 + rng.uniform(-30, 60, n), dispatch)
    van = rcfg.van_hour * 60 + rng.normal(0.0, rcfg.van_sd_min, n_depots)[depot]
    pace = expected_pace(ctx, day, rc) * rng.lognormal(0.0, fl.day_pace_sd, n)
    rain_factor = cfg.weather.travel_factor.array()[vehicle] if rain else np.ones(n)
    return Routes(
        dispatch=dispatch,
        van=van,
        depot_lat=dep[s.LAT].to_numpy()[depot],
        depot_lng=dep[s.LNG].to_numpy()[depot],
        hub_lat=cou[f.HUB_LAT].to_numpy()[rc],
        hub_lng=cou[f.HUB_LNG].to_numpy()[rc],
        speed_kmh=fl.speed_kmh.array()[vehicle],
        overhead=fl.overhead_min.array()[vehicle],
        sensitivity=fl.congestion_sensitivity.array()[vehicle],
        pace=pace,
        service_pace=service_pace,
        rain=rain_factor,
        offday=bool(ctx.cal.weekend_like[ctx.cal.index(day)]),
    )


def expected_pace(ctx: Context, day: int, rc: IntArray) -> FloatArray:
    """The couriers' pace on ``day`` before the day's own lognormal factor: their habit,
    slower while new (what anyone who knows the courier could expect)."""
    fl = ctx.cfg.fleet
    tenure = ctx.city.couriers[f.TENURE_DAYS].to_numpy()[rc] + day
    pace: FloatArray = ctx.city.couriers[f.PACE].to_numpy()[rc] * (
        1 + fl.learning_gain * np.exp(-tenure / fl.learning_days)
    )
    return pace


def _labelled(ctx: Context, date: dt.date, numeric: Table, rc: np.ndarray) -> Table:
    """Codes to the strings of the contract (ids, labels); numbers and stamps pass through."""
    city = ctx.city
    out = dict(numeric)
    out[s.ROUTE_ID] = route_names(ctx, date, rc)[numeric[s.ROUTE_ID]]
    out[s.COURIER_ID] = city.couriers[s.COURIER_ID].to_numpy(dtype=object)[numeric[s.COURIER_ID]]
    out[s.VEHICLE_TYPE] = np.array([v.value for v in VEHICLES], dtype=object)[
        numeric[s.VEHICLE_TYPE]
    ]
    out[s.STOP_ID] = stop_names(numeric[s.STOP_ID])
    out[s.ZONE_ID] = city.zones[s.ZONE_ID].to_numpy(dtype=object)[numeric[s.ZONE_ID]]
    out[s.DEPOT_ID] = city.depots[s.DEPOT_ID].to_numpy(dtype=object)[numeric[s.DEPOT_ID]]
    out[s.AOI_ID] = city.buildings[s.AOI_ID].to_numpy(dtype=object)[numeric[s.AOI_ID]]
    out[s.STOP_TYPE] = STOP_TYPE_LABELS[numeric[s.STOP_TYPE]]
    return out


def route_names(ctx: Context, date: dt.date, rc: IntArray) -> npt.NDArray[np.object_]:
    """The contract's route ids (``<courier_id>-<yyyymmdd>``) of a day's routes."""
    courier_ids = ctx.city.couriers[s.COURIER_ID].to_numpy(dtype=object)
    ymd = date.strftime("%Y%m%d")
    return np.array([f"{courier_ids[k]}-{ymd}" for k in rc], dtype=object)


def stop_names(numbers: IntArray) -> npt.NDArray[np.object_]:
    """The contract's stop ids of :func:`stop_numbers`."""
    return np.char.add("S", numbers.astype(str)).astype(object)
