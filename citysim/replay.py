"""Re-drive a simulated day with fresh noise: same routes, stops, driven order and latents.

:func:`replay_day` rebuilds a day's inputs from its own random stream exactly as ``run_day``
does, so its realised times are the simulated ones. :func:`drive_from` drives the rest of some
routes from given states (the route, the driven position of the stop just reached, the clock)
with the legs' and doors' noise taken from a :class:`Noise` source: :class:`FreshNoise` gives
replications of what could still happen, :class:`OwnNoise` the day's own draws, which give back
what did happen (``tests/test_citysim_replay.py`` pins both). Everything but the noise is known
to the replay: pace, rain, service pace, the stops' nominal service, windows and whether the
courier waits for them, the van's time at the hub.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from citysim.city import FloatArray, IntArray
from citysim.day import (
    Context,
    DayPlan,
    carried_orders,
    day_orders,
    day_rng,
    plan_day,
    route_names,
    stop_names,
    stop_numbers,
)
from citysim.routes import gather
from citysim.timing import HOUR_CONGESTION, Actual, LegDraws, actual_times, leg_draws, service_draw
from features.geo import haversine_km

ObjArray = npt.NDArray[np.object_]


@dataclass(frozen=True, eq=False)
class ReplayDay:
    """A simulated day's inputs, what happened, and the noise it was drawn with."""

    day: int
    date: dt.date
    plan: DayPlan
    actual: Actual
    legs: LegDraws  # the day's own leg noise, per route x driven position
    stop_ids: ObjArray  # contract stop id of each flat stop
    route_ids: ObjArray  # contract route id of each route
    midnight_ns: int  # local midnight of the day (the simulator's minute 0)

    @property
    def position(self) -> IntArray:
        """Driven position of each flat stop within its route."""
        driven = self.plan.driven
        valid = driven >= 0
        out = np.full(len(self.stop_ids), -1, dtype=np.int64)
        out[driven[valid]] = np.nonzero(valid)[1]
        return out


def replay_day(ctx: Context, day: int) -> ReplayDay:
    """Day ``day`` of the city rebuilt from its stream (no other day is simulated)."""
    cfg = ctx.cfg
    rng = day_rng(cfg, day)
    date = ctx.cal.dates[ctx.cal.index(day)]
    _, today, _ = day_orders(ctx, day, carried_orders(ctx, day), rng)
    plan = plan_day(ctx, day, today, rng)
    before = copy.deepcopy(rng)
    actual = actual_times(
        cfg, plan.driven, plan.stops, plan.routes, plan.zone_congestion, plan.window[:2],
        plan.window[2], rng,
    )  # fmt: skip
    midnight = pd.Timestamp(date).tz_localize(cfg.tz, nonexistent="shift_forward").value
    return ReplayDay(
        day=day,
        date=date,
        plan=plan,
        actual=actual,
        legs=leg_draws(cfg, plan.driven.shape, before),
        stop_ids=stop_names(stop_numbers(date, plan.door)),
        route_ids=route_names(ctx, date, plan.door.courier),
        midnight_ns=int(midnight),
    )


class Noise(Protocol):
    """Where the legs' and doors' noise comes from, one driven position at a time."""

    def legs(self, k: int, rows: IntArray) -> LegDraws: ...

    def service(self, k: int, rows: IntArray) -> FloatArray: ...


class OwnNoise:
    """The day's own draws: driving from a realised state gives back the realised times."""

    def __init__(self, day: ReplayDay) -> None:
        self.legs_ = day.legs
        self.service_ = gather(day.plan.stops.service, day.plan.driven, 0.0)

    def legs(self, k: int, rows: IntArray) -> LegDraws:
        g = self.legs_
        return LegDraws(g.detour[rows, k], g.noise[rows, k], g.delay[rows, k], g.intra[rows, k])

    def service(self, k: int, rows: IntArray) -> FloatArray:
        out: FloatArray = self.service_[rows, k]
        return out


class FreshNoise:
    """Independent draws from the simulator's noise model (``rng`` is the only randomness)."""

    def __init__(self, ctx: Context, day: ReplayDay, rng: np.random.Generator) -> None:
        p = day.plan
        self.cfg, self.rng, self.rain = ctx.cfg, rng, p.rain
        self.nominal = gather(p.service_nominal, p.driven, 0.0)
        self.pace = p.routes.service_pace

    def legs(self, k: int, rows: IntArray) -> LegDraws:
        return leg_draws(self.cfg, (len(rows),), self.rng)

    def service(self, k: int, rows: IntArray) -> FloatArray:
        nominal = self.nominal[rows, k]
        return service_draw(self.cfg, nominal, self.pace[rows], self.rain, self.rng)


