"""The unordered mode's learned visit order: a per-stop ranker refined by a pairwise model.

In the unordered mode the courier chooses the order, and on LaDe that choice is most of the
error. Per-stop columns rank the stops only through the P50 they feed. Two models here see a
stop against the other stops of its query:

- a **ranker** (LightGBM, L2 on the visit position as a fraction of the query) reads each
  stop's columns, their deviations from the query's mean and their ranks within the query;
- a **pair model** ("i before j", binary) reads the difference of two stops' columns, the km
  between them, whether they share an area, and how often this courier reached one's area
  before the other's (``features.precedence``). It judges only the pairs that the ranker puts
  within ``window`` places of each other: the close calls. Far pairs keep the ranker's order.

Each stop's expected number of the query's other stops ahead of it then ranks the stops with
mean per-query Spearman 0.793 against the true order on LaDe dev; the pair model over every
pair (eta_v5) gave 0.778 and costs n(n-1) predictions a query instead of about 3n (the ranker
alone: 0.782; the P50 of eta_v4: 0.69; distance: 0.58).

Point in time like every profile: a query of day d is ranked by models trained on queries
of days before a cut at or before d. ``fit`` trains one pair of models per cut (every
``refresh_days`` from ``min_days`` after the first day, and one at the end of the window,
which serves every later day); days before the first cut get NaN. So the training rows'
ranks are out of sample, as a served request's are, and rows after t never change them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from features.eta_queries import QueryBatch, segment_rank
from features.geo import haversine_km
from features.precedence import PairPrecedence, group_pairs

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_BULK = 20_000  # targets: a training batch, predicted on every thread; fewer, a request's one


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


def _unit_keys(names: npt.NDArray[np.object_], times: FloatArray, seed: int) -> FloatArray:
    """A uniform number in [0, 1) per (name, time), from a seeded hash of both."""
    text = pd.Series(names.astype(str)) + "|" + pd.Series(times).astype(str)
    h = pd.util.hash_pandas_object(text, index=False, hash_key=f"{seed:016d}"[:16]).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def target_keys(b: QueryBatch, seed: int) -> FloatArray:
    """A uniform number per target from its stop id and query time: the training sample of
    a day never depends on other days' rows (so rows after t cannot move features at t)."""
    return _unit_keys(b.t_stop_id, b.q_time[b.t_query], seed)


class PairColumns(NamedTuple):
    """Which columns of the per-target matrix the two models read, by index."""

    keep: tuple[int, ...]  # the pair model: as they are for the first stop, besides differences
    context: tuple[int, ...]  # the ranker: also as deviations from the query's mean
    ranked: tuple[int, ...]  # the ranker: also as ranks within the query


def group_rank_frac(group: IntArray, value: FloatArray) -> FloatArray:
    """Rank of ``value`` within its group as a fraction in [0, 1] (ties share their mean
    rank; NaN stays NaN and is not counted). One sort per call."""
    out = np.full(len(value), np.nan)
    ok = np.flatnonzero(np.isfinite(value))
    if not len(ok):
        return out
    g, x = group[ok], value[ok]
    order = np.lexsort((x, g))
    gs, xs = g[order], x[order]
    pos = np.arange(len(order))
    first = np.ones(1, dtype=bool)  # np.r_ costs more than the rest on a request's few rows
    new_group = np.concatenate((first, gs[1:] != gs[:-1]))
    new_run = new_group | np.concatenate((first, xs[1:] != xs[:-1]))
    group_id = np.cumsum(new_group) - 1
    group_start = pos[new_group][group_id]
    group_size = np.bincount(group_id)[group_id]
    run_id = np.cumsum(new_run) - 1
    run_first = pos[new_run]
    run_last = np.append(run_first[1:], len(order)) - 1
    mean_rank = (run_first[run_id] + run_last[run_id]) / 2.0 - group_start
    out[ok[order]] = mean_rank / np.maximum(group_size - 1, 1)
    return out


