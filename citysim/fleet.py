"""Depots, couriers and their home areas.

Depots sit at weighted k-means centres of the buildings' expected orders. Each depot's buildings
are cut into compact territories of about equal expected load by recursive weighted bisection,
one per courier. A courier keeps a vehicle (small territories walk or ride, spread-out ones
drive), a personal pace, habits of following the plan, and a hub where the second wave's van
meets them; all persist across days.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from citysim.city import (
    WEIGHT,
    X_KM,
    Y_KM,
    City,
    FloatArray,
    IntArray,
    Projection,
    build_buildings,
    build_zones,
    city_rng,
)
from citysim.config import VEHICLES, CityConfig
from features import schema as s

# Columns of the couriers table (latent truth: pace and habits are never in the output).
PACE = "pace"
SERVICE_PACE = "service_pace"
TENURE_DAYS = "tenure_days"
SWAP_SD = "swap_sd"
REORDER_PROB = "reorder_prob"
SWEEP_BEARING = "sweep_bearing"
START_OFFSET_MIN = "start_offset_min"
HUB_X = "hub_x_km"
HUB_Y = "hub_y_km"
HUB_LAT = "hub_lat"
HUB_LNG = "hub_lng"
VEHICLE_INDEX = "vehicle_index"
DEPOT_INDEX = "depot_index"


def build_city(cfg: CityConfig) -> City:
    """The static city of ``cfg.seed``: zones, buildings, depots, couriers and territories."""
    rng = city_rng(cfg)
    zones, proj = build_zones(cfg, rng)
    buildings, entrances = build_buildings(cfg, zones, proj, rng)
    bx, by = buildings[X_KM].to_numpy(), buildings[Y_KM].to_numpy()
    weight = buildings[WEIGHT].to_numpy()
    n_depots = max(1, min(cfg.geo.depots, cfg.couriers, len(buildings)))
    dx, dy = _weighted_kmeans(bx, by, weight, n_depots, rng)
    depot_of = np.argmin((bx[:, None] - dx) ** 2 + (by[:, None] - dy) ** 2, axis=1)
    # Depots stand a little off their area's centre of gravity (land is cheaper there).
    dx = dx + rng.normal(0, 0.6, n_depots)
    dy = dy + rng.normal(0, 0.6, n_depots)
    dlat, dlng = proj.to_latlng(dx, dy)
    width = max(2, len(str(n_depots)))
    depots = pd.DataFrame(
        {
            s.DEPOT_ID: pd.array([f"D{i:0{width}d}" for i in range(n_depots)], dtype="string"),
            s.LAT: dlat,
            s.LNG: dlng,
            X_KM: dx,
            Y_KM: dy,
        }
    )
    per_depot = _apportion(
        np.bincount(depot_of, weights=weight, minlength=n_depots).astype(np.float64), cfg.couriers
    )
    owner = np.empty(len(buildings), dtype=np.int64)
    courier_depot = np.repeat(np.arange(n_depots), per_depot)
    first = 0
    for d in range(n_depots):
        members = np.flatnonzero(depot_of == d)
        for k, part in enumerate(_bisect(members, bx, by, weight, int(per_depot[d]))):
            owner[part] = first + k
        first += int(per_depot[d])
    couriers = _couriers(cfg, proj, courier_depot, owner, bx, by, weight, depots, rng)
    return City(zones, buildings, entrances, depots, couriers, proj, owner)


def _weighted_kmeans(
    x: FloatArray, y: FloatArray, w: FloatArray, k: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    pick = rng.choice(len(x), size=k, replace=False, p=w / w.sum())
    cx, cy = x[pick].copy(), y[pick].copy()
    for _ in range(15):
        lab = np.argmin((x[:, None] - cx) ** 2 + (y[:, None] - cy) ** 2, axis=1)
        tot = np.bincount(lab, weights=w, minlength=k)
        has = tot > 0
        cx[has] = np.bincount(lab, weights=w * x, minlength=k)[has] / tot[has]
        cy[has] = np.bincount(lab, weights=w * y, minlength=k)[has] / tot[has]
    return cx, cy


def _apportion(weights: FloatArray, total: int) -> IntArray:
    """Integers proportional to ``weights`` summing to ``total``, each >= 1 (largest remainder)."""
    k = len(weights)
    share = weights / weights.sum() * (total - k)
    out = np.floor(share).astype(np.int64)
    rest = total - k - int(out.sum())
    out[np.argsort(-(share - out), kind="stable")[:rest]] += 1
    return out + 1


def _bisect(
    idx: IntArray, x: FloatArray, y: FloatArray, w: FloatArray, parts: int
) -> list[IntArray]:
    """Split buildings ``idx`` into ``parts`` compact groups of about equal weight."""
    if parts <= 1:
        return [idx]
    if len(idx) <= parts:  # a tiny city: one building each, the rest of the couriers idle
        return [idx[i : i + 1] for i in range(parts)]
    left = parts // 2
    axis = x[idx] if np.ptp(x[idx]) >= np.ptp(y[idx]) else y[idx]
    order = idx[np.argsort(axis, kind="stable")]
    cum = np.cumsum(w[order])
    cut = int(np.searchsorted(cum, cum[-1] * left / parts))
    cut = min(max(cut, left), len(order) - (parts - left))
    return _bisect(order[:cut], x, y, w, left) + _bisect(order[cut:], x, y, w, parts - left)


def _couriers(
    cfg: CityConfig,
    proj: Projection,
    courier_depot: IntArray,
    owner: IntArray,
    bx: FloatArray,
    by: FloatArray,
    w: FloatArray,
    depots: pd.DataFrame,
    rng: np.random.Generator,
) -> pd.DataFrame:
    n = len(courier_depot)
    fleet = cfg.fleet
    tot = np.bincount(owner, weights=w, minlength=n)
    has = tot > 0
    tot = np.where(has, tot, 1.0)
    depot_x = depots[X_KM].to_numpy()[courier_depot]
    depot_y = depots[Y_KM].to_numpy()[courier_depot]
    cx = np.where(has, np.bincount(owner, weights=w * bx, minlength=n) / tot, depot_x)
    cy = np.where(has, np.bincount(owner, weights=w * by, minlength=n) / tot, depot_y)
    spread = np.sqrt(
        np.bincount(owner, weights=w * ((bx - cx[owner]) ** 2 + (by - cy[owner]) ** 2), minlength=n)
        / tot
    )
    to_depot = np.hypot(cx - depot_x, cy - depot_y)
    # Spread-out territories far from the depot drive; compact central ones walk or ride.
    edge = np.clip((spread + 0.3 * to_depot - 0.6) / 2.0, 0.0, 1.0)
    mix = (1 - edge[:, None]) * fleet.mix_core.array() + edge[:, None] * fleet.mix_edge.array()
    mix /= mix.sum(1, keepdims=True)
    vehicle = (rng.random((n, 1)) > np.cumsum(mix, 1)).sum(1).clip(0, len(VEHICLES) - 1)
    pace = rng.lognormal(0.0, fleet.pace_sd, n)
    # The hub (second-wave hand-over) is the territory's building nearest its centre of gravity.
    d2 = (bx - cx[owner]) ** 2 + (by - cy[owner]) ** 2
    order = np.lexsort((d2, owner))
    first = order[np.minimum(np.searchsorted(owner[order], np.arange(n)), len(order) - 1)]
    hx, hy = np.where(has, bx[first], depot_x), np.where(has, by[first], depot_y)
    hlat, hlng = proj.to_latlng(hx, hy)
    habit = rng.random(n) < fleet.reorder_habit_share
    width = max(4, len(str(n)))
    return pd.DataFrame(
        {
            s.COURIER_ID: pd.array([f"C{i:0{width}d}" for i in range(n)], dtype="string"),
            DEPOT_INDEX: courier_depot,
            s.DEPOT_ID: depots[s.DEPOT_ID].to_numpy()[courier_depot],
            VEHICLE_INDEX: vehicle,
            s.VEHICLE_TYPE: pd.array([VEHICLES[v].value for v in vehicle], dtype="string"),
            PACE: pace,
            SERVICE_PACE: np.sqrt(pace) * rng.lognormal(0.0, 0.1, n),
            TENURE_DAYS: np.where(rng.random(n) < fleet.new_share, 0.0, rng.uniform(200, 2000, n)),
            SWAP_SD: rng.uniform(*cfg.routes.swap_sd, n),
            REORDER_PROB: np.where(habit, cfg.routes.reorder_prob_habit, cfg.routes.reorder_prob),
            SWEEP_BEARING: rng.uniform(0, 2 * np.pi, n),
            START_OFFSET_MIN: rng.normal(0.0, cfg.routes.dispatch_sd_min, n),
            X_KM: cx,
            Y_KM: cy,
            HUB_X: hx,
            HUB_Y: hy,
            HUB_LAT: hlat,
            HUB_LNG: hlng,
        }
    )


def covering(city: City, absent: npt.NDArray[np.bool_]) -> IntArray:
    """Courier of each building today: its own, or the nearest colleague at the same depot
    who is at work when the owner is off (the absent courier's area is shared out)."""
    owner = city.owner
    orphan = np.flatnonzero(absent[owner])
    if not len(orphan):
        return owner
    cou = city.couriers
    depot = cou[DEPOT_INDEX].to_numpy()
    bx = city.buildings[X_KM].to_numpy()[orphan]
    by = city.buildings[Y_KM].to_numpy()[orphan]
    d2 = (bx[:, None] - cou[X_KM].to_numpy()) ** 2 + (by[:, None] - cou[Y_KM].to_numpy()) ** 2
    d2[(depot[None, :] != depot[owner[orphan]][:, None]) | absent[None, :]] = np.inf
    best = np.argmin(d2, axis=1)
    out = owner.copy()
    out[orphan] = np.where(np.isfinite(d2.min(axis=1)), best, owner[orphan])
    return out