def drive_from(
    ctx: Context,
    day: ReplayDay,
    route: IntArray,
    pos: IntArray,
    clock: FloatArray,
    noise: Noise,
    pace: FloatArray | None = None,
) -> FloatArray:
    """Arrival minutes (after local midnight) at every driven position of ``route[i]`` after
    ``pos[i]``, for a courier who reached position ``pos[i]`` at ``clock[i]`` (``pos = -1``:
    leaving the depot at ``clock``); NaN elsewhere. The stop at ``pos`` still has its service
    ahead. ``pace`` replaces the routes' travel pace per state (e.g. draws from its prior).

    The same travel model as ``citysim.timing.actual_times``, one column per driven position,
    over the states still driving."""
    cfg, p = ctx.cfg, day.plan
    rc, stops, routes, driven = cfg.routes, p.stops, p.routes, p.driven
    width = driven.shape[1]
    valid = driven >= 0
    wave = gather(stops.wave, driven, 0)
    n_first = (valid & (wave == 0)).sum(axis=1)
    lat, lng = gather(stops.lat, driven, np.nan), gather(stops.lng, driven, np.nan)
    prev_lat = np.concatenate([routes.depot_lat[:, None], lat[:, :-1]], axis=1)
    prev_lng = np.concatenate([routes.depot_lng[:, None], lng[:, :-1]], axis=1)
    hub_lat, hub_lng = routes.hub_lat, routes.hub_lng
    km = haversine_km(prev_lat, prev_lng, lat, lng)
    at_hub = np.arange(width)[None, :] == n_first[:, None]
    km = np.where(at_hub, haversine_km(hub_lat[:, None], hub_lng[:, None], lat, lng), km)
    last = np.clip(n_first - 1, 0, width - 1)
    from_lat = np.where(n_first > 0, lat[np.arange(len(n_first)), last], routes.depot_lat)
    from_lng = np.where(n_first > 0, lng[np.arange(len(n_first)), last], routes.depot_lng)
    to_hub = haversine_km(from_lat, from_lng, hub_lat, hub_lng) * rc.detour
    b = gather(stops.building, driven, -1)
    same = np.zeros_like(valid)
    same[:, 1:] = (b[:, 1:] == b[:, :-1]) & (b[:, 1:] >= 0)
    same &= ~at_hub
    access = gather(stops.access, driven, 0.0)
    zone_c = gather(p.zone_congestion, gather(stops.zone, driven, 0), 1.0)
    prof = HOUR_CONGESTION[1 if routes.offday else 0]
    ws = gather(p.window[0], driven, np.nan)
    wait = gather(p.window[2], driven, False)

    route = np.asarray(route, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.int64)
    pace_rain = (routes.pace[route] if pace is None else pace) * routes.rain[route]
    t = np.asarray(clock, dtype=float).copy()
    started = pos >= 0
    if started.any():
        i = np.flatnonzero(started)
        t[i] += _service_at(noise, route[i], pos[i])
    arrival = np.full((len(route), width), np.nan)
    for k in range(int(pos.min()) + 1 if len(pos) else width, width):
        a = np.flatnonzero((pos < k) & valid[route, k])
        if not len(a):
            continue
        r, ta = route[a], t[a]
        relay = k == n_first[r]
        if relay.any():
            j = np.flatnonzero(relay)
            rj = r[j]
            mult = 1.0 + routes.sensitivity[rj] * (zone_c[rj, k] * prof[_hour(ta[j])] - 1.0)
            reach = (
                ta[j] + routes.overhead[rj] + to_hub[rj] / routes.speed_kmh[rj] * 60.0
                * pace_rain[a[j]] * mult
            )  # fmt: skip
            ta[j] = np.maximum(reach, routes.van[rj]) + rc.handover_min
        d = noise.legs(k, r)
        moving = km[r, k] * rc.detour * d.detour / routes.speed_kmh[r] * 60.0 * pace_rain[a]
        moving = moving * d.noise
        fixed = routes.overhead[r] + access[r, k] + d.delay
        intra = d.intra * routes.service_pace[r]
        mult = 1.0 + routes.sensitivity[r] * (zone_c[r, k] * prof[_hour(ta)] - 1.0)
        reach = ta + np.where(same[r, k], intra, fixed + moving * mult)
        gap = ws[r, k] - reach
        arrive = np.where(
            wait[r, k] & (gap > 0) & (gap <= cfg.windows.max_wait_min), ws[r, k], reach
        )
        arrival[a, k] = arrive
        t[a] = arrive + noise.service(k, r)
    return arrival


def _service_at(noise: Noise, rows: IntArray, pos: IntArray) -> FloatArray:
    """Service at each state's own position (positions differ: one column at a time)."""
    out = np.empty(len(rows))
    for k in np.unique(pos):
        m = pos == k
        out[m] = noise.service(int(k), rows[m])
    return out


def _hour(t: FloatArray) -> IntArray:
    return np.clip((t // 60.0).astype(np.int64), 0, 23)
