"""A courier's habitual order between areas: how often he reached area a before area b.

For the unordered mode the stops' order is what the courier chooses, and on LaDe that choice is
most of the error. Couriers tend to work their areas in the same order day after day, whatever
else is on the day's list, so the counts are kept per courier and per pair of areas (first
visits on one route): unlike a mean position in the route, they compare an area only with the
areas actually on today's list.

Point-in-time like every profile (``features.profiles``): a query on day d sees routes of days
before d only. Pairs are stored once, smaller area id first, with integer codes, because a
query's targets give k x (k - 1) pairs and the training matrix has tens of millions of them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from features import schema as s
from features.profiles import local_day

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_DAY_SPAN = 1 << 24  # composite (pair code, day) sort key, as in features.profiles
_FEW = 2048  # a service request: dict look-ups beat a pandas index below this many values


def route_pairs(d: pd.DataFrame, day: IntArray) -> pd.DataFrame:
    """Per (courier, a, b, day) with a < b: routes that visited both areas (``n``) and those
    that reached a first (``before``). ``d`` is sorted by route and visit order; ``day`` is
    each row's route day. The map step: partitions of whole routes add up."""
    aoi = d[s.AOI_ID].astype("string").fillna("").to_numpy(dtype=object)
    first = pd.DataFrame(
        {
            "route": d[s.ROUTE_ID].to_numpy(),
            "courier": d[s.COURIER_ID].astype(str).to_numpy(dtype=object),
            "aoi": aoi,
            "day": day,
            "pos": np.arange(len(d)),
        }
    )
    first = first[first["aoi"] != ""].drop_duplicates(["route", "aoi"])  # first visits
    both = first.merge(first[["route", "aoi", "pos"]], on="route", suffixes=("", "_b"))
    both = both[both["aoi"] < both["aoi_b"]]
    pairs = pd.DataFrame(
        {
            "courier": both["courier"].to_numpy(),
            "a": both["aoi"].to_numpy(),
            "b": both["aoi_b"].to_numpy(),
            "day": both["day"].to_numpy(dtype=np.int64),
            "n": 1.0,
            "before": (both["pos"] < both["pos_b"]).to_numpy(dtype=float),
        }
    )
    return pairs.groupby(["courier", "a", "b", "day"], sort=False).sum().reset_index()


def group_pairs(group: IntArray) -> tuple[IntArray, IntArray]:
    """Every ordered pair (i, j), i != j, of positions within each run of a sorted ``group``."""
    if len(group) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    size = np.diff(np.r_[starts, len(group)])
    k = np.repeat(size, size)
    i = np.repeat(np.arange(len(group)), k)
    j = np.repeat(np.repeat(starts, size), k) + (np.arange(len(i)) - np.repeat(np.cumsum(k) - k, k))
    other = i != j
    return i[other], j[other]


