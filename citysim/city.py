"""The static city: H3 zones of varying density, buildings with entrances, depots.

Everything here is drawn once per seed from its own random stream, so the city of a seed is the
same whatever the number of days simulated. Positions are kept both as WGS84 degrees (what the
output carries) and as planar km around the city centre (what the simulator computes with).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import h3
import numpy as np
import numpy.typing as npt
import pandas as pd

from citysim.config import STOP_TYPES, CityConfig, GeoConfig
from features import schema as s
from features.geo import offset_deg

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

CITY_STREAM = 1  # random-stream tags: the city, the calendar and each day draw independently

# Columns of the city's own tables (latent truth for diagnostics, not contract columns).
X_KM = "x_km"
Y_KM = "y_km"
DENSITY = "density"
BUSINESS_SHARE = "business_share"
CONGESTION = "congestion"
GROWTH = "growth_per_year"
WEIGHT = "weight"
ZONE_INDEX = "zone_index"
KIND = "kind"
UNITS = "units"
FLOORS = "floors"
WALKUP = "walkup"
ACCESS_MIN = "access_min"
N_BUILDINGS = "n_buildings"
DEPOT_INDEX = "depot_index"


class BuildingKind(IntEnum):
    APARTMENT = 0
    HOUSE = 1
    OFFICE = 2
    SHOP = 3
    LOCKER = 4
    OTHER = 5


# What a delivery to each kind of building is, as a stop type (index into STOP_TYPES).
KIND_STOP_TYPE: IntArray = np.array(
    [
        STOP_TYPES.index(s.StopType.RESIDENTIAL),
        STOP_TYPES.index(s.StopType.RESIDENTIAL),
        STOP_TYPES.index(s.StopType.BUSINESS),
        STOP_TYPES.index(s.StopType.SHOP),
        STOP_TYPES.index(s.StopType.LOCKER),
        STOP_TYPES.index(s.StopType.OTHER),
    ],
    dtype=np.int64,
)
BUSINESS_KINDS = (BuildingKind.OFFICE, BuildingKind.SHOP)


@dataclass(frozen=True)
class Projection:
    """Planar km around the city centre (equirectangular: exact enough over a city)."""

    lat0: float
    lng0: float

    def to_xy(self, lat: npt.ArrayLike, lng: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        lat_a, lng_a = np.asarray(lat, dtype=np.float64), np.asarray(lng, dtype=np.float64)
        x = (lng_a - self.lng0) * 111.320 * np.cos(np.radians(self.lat0))
        y = (lat_a - self.lat0) * 110.574
        return x, y

    def to_latlng(self, x: npt.ArrayLike, y: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
        dlat, dlng = offset_deg(self.lat0, x, y)
        return self.lat0 + dlat, self.lng0 + dlng


@dataclass(frozen=True, eq=False)
class City:
    """The static city of a seed. Tables carry latent truth (pace, density): for diagnostics
    and tests, never for model features.

    ``zones``: one row per H3 cell with buildings. ``buildings``: one row per building (AOI),
    with its zone, kind, units, floors and expected share of orders. ``entrances``: per building
    a few address points (lat, lng) inside the building's own cell. ``depots``, ``couriers``:
    see :mod:`citysim.fleet`.
    """

    zones: pd.DataFrame
    buildings: pd.DataFrame
    entrances: FloatArray
    depots: pd.DataFrame
    couriers: pd.DataFrame
    projection: Projection
    owner: IntArray  # courier index of each building


def city_rng(cfg: CityConfig) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, CITY_STREAM])


def build_zones(cfg: CityConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, Projection]:
    """H3 cells within ``radius_km`` of the centre, with density, business mix and congestion."""
    geo = cfg.geo
    proj = Projection(geo.center_lat, geo.center_lng)
    centre = h3.latlng_to_cell(geo.center_lat, geo.center_lng, cfg.h3_resolution)
    spacing = float(np.sqrt(2.0 * h3.cell_area(centre, "km^2") / np.sqrt(3.0)))
    cells = sorted(h3.grid_disk(centre, int(np.ceil(geo.radius_km / spacing)) + 1))
    lat, lng = np.array([h3.cell_to_latlng(c) for c in cells], dtype=np.float64).T
    x, y = proj.to_xy(lat, lng)
    keep = np.hypot(x, y) <= geo.radius_km
    cells = [c for c, k in zip(cells, keep, strict=True) if k]
    lat, lng, x, y = lat[keep], lng[keep], x[keep], y[keep]

    # A dense core, a few sub-centres, and zone-level noise: not a radially symmetric city.
    density = np.exp(-np.hypot(x, y) / geo.core_radius_km)
    for _ in range(geo.subcentres):
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 0.75) * geo.radius_km
        strength = rng.uniform(0.35, 0.7)
        d = np.hypot(x - dist * np.cos(angle), y - dist * np.sin(angle))
        density += strength * np.exp(-d / 1.2)
    density *= rng.lognormal(0.0, 0.3, len(cells))
    density /= density.max()

    area = np.array([h3.cell_area(c, "km^2") for c in cells])
    per_km2 = (
        geo.buildings_per_km2_edge
        + (geo.buildings_per_km2_core - geo.buildings_per_km2_edge) * density
    )
    n_buildings = rng.poisson(area * per_km2)
    farmland = rng.random(len(cells)) < geo.empty_zone_prob_edge * (1.0 - density) ** 4
    n_buildings[farmland] = 0
    zones = pd.DataFrame(
        {
            s.ZONE_ID: pd.array(cells, dtype="string"),
            s.LAT: lat,
            s.LNG: lng,
            X_KM: x,
            Y_KM: y,
            DENSITY: density,
            CONGESTION: 1.0 + 0.45 * density,
            GROWTH: cfg.demand.trend_per_year
            + rng.normal(0.0, cfg.demand.zone_trend_sd_per_year, len(cells)),
            N_BUILDINGS: n_buildings,
        }
    )
    zones = zones[zones[N_BUILDINGS] > 0].reset_index(drop=True)
    return zones, proj


def build_buildings(
    cfg: CityConfig, zones: pd.DataFrame, proj: Projection, rng: np.random.Generator
) -> tuple[pd.DataFrame, FloatArray]:
    """Buildings of each zone: kind, units, floors, order weight, position and entrances."""
    counts = zones.pop(N_BUILDINGS).to_numpy()
    zi = np.repeat(np.arange(len(zones)), counts)
    dens = zones[DENSITY].to_numpy()[zi]
    n = len(zi)
    # Business share of a zone's buildings rises with density (offices in the core).
    bshare = np.clip(0.08 + 0.45 * dens**1.2 + rng.normal(0, 0.06, n), 0.02, 0.7)
    p_office, p_shop = 0.55 * bshare, np.full(n, 0.12)
    p_locker, p_other = np.full(n, 0.05), np.full(n, 0.03)
    resid = 1.0 - p_office - p_shop - p_locker - p_other
    p_apartment = resid * np.clip(0.35 + 0.6 * dens, 0, 1)
    probs = np.stack([p_apartment, resid - p_apartment, p_office, p_shop, p_locker, p_other], 1)
    kind = (rng.random((n, 1)) > np.cumsum(probs, 1)).sum(1)
    kind = np.minimum(kind, len(BuildingKind) - 1)

    units = np.ones(n, dtype=np.int64)
    floors = np.ones(n, dtype=np.int64)
    walkup = np.zeros(n, dtype=bool)
    apt = kind == BuildingKind.APARTMENT
    units[apt] = rng.integers(24, (61 + 200 * dens[apt]).astype(np.int64))
    walkup[apt] = rng.random(apt.sum()) < 0.5 - 0.3 * dens[apt]
    floors[apt] = np.where(
        walkup[apt], rng.integers(5, 8, apt.sum()), rng.integers(8, 34, apt.sum())
    )
    house = kind == BuildingKind.HOUSE
    units[house] = rng.integers(1, 5, house.sum())
    floors[house] = rng.integers(1, 4, house.sum())
    walkup[house] = True
    office = kind == BuildingKind.OFFICE
    units[office] = rng.integers(1, 9, office.sum())
    floors[office] = rng.integers(3, 25, office.sum())
    other = kind == BuildingKind.OTHER
    units[other] = rng.integers(1, 4, other.sum())

    # Expected share of orders: households, company receptions, lockers that pool a block.
    per_unit = np.array([1.0, 1.3, 20.0, 8.0, 60.0, 3.0])[kind]
    weight = per_unit * units * np.where(kind == BuildingKind.LOCKER, 1.0 + dens, 1.0)

    lat, lng = _points_in_cells(zones, zi, proj, cfg.h3_resolution, rng)
    entrances = _entrances(cfg.geo, kind, lat, lng, zones[s.ZONE_ID].to_numpy()[zi], proj, cfg, rng)
    width = max(6, len(str(n)))
    x, y = proj.to_xy(lat, lng)
    buildings = pd.DataFrame(
        {
            s.AOI_ID: pd.array([f"B{i:0{width}d}" for i in range(n)], dtype="string"),
            ZONE_INDEX: zi,
            s.ZONE_ID: zones[s.ZONE_ID].to_numpy()[zi],
            s.LAT: lat,
            s.LNG: lng,
            X_KM: x,
            Y_KM: y,
            KIND: kind,
            UNITS: units,
            FLOORS: floors,
            WALKUP: walkup,
            WEIGHT: weight,
            # Gated compounds, security desks, hard-to-find doors: persistent per building.
            ACCESS_MIN: rng.exponential(cfg.routes.access_mean_min, n),
        }
    )
    is_business = np.isin(kind, BUSINESS_KINDS)
    zone_w = np.bincount(zi, weights=weight, minlength=len(zones))
    zones[WEIGHT] = zone_w
    zones[BUSINESS_SHARE] = (
        np.bincount(zi, weights=weight * is_business, minlength=len(zones)) / zone_w
    )
    return buildings, entrances


def _points_in_cells(
    zones: pd.DataFrame, zi: IntArray, proj: Projection, resolution: int, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Uniform points inside each building's H3 cell (rejection sampling around the centre)."""
    cells = zones[s.ZONE_ID].to_numpy()
    cx, cy = zones[X_KM].to_numpy()[zi], zones[Y_KM].to_numpy()[zi]
    radius = float(
        np.sqrt(2.0 * h3.cell_area(str(cells[0]), "km^2") / np.sqrt(3.0))
    )  # > circumradius
    x, y = cx.copy(), cy.copy()
    todo = np.arange(len(zi))
    for _ in range(12):
        if not len(todo):
            break
        r = radius * np.sqrt(rng.random(len(todo)))
        a = rng.uniform(0, 2 * np.pi, len(todo))
        tx, ty = cx[todo] + r * np.cos(a), cy[todo] + r * np.sin(a)
        tlat, tlng = proj.to_latlng(tx, ty)
        inside = np.array(
            [
                h3.latlng_to_cell(p, q, resolution) == cells[z]
                for p, q, z in zip(tlat, tlng, zi[todo], strict=True)
            ],
            dtype=bool,
        )
        x[todo[inside]], y[todo[inside]] = tx[inside], ty[inside]
        todo = todo[~inside]
    return proj.to_latlng(x, y)  # the few still todo sit at their cell centre


