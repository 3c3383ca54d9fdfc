"""Clock times of a day's routes: the planner's naive times and what really happens.

Times are minutes after local midnight of the route's day. Travel on a leg is
``overhead + access + road_km / speed x pace x congestion(zone, hour) x rain x noise + delay``
(road_km = haversine x detour); consecutive stops in one building cost a short walk instead.
Service depends on stop type, parcels and stairs. Customers with a time window are sometimes
waited for. Only the congestion and waiting depend on the clock, so the loop over positions
does a few vector operations per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from citysim.city import FloatArray, IntArray
from citysim.config import CityConfig
from citysim.routes import gather
from features.geo import haversine_km

BoolArray = npt.NDArray[np.bool_]

# Congestion by local hour on working days and off-days (multiplies a zone's own level).
HOUR_CONGESTION = np.array(
    [
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.1, 1.35, 1.5, 1.25, 1.0, 1.05,
         1.15, 1.05, 1.0, 1.0, 1.1, 1.45, 1.4, 1.15, 1.05, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.05, 1.1, 1.15, 1.15,
         1.15, 1.1, 1.1, 1.1, 1.15, 1.2, 1.15, 1.1, 1.05, 1.0, 1.0, 1.0],
    ]
)  # fmt: skip


@dataclass(frozen=True)
class Stops:
    """Per-stop inputs (flat arrays)."""

    lat: FloatArray
    lng: FloatArray
    zone: IntArray
    building: IntArray
    wave: IntArray
    service: FloatArray  # minutes at the door
    access: FloatArray  # minutes to get in (gates, security): persistent per building


@dataclass(frozen=True)
class Routes:
    """Per-route inputs."""

    dispatch: FloatArray
    van: FloatArray  # the second wave's van reaches the hub
    depot_lat: FloatArray
    depot_lng: FloatArray
    hub_lat: FloatArray
    hub_lng: FloatArray
    speed_kmh: FloatArray
    overhead: FloatArray
    sensitivity: FloatArray
    pace: FloatArray  # time multiplier of the courier on this day
    service_pace: FloatArray
    rain: FloatArray  # travel-time multiplier of the day's weather for this vehicle
    offday: bool


def service_minutes(
    cfg: CityConfig,
    stop_type: IntArray,
    packages: IntArray,
    floor: IntArray,
    walkup: BoolArray,
    service_pace: FloatArray,
    rain: bool,
    rng: np.random.Generator,
) -> FloatArray:
    """Minutes at the door: type base + parcels (sub-linear) + stairs, lognormal noise."""
    nominal = service_nominal(cfg, stop_type, packages, floor, walkup)
    return service_draw(cfg, nominal, service_pace, rain, rng)


def service_nominal(
    cfg: CityConfig, stop_type: IntArray, packages: IntArray, floor: IntArray, walkup: BoolArray
) -> FloatArray:
    """The noiseless part of the time at the door, before the courier's service pace."""
    sc = cfg.service
    base = sc.base_min.array()[stop_type]
    parcels = sc.per_parcel_min.array()[stop_type] * (packages - 1) ** 0.85
    stairs = np.where(walkup, sc.per_floor_min, sc.elevator_per_floor_min) * floor
    return base + parcels + stairs


def service_draw(
    cfg: CityConfig,
    nominal: FloatArray,
    service_pace: FloatArray,
    rain: bool,
    rng: np.random.Generator,
) -> FloatArray:
    """One draw of the minutes at the door around ``nominal``: the noise and the rare long stop."""
    sc = cfg.service
    noise = rng.lognormal(-0.5 * sc.noise_sd**2, sc.noise_sd, len(nominal))
    out = nominal * noise * service_pace
    out *= cfg.weather.service_factor if rain else 1.0
    long = rng.random(len(out)) < sc.long_share  # customer not home, a signature, a chat
    out[long] += rng.uniform(*sc.long_min, int(long.sum()))
    return out


