"""The demand feature set ``demand_v3``: a declared spec, a dense panel, point-in-time features.

A forecast row is a (zone, origin, target period) triple. "Data up to the origin" means the
periods that start before it, and every value a feature reads from the volume history has a
period index below the origin's: lags relative to the target exist only at or beyond the
horizon (NaN otherwise), windows end at the origin, seasonal means take the latest same-season
periods before it. One global model serves every horizon (``horizon`` is a feature), and an
intraday origin sees the volume already observed today. Known-in-advance covariates are read at
the target period. Zone statistics are the only fitted state (``DemandFeaturizer.fit`` on the
training window).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import holidays as holiday_lib
import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from features import schema as s
from features.demand import check_freq

# v2: the hourly day classes (``DemandFeatureSpec.day_classes``); v3: their hour shapes from a
# low-rank fit over all zones (``DemandFeatureSpec.shape_rank``), same columns
FEATURE_SET = "demand_v3"
# Feature sets this code computes: a bundle carries its own spec and fitted state, and a v1
# spec (no day classes) builds exactly v1's columns; the shape rank only acts when fitting, so
# v1 and v2 champions keep serving as they did.
FEATURE_SETS: frozenset[str] = frozenset({"demand_v1", "demand_v2", FEATURE_SET})
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
CALENDAR_ITEMS: tuple[str, ...] = (
    "hour",
    "weekday",
    "day_of_month",
    "holiday",
    "day_off",
    "days_after_holiday",
)
ROLLING_STATS: tuple[str, ...] = ("mean", "std")
CATEGORICAL: tuple[str, ...] = ("zone",)
PERIODS_PER_DAY = {"h": 24, "d": 1}
ZERO_RUN_CAP_DAYS = 56  # capped, so a long-closed zone's run cannot act as a calendar
AFTER_HOLIDAY_CAP = 8  # days; beyond a week after a break the rebound is over
N_DAY_CLASSES = 4  # working day, weekend day off, holiday break, working day after a break
REBOUND_DAYS = 2  # calendar days after a break whose working days are a class of their own
PROFILE_PRIOR = 24.0  # pseudo-parcels pulling a small zone's profile towards the city's
NMF_MAX_ITER = 2000
SHAPE_RANK = 2  # hourly default; see DemandFeatureSpec.shape_rank and low_rank_shapes
_SUBSTITUTED = re.compile(r"substituted from (\d\d)/(\d\d)/(\d{4})")


@dataclass(frozen=True)
class DemandFeatureSpec:
    """Which features to build; ``feature_names()`` is derived from it (tests pin it).

    Windows, lags and seasons are in periods of ``freq``. ``total_ratios`` pairs (a, b) give
    the city total's mean over the last ``a`` periods over its mean over the last ``b``.
    """

    freq: s.Freq = "h"
    lags: tuple[int, ...] = (1, 2, 24, 168)
    rolling: tuple[tuple[str, int], ...] = (
        ("mean", 1),
        ("mean", 3),
        ("mean", 24),
        ("mean", 168),
        ("mean", 672),
        ("std", 168),
    )
    seasonal: tuple[tuple[int, int], ...] = ((24, 1), (24, 7), (168, 1), (168, 4))
    level_profiles: tuple[int, ...] = (168, 672)
    ewm: tuple[int, ...] = ()  # half-lives of exponentially weighted level means
    calendar: tuple[str, ...] = ("hour", "weekday", "holiday", "day_off", "days_after_holiday")
    holidays_country: str | None = None
    zone: bool = True
    total_ratios: tuple[tuple[int, int], ...] = ((24, 168), (168, 672))
    observed_today: bool = True
    zero_run: bool = True
    skip_holidays_in_levels: bool = True
    covariates: tuple[str, ...] = ()
    # Hourly only: the zone's level on the target's class of day (working day, weekend day
    # off, holiday break, a working day just after a break) relative to its usual days, and
    # its hour shape on days off vs working days (``DemandFeaturizer._fit_day_classes``).
    day_classes: bool = False
    # The hour shapes (the day classes' and the zone's every-day profile): 0 each zone's own
    # shares shrunk towards the city's; k > 0 a rank-k fit over all zones (``low_rank_counts``):
    # every zone's shape a mix of k shapes the whole city teaches (homes, offices, ...), so a
    # zone's few parcels per hour give only its mix, not 48 noisy shares.
    shape_rank: int = 0

    def __post_init__(self) -> None:
        check_freq(self.freq)
        if self.day_classes and self.freq != "h":
            raise ValueError("day_classes: needs hourly data (freq='h')")
        if self.shape_rank < 0 or (self.shape_rank and not self.day_classes):
            raise ValueError(
                f"shape_rank: must be >= 0 and needs day_classes, got {self.shape_rank}"
            )
        unknown = [c for c in self.calendar if c not in CALENDAR_ITEMS]
        if unknown:
            raise ValueError(f"calendar: unknown item(s) {unknown}; known: {list(CALENDAR_ITEMS)}")
        if self.freq == "d" and ("hour" in self.calendar or self.observed_today):
            raise ValueError("calendar 'hour' and observed_today need hourly data (freq='h')")
        bad = [st for st, _ in self.rolling if st not in ROLLING_STATS]
        if bad:
            raise ValueError(f"rolling: unknown stat(s) {bad}; known: {list(ROLLING_STATS)}")
        sizes = [*self.lags, *(w for _, w in self.rolling), *(x for p in self.seasonal for x in p)]
        sizes += [*self.level_profiles, *self.ewm, *(x for p in self.total_ratios for x in p)]
        if any(int(v) < 1 for v in sizes):
            raise ValueError("lags, windows and seasons: must be >= 1 period")

    @classmethod
    def daily(cls, holidays_country: str | None = None, **kw: object) -> DemandFeatureSpec:
        """Defaults for daily data: weekly seasonality, levels over 1 to 8 weeks and an
        exponentially weighted level (half-life 5 days: the daily model's anchor)."""
        base: dict[str, object] = {
            "freq": "d",
            "lags": (1, 2, 7, 14),
            "rolling": (
                ("mean", 1),
                ("mean", 3),
                ("mean", 7),
                ("mean", 14),
                ("mean", 28),
                ("mean", 56),
                ("std", 28),
            ),
            "seasonal": ((7, 1), (7, 4), (7, 8)),
            "level_profiles": (14, 28),
            "ewm": (5,),
            "calendar": ("weekday", "holiday", "day_off", "days_after_holiday"),
            "total_ratios": ((1, 7), (7, 28), (28, 56)),
            "observed_today": False,
            "holidays_country": holidays_country,
        }
        return cls(**{**base, **kw})  # type: ignore[arg-type]

    @classmethod
    def hourly(cls, holidays_country: str | None = None, **kw: object) -> DemandFeatureSpec:
        """Defaults for hourly data: daily and weekly seasonality, today's volume so far, the
        zone's level and hour shape by class of day (``day_classes``), the shapes of rank
        ``SHAPE_RANK``."""
        base: dict[str, object] = {
            "holidays_country": holidays_country,
            "day_classes": True,
            # the low-rank shapes are the day classes' (without them: the shrunk shares)
            "shape_rank": SHAPE_RANK if kw.get("day_classes", True) else 0,
        }
        return cls(**{**base, **kw})  # type: ignore[arg-type]

    @property
    def season(self) -> int:
        """The zone profile's positions: hour of the day (hourly) or day of the week (daily)."""
        return 24 if self.freq == "h" else 7

    def feature_names(self) -> list[str]:
        names = ["horizon"] + (["origin_hour"] if self.freq == "h" else [])
        names += [f"lag_{k}" for k in self.lags]
        names += [f"roll_{st}_{w}" for st, w in self.rolling]
        names += [f"seas_mean_{p}x{n}" for p, n in self.seasonal]
        names += [f"level_profile_{w}" for w in self.level_profiles]
        names += [f"ewm_mean_{hl}" for hl in self.ewm]
        names += list(self.calendar)
        names += ["zone", "zone_mean", "zone_profile"] if self.zone else []
        names += ["zero_run"] if self.zero_run else []
        if self.day_classes:
            names += ["class_ratio", "daytype_profile", "class_level"]
        names += [f"total_ratio_{a}_{b}" for a, b in self.total_ratios]
        if self.observed_today:
            names += ["today_so_far", "today_expected", "today_ratio", "total_today_ratio"]
        return names + [f"cov_{c}" for c in self.covariates]


def period(freq: str) -> pd.Timedelta:
    """The length of one period of ``freq``."""
    return pd.Timedelta(hours=1) if check_freq(freq) == "h" else pd.Timedelta(days=1)


def spec_for(freq: str, holidays_country: str | None = None) -> DemandFeatureSpec:
    freq = check_freq(freq)
    return (
        DemandFeatureSpec.hourly(holidays_country)
        if freq == "h"
        else DemandFeatureSpec.daily(holidays_country)
    )


@dataclass(frozen=True, eq=False)
class DemandPanel:
    """Volume as a dense (zone x period) matrix: NaN before a zone's first period and from
    ``end`` on (unknown); zero for missing periods in between (quiet zones are zero demand)."""

    zones: pd.Index
    start: pd.Timestamp
    freq: s.Freq
    values: FloatArray
    covariates: dict[str, FloatArray] = field(default_factory=dict)

    @classmethod
    def from_table(
        cls,
        table: pd.DataFrame,
        freq: str,
        *,
        end: pd.Timestamp | str | None = None,
        covariates: tuple[str, ...] = (),
    ) -> DemandPanel:
        """Build from ``zone_id, ts, volume`` (duplicates summed). ``end`` (exclusive) defaults
        to the last period with a volume; volumes at or after ``end`` are ignored, covariates
        of later rows are kept (they are known in advance)."""
        freq = check_freq(freq)
        step = period(freq)
        table = table[table[s.ZONE_ID].notna() & table[s.TS].notna()]
        ts = pd.to_datetime(table[s.TS]).astype("datetime64[ns]")
        zone_ids = table[s.ZONE_ID].astype("string")
        has_volume = table[s.VOLUME].notna().to_numpy()
        if not has_volume.any() or len(table) == 0:
            raise ValueError("demand table: no volume to build a panel from")
        last = ts[has_volume].max() + step
        stop = pd.Timestamp(end) if end is not None else last
        start = ts.min()
        n = int((max(stop, ts.max() + step) - start) // step)
        zones = pd.Index(sorted(zone_ids.dropna().unique()), dtype="string")
        zi = zones.get_indexer(zone_ids)
        ti = ((ts - start) // step).to_numpy(np.int64)
        keep = has_volume & (ts < stop).to_numpy()
        sums = np.zeros((len(zones), n))
        np.add.at(sums, (zi[keep], ti[keep]), table[s.VOLUME].to_numpy(float)[keep])
        first = np.full(len(zones), n, dtype=np.int64)
        np.minimum.at(first, zi[keep], ti[keep])
        n_known = int((stop - start) // step)
        idx = np.arange(n)
        known = (idx[None, :] >= first[:, None]) & (idx[None, :] < n_known)
        values = np.where(known, sums, np.nan)
        covs = {}
        for c in covariates:
            mat = np.full((len(zones), n), np.nan)
            mat[zi, ti] = pd.to_numeric(table[c], errors="coerce").to_numpy(float)
            covs[c] = mat
        return cls(zones, pd.Timestamp(start), freq, values, covs)

    @property
    def step(self) -> pd.Timedelta:
        return period(self.freq)

    @property
    def n_periods(self) -> int:
        return int(self.values.shape[1])

    def index_of(self, ts: pd.Timestamp | str) -> int:
        return int((pd.Timestamp(ts) - self.start) // self.step)

    def ts_of(self, idx: npt.ArrayLike) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.start + np.asarray(idx, dtype=np.int64) * self.step)

    @cached_property
    def first(self) -> IntArray:
        """Each zone's first known period (``n_periods`` for a zone with none)."""
        known = np.isfinite(self.values)
        return np.where(known.any(axis=1), known.argmax(axis=1), self.n_periods).astype(np.int64)

    @cached_property
    def zero_runs(self) -> IntArray:
        """(Z, n + 1): how many zero periods end just before each period index (a zone's
        unknown periods end a run like a positive one does)."""
        idx = np.arange(self.n_periods)
        stop = np.where(np.isfinite(self.values) & (self.values == 0), -1, idx)
        last = np.maximum.accumulate(stop, axis=1)  # the latest non-zero period so far
        runs = idx[None, :] - last
        return np.hstack([np.zeros((len(self.zones), 1), dtype=np.int64), runs]).astype(np.int64)


@dataclass(frozen=True)
class DemandQueries:
    """Forecast rows: panel zone row, origin period index, target period index (>= origin)."""

    zone: IntArray
    origin: IntArray
    target: IntArray

    def __len__(self) -> int:
        return len(self.zone)

    @property
    def horizon(self) -> IntArray:
        """1 for the origin's own period, 2 for the next, ..."""
        return self.target - self.origin + 1

    def take(self, mask: npt.NDArray[np.bool_]) -> DemandQueries:
        return DemandQueries(self.zone[mask], self.origin[mask], self.target[mask])


def make_queries(
    panel: DemandPanel,
    origins: list[pd.Timestamp] | pd.DatetimeIndex,
    horizon: int | None,
    zones: npt.ArrayLike | None = None,
) -> DemandQueries:
    """Rows for every zone known before each origin (or the given zone rows) and the next
    ``horizon`` periods; ``horizon=None`` is the rest of the origin's day."""
    zone_rows = np.arange(len(panel.zones)) if zones is None else np.asarray(zones, dtype=np.int64)
    parts = []
    for origin in pd.DatetimeIndex(origins):
        o = panel.index_of(origin)
        if horizon is None:
            h = int((origin.normalize() + pd.Timedelta(days=1) - origin) // panel.step)
        else:
            h = int(horizon)
        z = zone_rows[panel.first[zone_rows] < o]
        zz, hh = np.repeat(z, h), np.tile(np.arange(h), len(z))
        parts.append((zz, np.full(len(zz), o), o + hh))
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return DemandQueries(empty, empty, empty)
    return DemandQueries(
        *(np.concatenate([p[i] for p in parts]).astype(np.int64) for i in range(3))
    )


def gather(values: FloatArray, zone: IntArray, idx: IntArray, origin: IntArray) -> FloatArray:
    """``values[zone, idx]`` where ``0 <= idx < origin``; NaN elsewhere (never the future)."""
    ok = (idx >= 0) & (idx < origin) & (idx < values.shape[1])
    out = np.full(len(zone), np.nan)
    out[ok] = values[zone[ok], idx[ok]]
    return out


class _Windows:
    """Window sums and counts over [a, b) from cumulative sums (NaN periods are not counted)."""

    def __init__(self, values: FloatArray) -> None:
        known = np.isfinite(values)
        v = np.where(known, values, 0.0)
        pad = np.zeros((values.shape[0], 1))
        self.c1 = np.hstack([pad, np.cumsum(v, axis=1)])
        self.c2 = np.hstack([pad, np.cumsum(v * v, axis=1)])
        self.cn = np.hstack([pad, np.cumsum(known, axis=1, dtype=np.float64)])

    def stat(self, zone: IntArray, a: IntArray, b: IntArray, what: str) -> FloatArray:
        n = self.c1.shape[1] - 1
        a, b = np.clip(a, 0, n), np.clip(b, 0, n)
        cnt = self.cn[zone, b] - self.cn[zone, a]
        s1 = self.c1[zone, b] - self.c1[zone, a]
        with np.errstate(invalid="ignore", divide="ignore"):
            if what == "sum":
                return np.where(cnt > 0, s1, np.nan)
            mean = np.where(cnt > 0, s1 / cnt, np.nan)
            if what == "mean":
                return mean
            var = (self.c2[zone, b] - self.c2[zone, a]) / cnt - mean**2
            return np.where(cnt > 1, np.sqrt(np.maximum(var, 0.0)), np.nan)


def calendar_table(days: pd.DatetimeIndex, country: str | None) -> pd.DataFrame:
    """Per local day: weekday, day of month, ``holiday`` (inside a holiday break: a run of
    days off holding a public holiday, so the weekend glued to a holiday counts), ``day_off``
    (weekend or holiday, not a make-up working day) and days since the last break day."""
    days = pd.DatetimeIndex(days).normalize()
    lo, hi = (
        days.min() - pd.Timedelta(days=AFTER_HOLIDAY_CAP + 7),
        days.max() + pd.Timedelta(days=7),
    )
    span = pd.date_range(lo, hi, freq="D")
    public = np.zeros(len(span), dtype=bool)
    workday = np.zeros(len(span), dtype=bool)
    if country:
        table = holiday_lib.country_holidays(country, years=range(lo.year, hi.year + 1))
        public = np.array([d in table for d in span.date])
        made_up = {
            pd.Timestamp(int(y), int(m), int(d))
            for name in table.values()
            for m, d, y in _SUBSTITUTED.findall(str(name))
        }
        workday = span.isin(list(made_up))
    off = public | ((span.dayofweek >= 5) & ~workday)
    run = np.cumsum(~off)  # days off in one run share a run id
    in_break = off & pd.Series(public).groupby(run).transform("any").to_numpy()
    last = pd.Series(np.where(in_break, np.arange(len(span)), np.nan)).ffill().to_numpy()
    after = np.minimum(np.arange(len(span)) - last, AFTER_HOLIDAY_CAP)
    frame = pd.DataFrame(
        {
            "weekday": span.dayofweek.astype(float),
            "day_of_month": span.day.astype(float),
            "holiday": in_break.astype(float),
            "day_off": off.astype(float),
            "days_after_holiday": np.where(np.isnan(after), AFTER_HOLIDAY_CAP, after),
        },
        index=span,
    )
    return frame.reindex(days)


class DemandFeaturizer(BaseEstimator):  # type: ignore[misc]
    """Fits zone statistics on a training window; turns (panel, queries) into a float matrix
    whose columns are ``spec.feature_names()``."""

    def __init__(self, spec: DemandFeatureSpec | None = None) -> None:
        self.spec = spec

    def fit(self, table: pd.DataFrame, y: object = None) -> DemandFeaturizer:
        """Zone codes, mean volume per period, and profile (hour of day or weekday, relative to
        the zone's mean), a small zone's profile shrunk towards the city's."""
        spec = self.spec or DemandFeatureSpec()
        panel = DemandPanel.from_table(table, spec.freq)
        pos = self._position(panel, np.arange(panel.n_periods))
        v = np.nan_to_num(panel.values)
        city, share = shrunk_profiles(v, pos, spec.season, np.zeros(spec.season))
        self.zones_ = panel.zones
        self.zone_mean_ = nanmean_rows(panel.values)
        self.city_profile_ = city * spec.season
        self.zone_profile_ = share * spec.season
        self.spec_ = spec
        if spec.day_classes:
            self._fit_day_classes(panel, spec, v, pos)
        self.window_ = (str(panel.start), str(panel.ts_of([panel.n_periods - 1])[0]))
        self.feature_set_ = FEATURE_SET
        return self

    def _fit_day_classes(
        self, panel: DemandPanel, spec: DemandFeatureSpec, v: FloatArray, pos: IntArray
    ) -> None:
        """Each zone's mean on each class of day relative to its usual days (``class_ratio_``,
        Z x 4: working day, weekend day off, holiday break, working day after a break) and its
        hour shape on working days and on days off (``daytype_profile_``, Z x 2 x 24, see
        ``set_shapes``), the ratios shrunk towards the city's by ``PROFILE_PRIOR``
        pseudo-parcels. "Usual" days are the
        working and weekend days (classes 0 and 1), what the level windows average. The
        seasonal means read the last weeks' same hours, which on a holiday on a weekday are a
        working day's, and the level windows leave the breaks out: a zone's own drop on its
        days off, and its backlog after a break, are what they cannot tell."""
        cls = day_class(panel, np.arange(panel.n_periods), spec.holidays_country)
        known = np.isfinite(panel.values)
        sums = np.stack([v[:, cls == c].sum(axis=1) for c in range(N_DAY_CLASSES)], axis=1)
        counts = np.stack([known[:, cls == c].sum(axis=1) for c in range(N_DAY_CLASSES)], axis=1)
        usual = sums[:, :2].sum(axis=1) / np.maximum(counts[:, :2].sum(axis=1), 1)
        # the city's ratios from its total per period, so that a fit on a partition of the
        # zones plus the rest of the city (``training.dask_demand``) finds the same ones
        total = city_total(panel.values)[0]
        means = np.array([nanmean_rows(total[None, cls == c])[0] for c in range(N_DAY_CLASSES)])
        with np.errstate(invalid="ignore", divide="ignore"):
            city = means / nanmean_rows(total[None, cls < 2])[0]
        # A class the window does not hold (a first holiday, a table of a few weeks) takes its
        # nearest one's ratio: a break is days off, the days after it are working days. A NaN
        # ratio would floor the boosters' anchor and forecast a whole break at zero.
        for c, like in ((0, None), (1, 0), (2, 1), (3, 0)):
            if not np.isfinite(city[c]):
                city[c] = 1.0 if like is None else city[like]
        self.city_class_ratio_ = city
        self.class_ratio_ = (sums + PROFILE_PRIOR * city) / (
            counts * usual[:, None] + PROFILE_PRIOR
        )
        off = is_day_off(cls)
        self.daytype_counts_ = np.stack(
            [position_sums(v[:, sel], pos[sel], spec.season) for sel in (~off, off)], axis=1
        )
        self.set_shapes()

    def set_shapes(self) -> None:
        """``daytype_profile_`` (Z x 2 x season, each row summing to season) from the zones'
        volume by day type and position (``daytype_counts_``); with ``spec.shape_rank`` also
        ``zone_profile_``, the hour shape over every day, from the same low-rank fit. Apart
        from ``fit`` because a low-rank shape reads every zone: a fit on zone partitions sets
        them once the partitions are put together."""
        spec: DemandFeatureSpec = self.spec_
        # a day type with no volume at all takes the city's shape over every day
        every_day = self.city_profile_ / spec.season
        counts = self.daytype_counts_
        if spec.shape_rank == 0:
            profiles = [shrunk_shares(counts[:, k], every_day)[1] * spec.season for k in (0, 1)]
            self.daytype_profile_ = np.stack(profiles, axis=1)
            return
        fit = low_rank_counts(counts, spec.shape_rank)
        self.daytype_profile_ = low_rank_shapes(counts, fit, every_day)
        # the every-day profile feeds the level_profile_* and zone_profile features: from
        # the zone's own shrunk shares the boosters trusted an in-sample fit of the training
        # rows' own noise (the profiles are fitted on the window those rows come from)
        total = fit.sum(axis=1)
        sums = total.sum(axis=1, keepdims=True)
        self.zone_profile_ = np.where(
            sums > 0, total / np.maximum(sums, 1e-300) * spec.season, self.zone_profile_
        )

    def _position(self, panel: DemandPanel, idx: IntArray) -> IntArray:
        ts = panel.ts_of(idx)
        return np.asarray(ts.hour if panel.freq == "h" else ts.dayofweek, dtype=np.int64)

    def _usual(self, panel: DemandPanel, spec: DemandFeatureSpec) -> FloatArray:
        """Volume for level features: holiday-break periods left out (unknown), so the
        windows after a break describe a usual day, not the break. Lags keep every period."""
        if not (spec.skip_holidays_in_levels and spec.holidays_country):
            return panel.values
        days = panel.ts_of(np.arange(panel.n_periods)).normalize()
        cal = calendar_table(days.unique(), spec.holidays_country)
        in_break = cal["holiday"].reindex(days).to_numpy() > 0
        return np.where(in_break[None, :], np.nan, panel.values)

    def transform(self, panel: DemandPanel, q: DemandQueries) -> npt.NDArray[np.float32]:
        check_is_fitted(self, "zone_mean_")
        spec: DemandFeatureSpec = self.spec_
        if panel.freq != spec.freq:
            raise ValueError(
                f"freq: the featurizer is for {spec.freq!r} data, the panel is {panel.freq!r}"
            )
        cols = self._columns(panel, q, spec)
        return np.column_stack([cols[n] for n in spec.feature_names()]).astype(np.float32)

    def _columns(
        self, panel: DemandPanel, q: DemandQueries, spec: DemandFeatureSpec
    ) -> dict[str, FloatArray]:
        z, o, t = q.zone, q.origin, q.target
        h = q.horizon
        usual = self._usual(panel, spec)
        win, tot = _Windows(usual), _Windows(city_total(usual))
        zero = np.zeros(len(z), dtype=np.int64)
        cols: dict[str, FloatArray] = {"horizon": h.astype(float)}
        origin_ts = panel.ts_of(o)
        if spec.freq == "h":
            cols["origin_hour"] = np.asarray(origin_ts.hour, dtype=float)
        for k in spec.lags:
            cols[f"lag_{k}"] = gather(panel.values, z, t - k, o)
        for st, w in spec.rolling:
            cols[f"roll_{st}_{w}"] = win.stat(z, o - w, o, st)
        for p, n in spec.seasonal:
            j0 = -(-h // p)
            vals = np.column_stack([gather(usual, z, t - p * (j0 + j), o) for j in range(n)])
            cols[f"seas_mean_{p}x{n}"] = nanmean_rows(vals)
        codes = self.zones_.get_indexer(panel.zones)[z]
        known = codes >= 0
        pos = self._position(panel, t)
        profile = np.where(
            known, self.zone_profile_[np.maximum(codes, 0), pos], self.city_profile_[pos]
        )
        for w in spec.level_profiles:
            cols[f"level_profile_{w}"] = win.stat(z, o - w, o, "mean") * profile
        at = np.minimum(o, panel.n_periods)
        for hl in spec.ewm:
            cols[f"ewm_mean_{hl}"] = ewm_levels(usual, hl)[z, at]
        target_ts = panel.ts_of(t)
        if spec.calendar or spec.day_classes:
            cal = calendar_table(target_ts, spec.holidays_country)
        if spec.calendar:
            for c in spec.calendar:
                cols[c] = (
                    np.asarray(target_ts.hour, dtype=float)
                    if c == "hour"
                    else cal[c].to_numpy(float)
                )
        if spec.zero_run:
            cap = ZERO_RUN_CAP_DAYS * PERIODS_PER_DAY[spec.freq]
            cols["zero_run"] = np.minimum(
                panel.zero_runs[z, np.minimum(o, panel.n_periods)], cap
            ).astype(float)
        if spec.day_classes:
            cls = day_class_of(cal)
            zc = np.maximum(codes, 0)
            ratio = np.where(known, self.class_ratio_[zc, cls], self.city_class_ratio_[cls])
            off = is_day_off(cls).astype(np.int64)
            shape = np.where(known, self.daytype_profile_[zc, off, pos], profile)
            cols["class_ratio"] = ratio
            cols["daytype_profile"] = shape
            w = max(spec.level_profiles, default=672)
            cols["class_level"] = win.stat(z, o - w, o, "mean") * ratio * shape
        if spec.zone:
            cols["zone"] = np.where(known, codes, np.nan).astype(float)
            cols["zone_mean"] = np.where(known, self.zone_mean_[np.maximum(codes, 0)], np.nan)
            cols["zone_profile"] = profile
        with np.errstate(invalid="ignore", divide="ignore"):
            for a, b in spec.total_ratios:
                cols[f"total_ratio_{a}_{b}"] = tot.stat(zero, o - a, o, "mean") / tot.stat(
                    zero, o - b, o, "mean"
                )
            if spec.observed_today:
                elapsed = np.asarray(origin_ts.hour, dtype=np.int64)
                ds = o - elapsed
                # today as observed (holiday or not) against the usual days' same hours
                raw, raw_tot = _Windows(panel.values), _Windows(city_total(panel.values))
                so_far = np.where(elapsed > 0, raw.stat(z, ds, o, "sum"), 0.0)
                t_so_far = np.where(elapsed > 0, raw_tot.stat(zero, ds, o, "sum"), 0.0)
                expected = _mean_over_days(win, z, ds, o, 7)
                t_expected = _mean_over_days(tot, zero, ds, o, 7)
                cols["today_so_far"] = so_far
                cols["today_expected"] = expected
                cols["today_ratio"] = np.where(
                    elapsed > 0, (so_far + 0.5) / (expected + 0.5), np.nan
                )
                cols["total_today_ratio"] = np.where(
                    elapsed > 0, (t_so_far + 0.5) / (t_expected + 0.5), np.nan
                )
        for c in spec.covariates:
            mat = panel.covariates.get(c)
            if mat is None:
                raise ValueError(f"covariate {c!r}: not a column of the demand table")
            ok = t < mat.shape[1]
            cols[f"cov_{c}"] = np.where(ok, mat[z, np.minimum(t, mat.shape[1] - 1)], np.nan)
        return cols


def day_class(panel: DemandPanel, idx: IntArray, country: str | None) -> IntArray:
    """``day_class_of`` the calendar of each period index."""
    days = panel.ts_of(idx).normalize()
    return day_class_of(calendar_table(days.unique(), country).reindex(days))


def day_class_of(cal: pd.DataFrame) -> IntArray:
    """Per ``calendar_table`` row: 0 a working day, 1 a day off outside a holiday break
    (weekends), 2 a day in a holiday break, 3 a working day just after one."""
    holiday = cal["holiday"].to_numpy() > 0
    off = cal["day_off"].to_numpy() > 0
    after = (cal["days_after_holiday"].to_numpy() <= REBOUND_DAYS) & ~off
    return np.select([holiday, off, after], [2, 1, 3], 0).astype(np.int64)


def is_day_off(cls: IntArray) -> npt.NDArray[np.bool_]:
    """Day classes with a day off's hour shape: weekends and holiday breaks."""
    return (cls == 1) | (cls == 2)


def position_sums(v: FloatArray, pos: IntArray, season: int) -> FloatArray:
    """Each zone's volume at each position (hour of day or weekday): Z x season."""
    return np.stack([v[:, pos == p].sum(axis=1) for p in range(season)], axis=1)


def shrunk_profiles(
    v: FloatArray, pos: IntArray, season: int, empty_city: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """The city's share of its volume at each position (``empty_city`` when it has none) and
    each zone's, shrunk towards the city's by ``PROFILE_PRIOR`` pseudo-parcels."""
    return shrunk_shares(position_sums(v, pos, season), empty_city)


def shrunk_shares(by_pos: FloatArray, empty_city: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``shrunk_profiles`` from the zones' volume by position (Z x season)."""
    total = by_pos.sum()
    city = by_pos.sum(axis=0) / total if total > 0 else empty_city
    share = (by_pos + PROFILE_PRIOR * city) / (by_pos.sum(axis=1, keepdims=True) + PROFILE_PRIOR)
    return city, share


def low_rank_shapes(counts: FloatArray, fit: FloatArray, empty_city: FloatArray) -> FloatArray:
    """Each zone's shape per day type (Z x T x P, each row summing to P) from its low-rank
    fitted counts ``fit`` (``low_rank_counts`` of ``counts``). A zone without volume, or a
    day type where a zone's fit is empty, takes the city's share for that day type
    (``empty_city`` where the city has none)."""
    p = counts.shape[2]
    city = counts.sum(axis=0)
    city_sum = city.sum(axis=1, keepdims=True)
    city_share = np.where(city_sum > 0, city / np.maximum(city_sum, 1e-300), empty_city[None, :])
    sums = fit.sum(axis=2, keepdims=True)
    return np.where(sums > 0, fit / np.maximum(sums, 1e-300) * p, city_share[None] * p)


def low_rank_counts(counts: FloatArray, rank: int) -> FloatArray:
    """The zones' counts (Z x T x P: day types x positions) as fitted by a rank-``rank``
    non-negative factorisation of the Z x T*P matrix under the Poisson likelihood (KL
    divergence): every zone a non-negative mix of ``rank`` city-wide patterns, each spanning
    all day types, so a zone's working-day counts also inform its day-off shape. Zones
    without volume stay zero.

    Why: a zone-hour holds a few parcels a day, and 48 shares per zone estimated from its own
    counts are mostly noise (on the hourly dev cities the shrunk per-zone shares forecast
    worse than one city shape for all zones); a zone of homes and one of offices differ by
    their mix."""
    from sklearn.decomposition import NMF  # only fitting needs it

    z, t, p = counts.shape
    flat = counts.reshape(z, t * p)
    out = np.zeros_like(flat)
    active = flat.sum(axis=1) > 0
    if active.sum() <= rank:  # a rank-k fit of k zones is their own counts
        out[active] = flat[active]
        return out.reshape(z, t, p)
    # deterministic (nndsvda start, no random restarts), so every engine fits the same shapes
    nmf = NMF(
        min(rank, t * p), beta_loss="kullback-leibler", solver="mu", init="nndsvda",
        max_iter=NMF_MAX_ITER, tol=1e-6, random_state=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        # a few hundred zones converge in well under NMF_MAX_ITER; an unconverged fit is
        # still a valid (slightly rougher) mix, not a reason to stop training
        warnings.simplefilter("ignore", ConvergenceWarning)
        out[active] = nmf.fit_transform(flat[active]) @ nmf.components_
    return out.reshape(z, t, p)


def ewm_levels(values: FloatArray, halflife: int) -> FloatArray:
    """(Z, n + 1): each zone's exponentially weighted mean of its known periods before each
    period index (column ``o`` reads only periods ``< o``); unknown periods (before the zone's
    first, holiday breaks left out of the levels) carry the previous state; NaN until the
    zone's first known period."""
    alpha = 1.0 - 0.5 ** (1.0 / halflife)
    out = np.full((values.shape[0], values.shape[1] + 1), np.nan)
    state = out[:, 0].copy()
    for j in range(values.shape[1]):
        x = values[:, j]
        known = np.isfinite(x)
        started = np.isfinite(state)
        state = np.where(
            known, np.where(started, state + alpha * (np.where(known, x, 0.0) - state), x), state
        )
        out[:, j + 1] = state
    return out


def city_total(values: FloatArray) -> FloatArray:
    """The sum over zones per period, shape (1, n); NaN where no zone is known."""
    known = np.isfinite(values).any(axis=0)
    return np.where(known, np.nansum(values, axis=0), np.nan)[None, :]


def _mean_over_days(win: _Windows, z: IntArray, a: IntArray, b: IntArray, days: int) -> FloatArray:
    """Mean over the last ``days`` days of the volume in the same clock hours [a, b) (hourly);
    0 for an empty range (a midnight origin has observed nothing yet)."""
    parts = np.column_stack(
        [win.stat(z, a - 24 * d, b - 24 * d, "sum") for d in range(1, days + 1)]
    )
    return np.where(b > a, nanmean_rows(parts), 0.0)


def nanmean_rows(mat: FloatArray) -> FloatArray:
    """Row means over the finite entries; NaN for a row with none (no warning)."""
    known = np.isfinite(mat)
    cnt = known.sum(axis=1)
    total = np.where(known, mat, 0.0).sum(axis=1)
    return np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