def _entrances(
    geo: GeoConfig,
    kind: IntArray,
    lat: FloatArray,
    lng: FloatArray,
    cells: npt.NDArray[np.object_],
    proj: Projection,
    cfg: CityConfig,
    rng: np.random.Generator,
) -> FloatArray:
    """A few address points per building (stairwells of a block); single-door kinds get one.

    Every point is checked to lie in the building's own cell, so ``zone_id`` is the H3 cell of
    the stop's coordinates; a point that falls over a cell edge is put back on the building.
    """
    n, e = len(kind), geo.entrances
    spread = (
        geo.entrance_spread_m
        / 1000.0
        * np.isin(kind, (BuildingKind.APARTMENT, BuildingKind.OFFICE))
    )
    bx, by = proj.to_xy(lat, lng)
    ex = bx[:, None] + rng.uniform(-1, 1, (n, e)) * spread[:, None]
    ey = by[:, None] + rng.uniform(-1, 1, (n, e)) * spread[:, None]
    ex[:, 0], ey[:, 0] = bx, by
    elat, elng = proj.to_latlng(ex, ey)
    flat_cells = np.repeat(cells, e)
    ok = np.array(
        [
            h3.latlng_to_cell(p, q, cfg.h3_resolution) == c
            for p, q, c in zip(elat.ravel(), elng.ravel(), flat_cells, strict=True)
        ],
        dtype=bool,
    ).reshape(n, e)
    elat = np.where(ok, elat, lat[:, None])
    elng = np.where(ok, elng, lng[:, None])
    return np.stack([elat, elng], axis=-1)