def _legs(lat: FloatArray, lng: FloatArray, start: tuple[FloatArray, FloatArray],
          hub: tuple[FloatArray, FloatArray], n_first: IntArray) -> FloatArray:  # fmt: skip
    """Straight-line km of each leg in a padded order (from the depot, or the hub for the
    first second-wave stop)."""
    prev_lat = np.concatenate([start[0][:, None], lat[:, :-1]], axis=1)
    prev_lng = np.concatenate([start[1][:, None], lng[:, :-1]], axis=1)
    at_hub = np.arange(lat.shape[1])[None, :] == n_first[:, None]
    prev_lat = np.where(at_hub, hub[0][:, None], prev_lat)
    prev_lng = np.where(at_hub, hub[1][:, None], prev_lng)
    return haversine_km(prev_lat, prev_lng, lat, lng)


def planned_times(
    cfg: CityConfig, plan: IntArray, stops: Stops, routes: Routes
) -> tuple[FloatArray, FloatArray]:
    """The naive engine: free-flow nominal speed, constant service, the van on schedule.

    Returns planned arrival per padded position (NaN at pads) and the planned hand-over time.
    """
    rc = cfg.routes
    valid = plan >= 0
    wave = gather(stops.wave, plan, 0)
    n_first = (valid & (wave == 0)).sum(axis=1)
    lat, lng = gather(stops.lat, plan, np.nan), gather(stops.lng, plan, np.nan)
    legs = _legs(
        lat, lng, (routes.depot_lat, routes.depot_lng), (routes.hub_lat, routes.hub_lng), n_first
    )
    legs = legs * rc.detour / routes.speed_kmh[:, None] * 60.0
    out = np.full(plan.shape, np.nan)
    t = routes.dispatch.copy()
    handover = np.full(len(t), np.nan)
    svc = rc.planner_service_min
    for k in range(plan.shape[1]):
        relay = (k == n_first) & valid[:, k]
        if relay.any():
            prev_lat = lat[:, k - 1] if k > 0 else routes.depot_lat
            prev_lng = lng[:, k - 1] if k > 0 else routes.depot_lng
            to_hub = haversine_km(prev_lat, prev_lng, routes.hub_lat, routes.hub_lng)
            reach = t + to_hub * rc.detour / routes.speed_kmh * 60.0
            ho = np.maximum(reach, rc.van_hour * 60.0)
            handover = np.where(relay, ho, handover)
            t = np.where(relay, ho + rc.handover_min, t)
        arrive = t + legs[:, k]
        out[:, k] = np.where(valid[:, k], arrive, np.nan)
        t = np.where(valid[:, k], arrive + svc, t)
    return out, handover


@dataclass(frozen=True)
class LegDraws:
    """The random part of each leg (arrays of one shape): road detour and travel-time factors,
    the minutes of a rare delay (0 on most legs), and the walk within a building (minutes at
    service pace 1)."""

    detour: FloatArray
    noise: FloatArray
    delay: FloatArray
    intra: FloatArray


def leg_draws(cfg: CityConfig, shape: tuple[int, ...], rng: np.random.Generator) -> LegDraws:
    """The legs' noise, in the order ``actual_times`` has always drawn it (so a day's times
    stay the same); ``citysim.replay`` draws fresh legs with it."""
    rc = cfg.routes
    detour = rng.lognormal(0.0, rc.detour_sd, shape)
    noise = rng.lognormal(-0.5 * rc.leg_noise_sd**2, rc.leg_noise_sd, shape)
    delay = (rng.random(shape) < rc.delay_prob) * rng.exponential(rc.delay_mean_min, shape)
    intra = rng.uniform(*rc.intra_building_min, shape)
    return LegDraws(detour, noise, delay, intra)


@dataclass(frozen=True)
class Actual:
    arrival: FloatArray  # padded, in driven order
    departure: FloatArray
    handover: FloatArray  # per route: second-wave parcels in hand (NaN without a second wave)


