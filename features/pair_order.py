"""The unordered mode's learned visit order: a pairwise model of "stop i before stop j".

In the unordered mode the courier chooses the order, and on LaDe that choice is most of the
error. Per-stop columns rank the stops only through the P50 they feed; a model of pairs sees
what one stop has against another of the same query: the difference of their features, the
km between them, whether they share an area, and how often this courier reached one's area
before the other's (``features.precedence``). Each stop's expected number of the query's
other stops ahead of it ranks the stops with Spearman 0.78 against the true order on LaDe dev
(the P50 alone: 0.69; the area-pair counts: 0.42).

Point in time like every profile: a query of day d is ranked by a model trained on queries
of days before a cut at or before d. ``fit`` trains one model per cut (every
``refresh_days`` from ``min_days`` after the first day, and one at the end of the window,
which serves every later day); days before the first cut get NaN. So the training rows'
ranks are out of sample, as a served request's are, and rows after t never change them.
"""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from features.eta_queries import QueryBatch
from features.geo import haversine_km
from features.precedence import PairPrecedence, group_pairs

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def query_pairs(
    group: IntArray, key: FloatArray | None = None, max_targets: int = 0
) -> tuple[IntArray, IntArray]:
    """Every ordered pair (i, j), i != j, of targets of one query (``group`` sorted); with
    ``max_targets`` only the targets of smallest ``key`` (at most that many per query) take
    part."""
    keep = np.ones(len(group), dtype=bool)
    if max_targets and key is not None and len(group):
        order = np.lexsort((key, group))
        starts = np.r_[0, np.flatnonzero(np.diff(group[order])) + 1]
        first = np.repeat(starts, np.diff(np.r_[starts, len(group)]))
        rank = np.empty(len(group), dtype=np.int64)
        rank[order] = np.arange(len(group)) - first
        keep = rank < max_targets
    idx = np.flatnonzero(keep)
    i, j = group_pairs(group[idx])
    return idx[i], idx[j]


def target_keys(b: QueryBatch, seed: int) -> FloatArray:
    """A uniform number per target from its stop id and query time: the training sample of
    a day never depends on other days' rows (so rows after t cannot move features at t)."""
    text = pd.Series(b.t_stop_id.astype(str)) + "|" + pd.Series(b.q_time[b.t_query]).astype(str)
    h = pd.util.hash_pandas_object(text, index=False, hash_key=f"{seed:016d}"[:16]).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def pair_matrix(
    b: QueryBatch,
    X: npt.NDArray[np.float32],
    i: IntArray,
    j: IntArray,
    precedence: PairPrecedence,
    keep_columns: tuple[int, ...],
) -> npt.NDArray[np.float32]:
    """Rows of pairs: X_i - X_j, some of X_i as they are, km from i to j, a shared area, and
    the courier's history of reaching i's area before j's (NaN unknown) with its route count."""
    q = b.t_query[i]
    ai, aj = precedence.area_codes(b.t_aoi[i]), precedence.area_codes(b.t_aoi[j])
    p, n = precedence.p_before(precedence.courier_codes(b.q_courier[q]), ai, aj, b.q_day[q])
    p = np.where((ai >= 0) & (aj >= 0) & (ai != aj), p, np.nan)
    km = haversine_km(b.t_lat[i], b.t_lng[i], b.t_lat[j], b.t_lng[j])
    same = (b.t_aoi[i] == b.t_aoi[j]) & (b.t_aoi[i] != "")
    extra = np.column_stack([km, same, p, n]).astype(np.float32)
    return np.hstack([X[i] - X[j], X[i][:, list(keep_columns)], extra])


class PairOrder(BaseEstimator):  # type: ignore[misc]
    """As-of pairwise order models; ``ahead`` gives each target's expected number of the
    query's other targets visited before it."""

    def __init__(
        self,
        refresh_days: int = 21,
        min_days: int = 21,
        max_pairs: int = 250_000,
        max_targets: int = 30,
        rounds: int = 100,
        learning_rate: float = 0.15,
        num_leaves: int = 63,
        min_child_samples: int = 200,
        seed: int = 7,
        num_threads: int = 1,
    ) -> None:
        self.refresh_days = refresh_days
        self.min_days = min_days
        self.max_pairs = max_pairs
        self.max_targets = max_targets
        self.rounds = rounds
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.seed = seed
        self.num_threads = num_threads  # for training; predictions run on one thread

    def _params(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "max_bin": 63,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "verbose": -1,
        }

    def fit(
        self,
        b: QueryBatch,
        X: npt.NDArray[np.float32],
        precedence: PairPrecedence,
        keep_columns: tuple[int, ...],
        end_day: int,
    ) -> PairOrder:
        """Train on history queries ``b`` (visit order in ``t_seq``) with their per-target
        features ``X``; ``end_day`` is the first day after the training window."""
        u = target_keys(b, self.seed)
        self.keep_columns_ = tuple(keep_columns)
        day = b.q_route_day[b.t_query]
        first = int(day.min()) if len(day) else end_day
        cuts = [*range(first + self.min_days, end_day, self.refresh_days), end_day]
        self.cuts_: list[int] = []
        self.models_: list[lgb.Booster] = []
        all_i, all_j = query_pairs(b.t_query, u, self.max_targets)
        for cut in cuts:
            inside = day[all_i] < cut
            i, j = all_i[inside], all_j[inside]
            if len(i) < 1000:  # too little history for this cut
                continue
            if len(i) > self.max_pairs:  # the pairs of smallest key: a stable sample
                score = np.mod(u[i] * 7.31 + u[j] * 3.17, 1.0)
                pick = np.sort(np.argpartition(score, self.max_pairs)[: self.max_pairs])
                i, j = i[pick], j[pick]
            F = pair_matrix(b, X, i, j, precedence, self.keep_columns_)
            y = (b.t_seq[i] < b.t_seq[j]).astype(np.float32)
            data = lgb.Dataset(F, y, free_raw_data=True)
            self.cuts_.append(cut)
            self.models_.append(lgb.train(self._params(), data, self.rounds))
        return self

    def ahead(
        self, b: QueryBatch, X: npt.NDArray[np.float32], precedence: PairPrecedence
    ) -> FloatArray:
        """Per target, the expected number of its query's other targets visited before it;
        NaN for a query day before the first model's cut (or with no model at all)."""
        check_is_fitted(self, "cuts_")
        out = np.full(b.n_targets, np.nan)
        if not self.models_ or b.n_targets == 0:
            return out
        which = np.searchsorted(np.asarray(self.cuts_), b.q_route_day, side="right") - 1
        i, j = query_pairs(b.t_query)
        out[which[b.t_query] >= 0] = 0.0
        pair_model = which[b.t_query[i]]
        for k in np.unique(pair_model[pair_model >= 0]):
            sel = pair_model == k
            F = pair_matrix(b, X, i[sel], j[sel], precedence, self.keep_columns_)
            p_i_first = self.models_[k].predict(F, num_threads=1)
            out += np.bincount(i[sel], 1.0 - p_i_first, b.n_targets)
        return out