def query_context(
    group: IntArray, X: npt.NDArray[np.float32], columns: PairColumns
) -> npt.NDArray[np.float32]:
    """The ranker's rows: X, the ``context`` columns minus their query's mean (over known
    values) and the ``ranked`` columns' ranks within the query."""
    n_groups = int(group.max()) + 1 if len(group) else 0
    parts = [X]
    if columns.context:
        C = X[:, list(columns.context)].astype(np.float64)
        known = np.isfinite(C)
        Z = np.where(known, C, 0.0)
        mean = np.column_stack(
            [
                np.bincount(group, Z[:, c], n_groups)
                / np.maximum(np.bincount(group, known[:, c], n_groups), 1)
                for c in range(C.shape[1])
            ]
        )
        parts.append((C - mean[group]).astype(np.float32))
    if columns.ranked:
        ranks = [group_rank_frac(group, X[:, c].astype(np.float64)) for c in columns.ranked]
        parts.append(np.column_stack(ranks).astype(np.float32))
    return np.hstack(parts)


def window_pairs(group: IntArray, score: FloatArray, window: int) -> tuple[IntArray, IntArray]:
    """Pairs (i, j) of one group with j among the ``window`` targets after i in ``score``
    order (i ranked ahead of j)."""
    order = np.lexsort((score, group))
    firsts, seconds = [], []
    for offset in range(1, window + 1):
        i, j = order[:-offset], order[offset:]
        same = group[i] == group[j]
        firsts.append(i[same])
        seconds.append(j[same])
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return np.concatenate(firsts), np.concatenate(seconds)


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
    """As-of visit-order models; ``ahead`` gives each target's expected number of the
    query's other targets visited before it."""

    def __init__(
        self,
        refresh_days: int = 21,
        min_days: int = 21,
        window: int = 3,
        max_pairs: int = 100_000,
        max_targets: int = 30,
        max_rank_rows: int = 100_000,
        max_day_queries: int = 1000,
        # 60 pair rounds ranked as well as 100 on LaDe dev (Spearman 0.7941 vs 0.7942; unordered
        # MAE, LightGBM seeds 7 / 8, 28.06 / 28.11 vs 28.08 / 28.06 min) at 0.6x the predictions
        rounds: int = 60,
        rank_rounds: int = 150,
        learning_rate: float = 0.15,
        num_leaves: int = 63,
        min_child_samples: int = 200,
        seed: int = 7,
        num_threads: int = 1,
    ) -> None:
        self.refresh_days = refresh_days
        self.min_days = min_days
        self.window = window  # the pair model judges stops this close in the ranker's order
        self.max_pairs = max_pairs
        self.max_targets = max_targets
        self.max_rank_rows = max_rank_rows
        self.max_day_queries = max_day_queries
        self.rounds = rounds
        self.rank_rounds = rank_rounds
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.seed = seed
        self.num_threads = num_threads  # for training and for batches past _BULK targets

    def _params(self, objective: str) -> dict[str, Any]:
        return {
            "objective": objective,
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

    def sample_queries(self, b: QueryBatch) -> npt.NDArray[np.bool_]:
        """The history queries to learn from: at most ``max_day_queries`` a day, those of
        smallest key (a day's sample never depends on other days' queries). Both models draw
        far fewer rows than a busy city's history holds; this bounds the columns built for
        them."""
        key = _unit_keys(b.q_courier, b.q_time, self.seed)
        rank = segment_rank(b.q_route_day.astype(np.int64), key)
        return rank < self.max_day_queries

    def fit(
        self,
        b: QueryBatch,
        X: npt.NDArray[np.float32],
        precedence: PairPrecedence,
        columns: PairColumns,
        end_day: int,
    ) -> PairOrder:
        """Train on history queries ``b`` (visit order in ``t_seq``) with their per-target
        features ``X``; ``end_day`` is the first day after the training window."""
        u = target_keys(b, self.seed)
        self.columns_ = PairColumns(*(tuple(c) for c in columns))
        day = b.q_route_day[b.t_query]
        first = int(day.min()) if len(day) else end_day
        cuts = [*range(first + self.min_days, end_day, self.refresh_days), end_day]
        size = np.bincount(b.t_query, minlength=b.n_queries)[b.t_query]
        position = b.t_seq / np.maximum(size - 1.0, 1.0)  # the ranker's label: 0 first, 1 last
        context = query_context(b.t_query, X, self.columns_)
        self.cuts_: list[int] = []
        self.rankers_: list[lgb.Booster] = []
        self.models_: list[lgb.Booster] = []
        all_i, all_j = query_pairs(b.t_query, u, self.max_targets)
        for cut in cuts:
            inside = day[all_i] < cut
            i, j = all_i[inside], all_j[inside]
            if len(i) < 1000:  # too little history for this cut
                continue
            # the pairs of smallest key: a stable sample, in key order, so the models do not
            # depend on the order of the history's queries (the Dask engine gathers them by
            # partition)
            pick = np.argsort(np.mod(u[i] * 7.31 + u[j] * 3.17, 1.0), kind="stable")
            i, j = i[pick[: self.max_pairs]], j[pick[: self.max_pairs]]
            F = pair_matrix(b, X, i, j, precedence, self.columns_.keep)
            y = (b.t_seq[i] < b.t_seq[j]).astype(np.float32)
            rows = np.flatnonzero(day < cut)  # the targets of smallest key, in key order
            rows = rows[np.argsort(u[rows], kind="stable")[: self.max_rank_rows]]
            self.cuts_.append(cut)
            ranker_data = lgb.Dataset(context[rows], position[rows], free_raw_data=True)
            self.rankers_.append(lgb.train(self._params("l2"), ranker_data, self.rank_rounds))
            data = lgb.Dataset(F, y, free_raw_data=True)
            self.models_.append(lgb.train(self._params("binary"), data, self.rounds))
        return self

    def serving_boosters(self) -> dict[str, lgb.Booster]:
        """The models that rank every day after the training window (the last cut's): the
        ones a service runs, and compiles (``doorstep.fast_trees``)."""
        check_is_fitted(self, "cuts_")
        if not self.models_:
            return {}
        return {"ranker": self.rankers_[-1], "pair": self.models_[-1]}

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state.pop("fast_", None)  # compiled copies belong to one machine: never pickled
        return state

    def _predict(self, kind: str, k: int, X: npt.NDArray[np.float32], threads: int) -> FloatArray:
        """Model ``k``'s ranker or pair predictions; the compiled copy (``fast_``, attached
        by serving) for the last cut's models when there is one."""
        fast = self.__dict__.get("fast_")
        if fast and kind in fast and k == len(self.models_) - 1:
            return np.asarray(fast[kind].predict(X))
        booster = self.rankers_[k] if kind == "ranker" else self.models_[k]
        return np.asarray(booster.predict(X, num_threads=threads))

    def ahead(
        self, b: QueryBatch, X: npt.NDArray[np.float32], precedence: PairPrecedence
    ) -> FloatArray:
        """Per target, the expected number of its query's other targets visited before it;
        NaN for a query day before the first model's cut (or with no model at all).

        The ranker's order counts every stop it puts ahead as ahead; for the pairs within
        ``window`` places of each other, the pair model's probability replaces that count."""
        check_is_fitted(self, "cuts_")
        out = np.full(b.n_targets, np.nan)
        if not self.models_ or b.n_targets == 0:
            return out
        which = np.searchsorted(np.asarray(self.cuts_), b.q_route_day, side="right") - 1
        target_model = which[b.t_query]
        context = query_context(b.t_query, X, self.columns_)
        for k in np.unique(target_model[target_model >= 0]):
            rows = np.flatnonzero(target_model == k)
            group = b.t_query[rows]
            threads = self.num_threads if len(rows) > _BULK else 1  # a request: one thread
            score = self._predict("ranker", int(k), context[rows], threads)
            ahead = segment_rank(group, score).astype(np.float64)
            i, j = window_pairs(group, score, self.window)  # i ranked ahead of j
            if len(i):
                F = pair_matrix(b, X, rows[i], rows[j], precedence, self.columns_.keep)
                p_i_first = self._predict("pair", int(k), F, threads)
                ahead += np.bincount(j, p_i_first - 1.0, len(rows))
                ahead += np.bincount(i, 1.0 - p_i_first, len(rows))
            out[rows] = ahead
        return out