class PairPrecedence(BaseEstimator):  # type: ignore[misc]
    """As-of counts of a courier reaching one area before another, shrunk toward 1/2."""

    def __init__(self, prior: float = 1.0) -> None:
        self.prior = prior

    def fit(self, visits: pd.DataFrame, y: object = None) -> PairPrecedence:
        """Fit on deliveries sorted by route and visit order."""
        return self.fit_daily(route_pairs(visits, local_day(visits[s.DISPATCH_TIME])))

    def fit_daily(self, partials: pd.DataFrame) -> PairPrecedence:
        """Fit from ``route_pairs`` outputs (one, or several concatenated)."""
        daily = partials.groupby(["courier", "a", "b", "day"], sort=False)[["n", "before"]].sum()
        daily = daily.reset_index()
        self.__dict__.pop("_code_of", None)  # the look-up cache of an earlier fit
        self.couriers_ = pd.Index(pd.unique(daily["courier"].astype(str).to_numpy()))
        self.areas_ = pd.Index(
            pd.unique(np.concatenate([daily["a"].to_numpy(), daily["b"].to_numpy()]).astype(str))
        )
        n_areas = max(len(self.areas_), 1)
        if len(self.couriers_) * n_areas * n_areas >= 2**62:
            raise ValueError(
                f"aoi_id: {n_areas} areas x {len(self.couriers_)} couriers are too many to code"
                " area pairs in 64 bits"
            )
        key = self._pair_key(
            self.couriers_.get_indexer(pd.Index(daily["courier"].astype(str))),
            self.areas_.get_indexer(pd.Index(daily["a"].astype(str))),
            self.areas_.get_indexer(pd.Index(daily["b"].astype(str))),
        )
        self.pairs_ = np.unique(key)
        code = np.searchsorted(self.pairs_, key)
        days = daily["day"].to_numpy(dtype=np.int64)
        order = np.lexsort((days, code))
        values = daily[["n", "before"]].to_numpy(dtype=np.float64)[order]
        code = code[order]
        self.composite_ = code * _DAY_SPAN + days[order]
        self.cum_ = pd.DataFrame(values).groupby(code, sort=False).cumsum().to_numpy()
        return self

    def _pair_key(self, courier: IntArray, a: IntArray, b: IntArray) -> IntArray:
        n_areas = max(len(self.areas_), 1)
        return (courier.astype(np.int64) * n_areas + a) * n_areas + b

    def area_codes(self, areas: npt.NDArray[np.object_]) -> IntArray:
        """Codes of area ids (-1: unknown or empty)."""
        return self._codes("areas_", areas)

    def courier_codes(self, couriers: npt.NDArray[np.object_]) -> IntArray:
        return self._codes("couriers_", couriers)

    def _codes(self, vocab: str, values: npt.NDArray[np.object_]) -> IntArray:
        """A service request has a few dozen values: a dict (built once, never pickled)
        answers them in microseconds, where a pandas index costs a fraction of a millisecond."""
        if "cum_" not in self.__dict__:
            check_is_fitted(self, "cum_")
        index: pd.Index = getattr(self, vocab)
        if len(values) > _FEW:
            return np.asarray(index.get_indexer(pd.Index(values.astype(str))), dtype=np.int64)
        cache = self.__dict__.setdefault("_code_of", {})
        mapping = cache.get(vocab)
        if mapping is None:
            mapping = cache[vocab] = {str(k): i for i, k in enumerate(index)}
        return np.fromiter(
            (mapping.get(str(v), -1) for v in values.tolist()), np.int64, len(values)
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_code_of", None)  # rebuilt on first use; not part of the fitted state
        return state

    def p_before(
        self, courier: IntArray, a: IntArray, b: IntArray, day: IntArray
    ) -> tuple[FloatArray, FloatArray]:
        """P(area a reached before area b) per row, as of the start of ``day``, and the routes
        that showed the pair (0 where the courier or either area is unknown)."""
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        if len(self.pairs_) == 0:  # no route in the window visited two areas
            return np.full(len(a), 0.5), np.zeros(len(a))
        known = (courier >= 0) & (lo >= 0)
        key = self._pair_key(np.maximum(courier, 0), np.maximum(lo, 0), hi)
        code = np.searchsorted(self.pairs_, key)
        code = np.minimum(code, len(self.pairs_) - 1)
        known &= self.pairs_[code] == key
        pos = np.searchsorted(self.composite_, code * _DAY_SPAN + day, side="left") - 1
        known &= pos >= 0
        known[known] &= self.composite_[pos[known]] // _DAY_SPAN == code[known]
        n = np.where(known, self.cum_[np.maximum(pos, 0), 0], 0.0)
        lo_first = np.where(known, self.cum_[np.maximum(pos, 0), 1], 0.0)
        p_lo = (lo_first + 0.5 * self.prior) / (n + self.prior)
        return np.where(a == lo, p_lo, 1.0 - p_lo), n


class Precedence(NamedTuple):
    """Per target (NaN without a known area): the expected number of the query's other areas
    reached before this one's, how many other areas the query has, and the share of those
    pairs the courier has history for."""

    before: FloatArray
    others: FloatArray
    known: FloatArray


def precedence_rank(
    model: PairPrecedence,
    group: IntArray,
    area: IntArray,
    courier_q: IntArray,
    day_q: IntArray,
) -> Precedence:
    """The ``Precedence`` of each target among its query's distinct areas.

    ``group`` is each target's query; ``courier_q``/``day_q`` are per query. Targets of one
    area share their value; the pairs are those among the query's distinct areas.
    """
    out, others, known = (np.full(len(group), np.nan) for _ in range(3))
    ok = area >= 0
    if not ok.any():
        return Precedence(out, others, known)
    # distinct (query, area) as one sorted integer key
    span = int(area.max()) + 1
    target_key = group[ok].astype(np.int64) * span + area[ok]
    distinct = np.unique(target_key)
    g, a = distinct // span, distinct % span
    first_of = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    size = np.diff(np.r_[first_of, len(g)])
    k = np.repeat(size, size)  # per distinct row: its query's distinct areas
    i, j = group_pairs(g)
    p, n = model.p_before(courier_q[g[i]], a[j], a[i], day_q[g[i]])  # j's area first
    before = np.bincount(i, p, len(g))
    share = np.bincount(i, (n > 0).astype(float), len(g)) / np.maximum(k - 1, 1)
    row = np.searchsorted(distinct, target_key)
    out[ok], others[ok], known[ok] = before[row], (k - 1.0)[row], share[row]
    return Precedence(out, others, known)
