"""Point-in-time profiles: per-key statistics that, at day d, only know days before d.

A profile (courier pace, a courier's habits per building, zone speed by hour of week) is
fitted on the training window and looked up *as of* a day: training rows see only the days
before their own (no row ever sees its own label), serving sees everything it was fitted on.
That is the same point-in-time join a feature store does, and it makes the leakage test hold
by construction: rows after time t cannot change a feature at t.

Sparse keys are shrunk toward the pooled (all-keys) statistic as of the same day, with a
prior weight of ``prior`` events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

KEY = "key"
DAY = "day"
COUNT = "n"
_DAY_SPAN = 1 << 24  # composite (key code, day) sort key; days since 1970 fit far below this


@dataclass(frozen=True)
class ProfileLookup:
    """Per row: events seen for its key before its day, and shrunk sums of each statistic."""

    n: FloatArray
    sums: dict[str, FloatArray]
    weight: FloatArray  # n + prior: divide a shrunk sum by this for a mean

    def mean(self, stat: str) -> FloatArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.sums[stat] / self.weight

    def ratio(self, numerator: str, denominator: str) -> FloatArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            out = self.sums[numerator] / self.sums[denominator]
        return np.where(np.isfinite(out), out, np.nan)


_FEW_KEYS = 2048
_CACHES = ("_code_of", "_pooled_of")  # built lazily by lookups, dropped when pickled


class PointInTimeProfile(BaseEstimator):  # type: ignore[misc]
    """Cumulative per-(key, day) sums with as-of lookups strictly before a day.

    ``fit`` takes one row per event or per (key, day) with columns ``key``, ``day`` (int
    local day number), optionally ``n`` (events in the row, default 1) and the statistics.
    """

    def __init__(self, stats: tuple[str, ...] = (), prior: float = 5.0) -> None:
        self.stats = stats
        self.prior = prior

    def fit(self, events: pd.DataFrame, y: object = None) -> PointInTimeProfile:
        return self.fit_daily(self.daily_sums(events))

    def daily_sums(self, events: pd.DataFrame) -> pd.DataFrame:
        """Per (key, day) sums of the events: the map step. Sums of partial sums are sums, so
        each partition of a distributed table reduces its own events and ``fit_daily`` adds
        the partials up (the group-by's combine step)."""
        stats = list(self.stats)
        missing = [c for c in (KEY, DAY, *stats) if c not in events.columns]
        if missing:
            raise ValueError(f"profile events lack column(s): {', '.join(missing)}")
        frame = events[[KEY, DAY, *stats]].copy()
        frame[KEY] = frame[KEY].astype(str)
        frame[COUNT] = events[COUNT] if COUNT in events.columns else 1.0
        frame[stats] = frame[stats].fillna(0.0)
        return frame.groupby([KEY, DAY], sort=False)[[COUNT, *stats]].sum().reset_index()

    def fit_daily(self, partials: pd.DataFrame) -> PointInTimeProfile:
        """Fit from ``daily_sums`` outputs (one, or several concatenated)."""
        stats = list(self.stats)
        daily = partials.groupby([KEY, DAY], sort=True)[[COUNT, *stats]].sum()
        keys = daily.index.get_level_values(KEY).astype(str)
        self.keys_ = pd.Index(pd.unique(np.asarray(keys)))
        for cache in _CACHES:  # the lookup caches of an earlier fit
            self.__dict__.pop(cache, None)
        codes = self.keys_.get_indexer(keys).astype(np.int64)
        days = daily.index.get_level_values(DAY).to_numpy(dtype=np.int64)
        values = daily.to_numpy(dtype=np.float64)
        order = np.lexsort((days, codes))
        codes, days, values = codes[order], days[order], values[order]
        # per-key running sums (not a global cumsum minus an offset: that would let float
        # rounding of other keys' later days leak into a key's earlier values)
        cum = pd.DataFrame(values).groupby(codes, sort=False).cumsum().to_numpy()
        self.composite_ = codes * _DAY_SPAN + days
        self.cum_ = cum
        pooled = daily.groupby(level=DAY, sort=True).sum()
        self.pooled_days_ = pooled.index.to_numpy(dtype=np.int64)
        self.pooled_cum_ = np.cumsum(pooled.to_numpy(dtype=np.float64), axis=0)
        self.fitted_days_ = (int(self.pooled_days_.min()), int(self.pooled_days_.max()))
        return self

    def lookup(self, keys: npt.ArrayLike, days: npt.ArrayLike) -> ProfileLookup:
        """Statistics as of the start of each row's day (events on that day are excluded)."""
        if "cum_" not in self.__dict__:  # sklearn's check_is_fitted costs more than a lookup
            check_is_fitted(self, "cum_")
        keys = np.asarray(keys, dtype=object)
        days = np.asarray(days, dtype=np.int64)
        codes = self._codes(keys)
        pos = np.searchsorted(self.composite_, codes * _DAY_SPAN + days, side="left") - 1
        hit = (codes >= 0) & (pos >= 0)
        hit[hit] &= self.composite_[pos[hit]] // _DAY_SPAN == codes[hit]
        own = np.zeros((len(keys), self.cum_.shape[1]))
        own[hit] = self.cum_[pos[hit]]
        n = own[:, 0]
        weight = n + self.prior
        shrunk = own[:, 1:] + self.prior * self._pooled_mean(days)[:, 1:]
        sums = {stat: shrunk[:, i] for i, stat in enumerate(self.stats)}
        return ProfileLookup(n=n, sums=sums, weight=weight)

    def _pooled_mean(self, days: IntArray) -> FloatArray:
        """Per row, the pooled means as of its day. A service request asks about one day: its
        row is computed once per day and kept (the same numbers, broadcast)."""
        if len(days) and len(days) <= _FEW_KEYS and days.min() == days.max():
            cache = self.__dict__.setdefault("_pooled_of", {})
            row = cache.get(int(days[0]))
            if row is None:
                if len(cache) > 1024:
                    cache.clear()
                row = cache[int(days[0])] = self._pooled_rows(days[:1])
            return np.broadcast_to(row, (len(days), row.shape[1]))
        return self._pooled_rows(days)

    def _pooled_rows(self, days: IntArray) -> FloatArray:
        gpos = np.searchsorted(self.pooled_days_, days, side="left") - 1
        pooled = np.where((gpos >= 0)[:, None], self.pooled_cum_[np.maximum(gpos, 0)], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(pooled / pooled[:, :1])

    def _codes(self, keys: npt.NDArray[np.object_]) -> npt.NDArray[np.int64]:
        """Row codes of ``keys`` (-1: unknown). A service request has a few dozen keys: a dict
        answers them in microseconds, where building a pandas index costs a millisecond."""
        if len(keys) > _FEW_KEYS:
            return self.keys_.get_indexer(keys.astype(str)).astype(np.int64)
        mapping = self.__dict__.get("_code_of")
        if mapping is None:
            mapping = {str(k): i for i, k in enumerate(self.keys_)}
            self.__dict__["_code_of"] = mapping
        return np.fromiter(
            (mapping.get(k if k.__class__ is str else str(k), -1) for k in keys.tolist()),
            np.int64,
            len(keys),
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        for cache in _CACHES:  # rebuilt on first use; not part of the fitted state
            state.pop(cache, None)
        return state

    def as_of_end(self) -> int:
        """A day after every fitted day: lookups there see the whole training window."""
        check_is_fitted(self, "cum_")
        return self.fitted_days_[1] + 1


def local_day(ts: pd.Series) -> IntArray:
    """Local calendar day number (days since 1970-01-01 in the timestamps' own zone)."""
    naive = ts.dt.tz_localize(None) if isinstance(ts.dtype, pd.DatetimeTZDtype) else ts
    return (naive.dt.floor("D") - pd.Timestamp("1970-01-01")).dt.days.to_numpy(dtype=np.int64)


def local_clock_min(ts: pd.Series) -> FloatArray:
    """Local minutes since midnight."""
    naive = ts.dt.tz_localize(None) if isinstance(ts.dtype, pd.DatetimeTZDtype) else ts
    return (naive.dt.hour * 60 + naive.dt.minute + naive.dt.second / 60).to_numpy(dtype=np.float64)
