"""Parcel orders per zone-hour, and the individual orders they are made of.

The expected volume of a zone-hour is a product of effects (ASSUMPTIONS.md lists each):
``base x growth^t x weekly(dow, mix) x hourly(day type, mix) x calendar x exp(AR shock)
x rain x zone-day noise``; the count is negative binomial around it (gamma-Poisson). The same
orders become the day's deliveries, so the demand table and the routes agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from citysim.city import (
    BUSINESS_SHARE,
    GROWTH,
    UNITS,
    WEIGHT,
    ZONE_INDEX,
    City,
    FloatArray,
    IntArray,
)
from citysim.config import CityConfig
from citysim.days import Calendar


def _norm(values: list[float]) -> FloatArray:
    a = np.asarray(values, dtype=np.float64)
    return a / a.sum()


# Share of a day's orders in each local hour, for households and businesses, on working days
# and on weekends/holidays: evening online shopping at home, office hours at work.
RESIDENTIAL_WORKDAY = _norm(
    [.25, .12, .07, .05, .05, .08, .2, .45, .75, .95, 1.05, 1.0,
     .95, .9, .9, .9, .85, .85, .95, 1.1, 1.25, 1.3, 1.0, .55]
)  # fmt: skip
RESIDENTIAL_OFFDAY = _norm(
    [.35, .2, .1, .06, .05, .06, .12, .25, .5, .8, 1.0, 1.05,
     1.05, 1.0, 1.0, .95, .9, .9, 1.0, 1.1, 1.2, 1.2, .95, .6]
)  # fmt: skip
BUSINESS_WORKDAY = _norm(
    [.05, .03, .02, .02, .02, .03, .08, .3, .8, 1.3, 1.5, 1.3,
     1.0, 1.2, 1.35, 1.3, 1.15, .8, .45, .3, .25, .2, .12, .08]
)  # fmt: skip
BUSINESS_OFFDAY = _norm(
    [.1, .05, .03, .03, .03, .05, .1, .3, .6, .9, 1.1, 1.1,
     1.0, 1.0, 1.0, .95, .85, .7, .55, .45, .4, .3, .2, .15]
)  # fmt: skip


UNIT_SKEW = 2.0


@dataclass(frozen=True, eq=False)
class DemandModel:
    """Zone-level demand parameters derived once from the city."""

    base: FloatArray  # expected orders per zone-day at the start (before calendar effects)
    business: FloatArray  # business share of each zone's orders
    growth: FloatArray  # log-growth per year of each zone
    hourly: FloatArray  # (2, zones, 24): workday / off-day hourly shares
    weekly: FloatArray  # (zones, 7)
    zone_first: IntArray  # first building of each zone (buildings are grouped by zone)
    zone_cum: FloatArray  # cumulative building weight before each zone
    cum_weight: FloatArray  # cumulative weight over all buildings
    units: IntArray


def demand_model(cfg: CityConfig, city: City) -> DemandModel:
    z = city.zones
    weight = z[WEIGHT].to_numpy()
    b = z[BUSINESS_SHARE].to_numpy()
    d = cfg.demand
    base = cfg.couriers * d.parcels_per_courier * weight / weight.sum()
    hourly = np.stack(
        [
            (1 - b)[:, None] * RESIDENTIAL_WORKDAY + b[:, None] * BUSINESS_WORKDAY,
            (1 - b)[:, None] * RESIDENTIAL_OFFDAY + b[:, None] * BUSINESS_OFFDAY,
        ]
    )
    wr = np.asarray(d.weekly_residential) / np.mean(d.weekly_residential)
    wb = np.asarray(d.weekly_business) / np.mean(d.weekly_business)
    weekly = (1 - b)[:, None] * wr + b[:, None] * wb
    bw = city.buildings[WEIGHT].to_numpy()
    zi = city.buildings[ZONE_INDEX].to_numpy()
    cum_weight = np.cumsum(bw)
    zone_first = np.searchsorted(zi, np.arange(len(z)))
    zone_cum = np.concatenate([[0.0], cum_weight])[zone_first]
    return DemandModel(
        base, b, z[GROWTH].to_numpy(), hourly, weekly, zone_first, zone_cum, cum_weight,
        city.buildings[UNITS].to_numpy(),
    )  # fmt: skip


@dataclass(frozen=True)
class ZoneHourIntensity:
    """The factors of one day's expected volume per (zone, local hour), each drawn or known:
    ``lam = (level * known * city * noise)[:, None] * shape * gamma``; the count is Poisson(lam).
    Kept apart so that an analysis can ask what a forecaster knowing some of them could do."""

    level: FloatArray  # (Z,) base x growth x weekday or holiday effect: known in advance
    known: float  # the calendar's known multipliers: festival, post-holiday rebound
    city: float  # exp(AR(1) shock) x rain: the city's unknown day factor
    noise: FloatArray  # (Z,) the zone-day lognormal noise
    shape: FloatArray  # (Z, 24) hourly shares for the day type
    gamma: FloatArray  # (Z, 24) the per zone-hour gamma (the negative binomial's mixing)

    @property
    def lam(self) -> FloatArray:
        return (self.level * self.known * self.city * self.noise)[:, None] * self.shape * self.gamma


def zone_hour_intensity(
    cfg: CityConfig, model: DemandModel, cal: Calendar, day: int, rng: np.random.Generator
) -> ZoneHourIntensity:
    """The intensity factors of simulation day ``day`` (-1 is the eve); draws the zone-day noise
    and the gammas from ``rng`` (in that order)."""
    i = cal.index(day)
    d = cfg.demand
    level = model.base * np.exp(model.growth * day / 365.25)
    if cal.holiday[i]:
        level = level * (
            (1 - model.business) * d.holiday_factor + model.business * d.holiday_business_factor
        )
    elif cal.weekend_like[i]:
        level = level * model.weekly[:, cal.dow[i]]
    else:  # a working day; a make-up working weekend day behaves like a Wednesday
        dow = int(cal.dow[i])
        level = level * model.weekly[:, dow if dow < 5 else 2]
    known = cal.promo[i] * (d.rebound_factor if cal.rebound[i] else 1.0)
    city = np.exp(cal.shock[i]) * (d.rain_factor if cal.rain[i] else 1.0)
    noise = rng.lognormal(-0.5 * d.zone_day_sd**2, d.zone_day_sd, len(level))
    shape = model.hourly[1 if cal.weekend_like[i] else 0]
    gamma = rng.gamma(d.dispersion, 1.0 / d.dispersion, shape.shape)
    return ZoneHourIntensity(level, float(known), float(city), noise, shape, gamma)


def zone_hour_volume(
    cfg: CityConfig, model: DemandModel, cal: Calendar, day: int, rng: np.random.Generator
) -> IntArray:
    """Orders per (zone, local hour) of simulation day ``day`` (-1 is the eve), shape (Z, 24)."""
    return rng.poisson(zone_hour_intensity(cfg, model, cal, day, rng).lam).astype(np.int64)


@dataclass(frozen=True)
class Orders:
    """Individual orders: the building and unit they go to, and when they were placed
    (minutes after local midnight of the delivery day; negative for the day before)."""

    building: IntArray
    unit: IntArray
    minute: FloatArray

    def __len__(self) -> int:
        return len(self.building)

    def take(self, mask: np.ndarray) -> Orders:
        return Orders(self.building[mask], self.unit[mask], self.minute[mask])

    def shifted(self, minutes: float) -> Orders:
        return Orders(self.building, self.unit, self.minute + minutes)

    @staticmethod
    def concat(parts: list[Orders]) -> Orders:
        return Orders(
            np.concatenate([p.building for p in parts]),
            np.concatenate([p.unit for p in parts]),
            np.concatenate([p.minute for p in parts]),
        )


def orders_from_volume(model: DemandModel, volume: IntArray, rng: np.random.Generator) -> Orders:
    """Spread zone-hour counts over the zone's buildings (by weight) and over the hour."""
    counts = volume.ravel()
    cell = np.repeat(np.arange(len(counts)), counts)
    zone, hour = np.divmod(cell, volume.shape[1])
    zone_w = np.append(model.zone_cum[1:], model.cum_weight[-1]) - model.zone_cum
    target = model.zone_cum[zone] + rng.random(len(zone)) * zone_w[zone]
    building = np.searchsorted(model.cum_weight, target, side="right")
    building = np.clip(building, model.zone_first[zone], len(model.cum_weight) - 1)
    # Some households order far more than others: units are drawn with a skew (u^2).
    unit = (rng.random(len(zone)) ** UNIT_SKEW * model.units[building]).astype(np.int64)
    minute = hour * 60.0 + rng.random(len(zone)) * 60.0
    return Orders(building.astype(np.int64), unit, minute)
