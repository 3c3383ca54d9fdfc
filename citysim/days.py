"""The calendar of a simulation: day types, holidays, weather and the persistent demand shock.

Everything is drawn up front for every day (plus the day before the first, whose afternoon
orders are delivered on day one) from one stream, so a day's context never depends on how the
days are chunked.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import holidays as holiday_lib
import numpy as np
import numpy.typing as npt

from citysim.config import CityConfig

CALENDAR_STREAM = 2
_SUBSTITUTED = re.compile(r"substituted from (\d\d)/(\d\d)/(\d{4})")

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Calendar:
    """Per-day context; index ``i`` is day ``i - 1`` of the simulation (index 0 is the eve)."""

    dates: tuple[dt.date, ...]
    dow: npt.NDArray[np.int64]  # Monday = 0
    weekend_like: BoolArray  # weekend or holiday, but not a make-up working weekend day
    holiday: BoolArray  # inside a public-holiday break
    rebound: BoolArray  # first working days after a break: the backlog arrives
    promo: npt.NDArray[np.float64]  # shopping-festival multiplier
    rain: BoolArray
    shock: npt.NDArray[np.float64]  # AR(1) log-demand shock (unobserved)

    def index(self, day: int) -> int:
        return day + 1


def build_calendar(cfg: CityConfig) -> Calendar:
    # One stream per series, drawn in day order: day i is the same however many days follow.
    weather_rng = np.random.default_rng([cfg.seed, CALENDAR_STREAM, 0])
    shock_rng = np.random.default_rng([cfg.seed, CALENDAR_STREAM, 1])
    first = cfg.start - dt.timedelta(days=1)
    dates = tuple(first + dt.timedelta(days=i) for i in range(cfg.days + 1))
    n = len(dates)
    dow = np.array([d.weekday() for d in dates], dtype=np.int64)
    public, workdays = _holidays(cfg, dates)
    is_public = np.array([d in public for d in dates])
    is_workday = np.array([d in workdays for d in dates])
    off = is_public | ((dow >= 5) & ~is_workday)
    holiday = _breaks(off, is_public)
    rebound = np.zeros(n, dtype=bool)
    for end in np.flatnonzero(holiday[:-1] & ~holiday[1:]):
        after = [i for i in range(end + 1, n) if not off[i]][: cfg.demand.rebound_days]
        rebound[after] = True

    promo = np.ones(n)
    days_md = [d.strftime("%m-%d") for d in dates]
    for i, md in enumerate(days_md):
        if md in cfg.demand.promo_days:
            promo[i] *= cfg.demand.promo_factor
            if i + 1 < n:
                promo[i + 1] *= np.sqrt(cfg.demand.promo_factor)

    w = cfg.weather
    stationary = w.p_rain_after_dry / (1.0 - w.p_rain_after_rain + w.p_rain_after_dry)
    u = weather_rng.random(n)
    rain = np.zeros(n, dtype=bool)
    rain[0] = u[0] < stationary
    for i in range(1, n):
        rain[i] = u[i] < (w.p_rain_after_rain if rain[i - 1] else w.p_rain_after_dry)

    d = cfg.demand
    eps = shock_rng.normal(0.0, 1.0, n)
    shock = np.empty(n)
    shock[0] = d.ar_sd * eps[0]
    for i in range(1, n):
        shock[i] = d.ar_phi * shock[i - 1] + np.sqrt(1.0 - d.ar_phi**2) * d.ar_sd * eps[i]
    return Calendar(dates, dow, off, holiday, rebound, promo, rain, shock)


def _holidays(cfg: CityConfig, dates: tuple[dt.date, ...]) -> tuple[set[dt.date], set[dt.date]]:
    """Public holidays, and weekend days that are working days (China's make-up days)."""
    if cfg.demand.holidays:
        return {dt.date.fromisoformat(str(h)) for h in cfg.demand.holidays}, set()
    years = sorted({d.year for d in dates})
    table = holiday_lib.country_holidays(cfg.demand.holiday_country, years=years)
    public = set(table.keys())
    workdays: set[dt.date] = set()
    for name in table.values():
        for month, day, year in _SUBSTITUTED.findall(str(name)):
            workdays.add(dt.date(int(year), int(month), int(day)))
    return public, workdays


def _breaks(off: BoolArray, public: BoolArray) -> BoolArray:
    """Runs of days off that contain a public holiday (a holiday plus its bridging weekend)."""
    out = np.zeros(len(off), dtype=bool)
    start = None
    for i, is_off in enumerate([*off.tolist(), False]):
        if is_off and start is None:
            start = i
        elif not is_off and start is not None:
            if public[start:i].any():
                out[start:i] = True
            start = None
    return out