def actual_times(
    cfg: CityConfig,
    driven: IntArray,
    stops: Stops,
    routes: Routes,
    zone_congestion: FloatArray,
    window: tuple[FloatArray, FloatArray],
    waits: BoolArray,
    rng: np.random.Generator,
) -> Actual:
    """Drive the routes in ``driven`` order; ``window``/``waits`` are per flat stop."""
    rc = cfg.routes
    n_routes, width = driven.shape
    valid = driven >= 0
    wave = gather(stops.wave, driven, 0)
    n_first = (valid & (wave == 0)).sum(axis=1)
    lat, lng = gather(stops.lat, driven, np.nan), gather(stops.lng, driven, np.nan)
    hub = (routes.hub_lat, routes.hub_lng)
    km = _legs(lat, lng, (routes.depot_lat, routes.depot_lng), hub, n_first)
    draws = leg_draws(cfg, km.shape, rng)
    road = km * rc.detour * draws.detour
    noise = draws.noise
    moving = road / routes.speed_kmh[:, None] * 60.0 * (routes.pace * routes.rain)[:, None] * noise
    delay = draws.delay
    fixed = routes.overhead[:, None] + gather(stops.access, driven, 0.0) + delay
    b = gather(stops.building, driven, -1)
    same = np.zeros_like(valid)
    same[:, 1:] = (b[:, 1:] == b[:, :-1]) & (b[:, 1:] >= 0)
    same &= np.arange(width)[None, :] != n_first[:, None]
    intra = draws.intra * routes.service_pace[:, None]
    zone_c = gather(zone_congestion, gather(stops.zone, driven, 0), 1.0)
    prof = HOUR_CONGESTION[1 if routes.offday else 0]
    ws = gather(window[0], driven, np.nan)
    wait = gather(waits, driven, False)
    service = gather(stops.service, driven, 0.0)

    arrival = np.full(driven.shape, np.nan)
    departure = np.full(driven.shape, np.nan)
    handover = np.full(n_routes, np.nan)
    t = routes.dispatch.copy()
    for k in range(width):
        act = valid[:, k]
        relay = act & (k == n_first)
        if relay.any():
            prev_lat = lat[:, k - 1] if k > 0 else routes.depot_lat
            prev_lng = lng[:, k - 1] if k > 0 else routes.depot_lng
            to_hub = haversine_km(prev_lat, prev_lng, hub[0], hub[1]) * rc.detour
            mult = 1.0 + routes.sensitivity * (zone_c[:, k] * prof[_hour(t)] - 1.0)
            reach = (
                t
                + routes.overhead
                + to_hub / routes.speed_kmh * 60.0 * routes.pace * routes.rain * mult
            )
            ho = np.maximum(reach, routes.van)
            handover = np.where(relay, ho, handover)
            t = np.where(relay, ho + rc.handover_min, t)
        mult = 1.0 + routes.sensitivity * (zone_c[:, k] * prof[_hour(t)] - 1.0)
        reach = t + np.where(same[:, k], intra[:, k], fixed[:, k] + moving[:, k] * mult)
        gap = ws[:, k] - reach
        arrive = np.where(
            wait[:, k] & (gap > 0) & (gap <= cfg.windows.max_wait_min), ws[:, k], reach
        )
        leave = arrive + service[:, k]
        arrival[:, k] = np.where(act, arrive, np.nan)
        departure[:, k] = np.where(act, leave, np.nan)
        t = np.where(act, leave, t)
    return Actual(arrival, departure, handover)


def _hour(t: FloatArray) -> IntArray:
    return np.clip((t // 60.0).astype(np.int64), 0, 23)


def windows(
    cfg: CityConfig, planned: FloatArray, eligible: BoolArray, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray, BoolArray]:
    """Booked slots near the planned time for a share of stops; whether the courier waits."""
    wc = cfg.windows
    n = len(planned)
    has = eligible & (rng.random(n) < wc.share)
    slot = wc.slot_hours * 60.0
    first = wc.first_slot_hour * 60.0
    n_slots = max(1, (wc.last_slot_hour - wc.first_slot_hour) // wc.slot_hours)
    wish = planned + rng.normal(0.0, wc.plan_sd_min, n)
    idx = np.clip(np.floor((wish - first) / slot), 0, n_slots - 1)
    start = np.where(has, first + idx * slot, np.nan)
    return start, start + slot, has & (rng.random(n) < wc.wait_prob)
