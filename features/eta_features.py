"""The ETA feature set ``eta_v6``: declared names, fitted profiles, one transform for both paths.

``EtaFeaturizer.fit`` learns point-in-time profiles from the training window's deliveries
(courier pace, a courier's habits per area, area habits, zone speed by hour of week);
``transform`` turns a ``QueryBatch`` (from history or from a request) into a float matrix whose
columns are ``feature_names(mode)``. Training and serving call the same ``transform``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from features import schema as s
from features.eta_queries import QueryBatch, queries_from_deliveries, segment_rank
from features.geo import haversine_km
from features.pair_order import PairColumns, PairOrder
from features.precedence import PairPrecedence, precedence_rank, route_pairs
from features.profiles import PointInTimeProfile, ProfileLookup, local_clock_min, local_day

FEATURE_SET = "eta_v6"
Mode = Literal["ordered", "unordered"]
MODES: tuple[Mode, ...] = ("ordered", "unordered")
FloatArray = npt.NDArray[np.float64]

COMMON_FEATURES: tuple[str, ...] = (
    "dist_km", "dist_depot_km", "n_remaining", "rank_dist", "rank_dist_frac",
    "clock_min", "weekday", "elapsed_min", "n_done", "km_done", "today_min_per_stop",
    "today_pace_ratio", "ready_min", "packages", "stop_type", "vehicle",
    "same_aoi_as_last", "n_same_aoi", "aoi_done",
    "courier_km_per_min", "courier_min_per_stop", "courier_days", "est_speed_min",
    "habit_clock_delta", "habit_rank_frac", "habit_n", "aoi_clock_delta", "aoi_rank_frac", "aoi_n",
    "zone_min_per_km", "zone_gap_min", "zone_service_min",
    "dist_centroid_km", "centroid_km", "pseudo_seq", "pseudo_seq_frac", "pseudo_path_km",
    "pseudo_est_min", "last_habit_delta", "habit_gap_min", "habit_rank_gap", "pseudo_rank_seq",
    "pseudo_rank_path_km", "nn_seq", "nn_seq_frac", "nn_path_km", "nn_est_min",
    "nn_switches", "nn_switch_est_min", "pseudo_switches", "courier_min_per_switch",
    "ready_rank_frac", "courier_end_delta", "stop_cost_min", "nn_cost_sum_min",
    "pseudo_cost_sum_min", "nn_leg_sum_min", "pseudo_leg_sum_min",
    "win_start_min", "win_end_min",
)  # fmt: skip
ORDERED_FEATURES: tuple[str, ...] = (
    "seq", "seq_frac", "path_km", "path_est_min", "seq_est_min", "planned_min",
    "seq_switches", "seq_switch_est_min", "seq_cost_sum_min", "seq_leg_sum_min", "seq_leg_today_min",
    "win_gap_min", "seq_win_wait_min", "seq_win_leg_min",
)  # fmt: skip
# The unordered mode's guess at the courier's own order (``features.precedence``): how many of
# the query's other areas he usually reaches before this one's, and the leg sums along the
# order that follows. On LaDe dev (LightGBM seeds 7 and 8) they took unordered MAE from 32.84 to
# 32.37 min; the synthetic couriers follow no habit, and there they cost 7.23 -> 7.44 min.
UNORDERED_FEATURES: tuple[str, ...] = (
    "prec_before", "prec_frac", "prec_known", "prec_seq", "prec_seq_frac", "prec_path_km",
    "prec_switches", "prec_leg_sum_min", "prec_leg_today_min",
)  # fmt: skip
# New in eta_v5, unordered mode: the learned visit order (``features.pair_order``), each stop's
# expected number of the query's other stops ahead of it, the order that follows and its legs.
# eta_v6: the same columns from a per-stop ranker refined by the pair model on close calls only
# (eta_v5 ran the pair model on every pair of a query): on the 1M-row speed city its own fit
# and transforms take ~60 s of training where eta_v5's took several hundred, and it ranks a
# little better (``docs/eta_model.md``).
PAIR_ORDER_FEATURES: tuple[str, ...] = (
    "pw_ahead", "pw_frac", "pw_seq", "pw_path_km", "pw_leg_sum_min", "pw_leg_today_min",
)  # fmt: skip
# what the pair model itself reads: every column before it; some also as they are, not only as
# differences (how many stops are left, how far the first of the pair is)
PAIR_BASE: tuple[str, ...] = (*COMMON_FEATURES, *UNORDERED_FEATURES)
PAIR_KEEP: tuple[str, ...] = ("n_remaining", "dist_km", "rank_dist_frac", "clock_min")
# what the visit-order ranker reads besides each column: the columns that tell a query's stops
# apart most (by gain on LaDe dev), as deviations from the query's mean and as ranks within
# the query. Without the ranks its Spearman fell 0.772 -> 0.720 (prototype); these 12 and 10
# of the 49 columns that vary within a query do as well as all 49 (0.793), at a third of the
# cost.
PAIR_CONTEXT: tuple[str, ...] = (
    "dist_km", "est_speed_min", "pseudo_rank_seq", "pseudo_cost_sum_min", "ready_min",
    "ready_rank_frac", "nn_switches", "dist_depot_km", "dist_centroid_km", "nn_switch_est_min",
    "stop_cost_min", "pseudo_leg_sum_min",
)  # fmt: skip
PAIR_RANKED: tuple[str, ...] = (
    "dist_km", "est_speed_min", "pseudo_rank_seq", "ready_min", "ready_rank_frac",
    "habit_rank_gap", "habit_rank_frac", "habit_gap_min", "nn_switches", "pseudo_switches",
)  # fmt: skip
CATEGORICAL: tuple[str, ...] = ("stop_type", "vehicle")
# Counts of past events are capped: uncapped, they grow with the calendar and let the trees
# tell periods apart (a proxy for the date) instead of learning how experience matters.
EXPERIENCE_CAP = 20.0


def feature_names(mode: Mode) -> list[str]:
    """The columns of the feature matrix for ``mode`` (pinned by tests)."""
    if mode == "ordered":
        return [*COMMON_FEATURES, *ORDERED_FEATURES]
    if mode == "unordered":
        return [*PAIR_BASE, *PAIR_ORDER_FEATURES]  # transform stacks them in this order
    raise ValueError(f"mode: must be 'ordered' or 'unordered', got {mode!r}")


@dataclass(frozen=True)
class FitPart:
    """What one partition of the training deliveries contributes to ``EtaFeaturizer.fit``."""

    daily: dict[str, pd.DataFrame]  # profile attribute -> per (key, day) sums
    stop_types: frozenset[str]
    vehicles: frozenset[str]
    tz: str
    first: Any  # earliest arrival (pd.Timestamp), None for an empty partition
    last: Any


class EtaFeaturizer(BaseEstimator):  # type: ignore[misc]
    """Fits the profiles of ``eta_v4`` on a training window; transforms query batches."""

    def __init__(
        self,
        prior: float = 5.0,
        h3_resolution: int = s.DEFAULT_H3_RESOLUTION,
        window_wait_min: float = 20.0,
        pair_order: PairOrder | None = None,
    ) -> None:
        self.prior = prior
        self.h3_resolution = h3_resolution
        # How early a courier will wait for a booked window to open (an operation's policy):
        # the ordered mode propagates those waits along the plan (``seq_win_wait_min``).
        self.window_wait_min = window_wait_min
        # the unordered mode's learned visit order; None leaves its columns empty (NaN)
        self.pair_order = pair_order

    def fit(
        self, deliveries: pd.DataFrame, y: object = None, *, queries: QueryBatch | None = None
    ) -> EtaFeaturizer:
        """``queries``: the training queries of these same deliveries, if the caller has them
        (the pair order trains on them; built here otherwise)."""
        self.fit_parts([self.partial(deliveries)])
        if self.pair_order is not None:
            self.fit_pair_order(
                queries if queries is not None else queries_from_deliveries(deliveries)
            )
        return self

    def fit_pair_order(self, history: QueryBatch) -> EtaFeaturizer:
        """Train the pairwise visit-order models on the history's queries (after the profiles:
        the pair model reads the other unordered columns, point in time)."""
        if self.pair_order is None:
            raise ValueError("pair_order: this featurizer was built without one")
        history = history.take_queries(self.pair_order.sample_queries(history))
        _, base = self._unordered_base(history)
        end_day = int(history.q_route_day.max()) + 1 if history.n_queries else 0
        columns = PairColumns(
            *(
                tuple(PAIR_BASE.index(n) for n in names)
                for names in (PAIR_KEEP, PAIR_CONTEXT, PAIR_RANKED)
            )
        )
        self.pair_order_ = clone(self.pair_order).fit(
            history, base, self.courier_pair_, columns, end_day
        )
        return self

    def _profiles(self) -> dict[str, PointInTimeProfile]:
        habit_stats = ("clock_min", "rank_frac", "gap_next", "n_gap")
        return {
            "courier_": PointInTimeProfile(
                ("path_km", "active_min", "legs", "switches", "end_clock"), self.prior
            ),
            "courier_aoi_": PointInTimeProfile(habit_stats, self.prior),
            "aoi_": PointInTimeProfile(habit_stats, self.prior),
            "zone_how_": PointInTimeProfile(
                ("leg_km", "leg_min", "service_min", "n_service"), self.prior
            ),
            "courier_leg_": PointInTimeProfile(LEG_STATS, self.prior),
        }

    def partial(self, deliveries: pd.DataFrame) -> FitPart:
        """The map step of ``fit`` on whole routes (a partition of a distributed table holds
        whole routes): per (key, day) sums for every profile, vocabularies and the window.
        ``fit_parts`` combines any number of them, so one code path fits on one machine or
        on a cluster."""
        visits = deliveries.sort_values(
            [s.ROUTE_ID, s.ARRIVAL_TIME, s.STOP_ID], kind="stable"
        ).reset_index(drop=True)  # visit order, sorted once for the profiles and the pairs
        routes, stops, legs, courier_legs = _profile_events(visits)
        events = {
            "courier_leg_": courier_legs,
            "courier_": routes,
            "courier_aoi_": stops.assign(key=stops["ca"]),
            "aoi_": stops.assign(key=stops["aoi"]),
            "zone_how_": legs,
        }
        arrival = deliveries[s.ARRIVAL_TIME]
        daily = {name: p.daily_sums(events[name]) for name, p in self._profiles().items()}
        daily[PAIRS] = route_pairs(visits, local_day(visits[s.DISPATCH_TIME]))
        return FitPart(
            daily=daily,
            stop_types=frozenset(deliveries[s.STOP_TYPE].dropna().astype(str).unique()),
            vehicles=frozenset(deliveries[s.VEHICLE_TYPE].dropna().astype(str).unique()),
            tz=str(arrival.dt.tz),
            first=arrival.min() if len(arrival) else None,
            last=arrival.max() if len(arrival) else None,
        )

    def fit_parts(self, parts: list[FitPart]) -> EtaFeaturizer:
        """The reduce step: add up the partial sums and fit every profile on them."""
        parts = [p for p in parts if p.first is not None]
        if not parts:
            raise ValueError("deliveries: nothing to fit the ETA features on")
        for name, profile in self._profiles().items():
            daily = pd.concat([p.daily[name] for p in parts], ignore_index=True)
            setattr(self, name, profile.fit_daily(daily))
        pairs = pd.concat([p.daily[PAIRS] for p in parts], ignore_index=True)
        self.courier_pair_ = PairPrecedence(PRECEDENCE_PRIOR).fit_daily(pairs)
        self.stop_types_ = pd.Index(sorted(set().union(*(p.stop_types for p in parts))))
        self.vehicles_ = pd.Index(sorted(set().union(*(p.vehicles for p in parts))))
        self.tz_ = parts[0].tz
        self.window_ = (str(min(p.first for p in parts)), str(max(p.last for p in parts)))
        self.feature_set_ = FEATURE_SET
        return self

    def known_couriers(self) -> frozenset[str]:
        """Couriers with a pace profile; any other courier gets the pooled (cold-start) one."""
        check_is_fitted(self, "courier_")
        return frozenset(str(k) for k in self.courier_.keys_)

    def known_zones(self) -> frozenset[str]:
        """Zones with travel and service profiles; any other zone gets the pooled one."""
        check_is_fitted(self, "zone_how_")
        return frozenset(str(k).rsplit("|", 1)[0] for k in self.zone_how_.keys_)

    def transform(self, batch: QueryBatch, mode: Mode) -> npt.NDArray[np.float32]:
        """The feature matrix (targets x ``feature_names(mode)``) of a query batch."""
        if "courier_" not in self.__dict__:  # raises NotFittedError; cheaper on the hot path
            check_is_fitted(self, "courier_")
        return self._matrix(batch, mode, self._common(batch))

    def transform_modes(
        self, batch: QueryBatch, modes: tuple[Mode, ...]
    ) -> dict[Mode, npt.NDArray[np.float32]]:
        """``transform`` for several modes, the columns they share built once (training builds
        both modes of the same queries; the shared columns are about half the cost)."""
        check_is_fitted(self, "courier_")
        common = self._common(batch)
        return {mode: self._matrix(batch, mode, dict(common)) for mode in modes}

    def _matrix(
        self, batch: QueryBatch, mode: Mode, cols: dict[str, FloatArray]
    ) -> npt.NDArray[np.float32]:
        """``mode``'s matrix from the shared columns ``cols`` (which it extends)."""
        if mode == "unordered":  # its pair order reads every column before its own
            cols.update(self._unordered(batch, cols))
            base = _as_matrix(cols, PAIR_BASE)
            pair_cols = _as_matrix(self._pair_order(batch, cols, base), PAIR_ORDER_FEATURES)
            return np.hstack([base, pair_cols])
        cols.update(self._ordered(batch, cols))
        return _as_matrix(cols, feature_names(mode))

    def _common(self, b: QueryBatch) -> dict[str, FloatArray]:
        q = b.t_query
        n_rem = np.bincount(q, minlength=b.n_queries).astype(np.float64)
        dist = haversine_km(b.q_lat[q], b.q_lng[q], b.t_lat, b.t_lng)
        rank = segment_rank(q, dist).astype(np.float64)
        day, clock = b.q_day[q], b.q_clock_min[q]
        courier = self.courier_.lookup(b.q_courier, b.q_day)
        km_per_min = courier.ratio("path_km", "active_min")
        min_per_stop = courier.ratio("active_min", "legs")
        with np.errstate(divide="ignore", invalid="ignore"):
            today_mps = np.where(b.q_n_done > 0, b.q_elapsed_min / b.q_n_done, np.nan)
            est_speed = dist / km_per_min[q]
        has_aoi = b.t_aoi != ""
        ca = self.courier_aoi_.lookup(b.q_courier[q] + "|" + b.t_aoi, day)
        aoi = self.aoi_.lookup(b.t_aoi, day)
        how = (b.q_weekday * 24 + (b.q_clock_min // 60).astype(np.int64))[q]
        zone = self.zone_how_.lookup(b.t_zone + "|" + how.astype(str), day)
        habit_clock = np.where(has_aoi & (ca.n > 0), ca.mean("clock_min"), aoi.mean("clock_min"))
        habit_rank = np.where(has_aoi & (ca.n > 0), ca.mean("rank_frac"), aoi.mean("rank_frac"))
        has_last = b.q_last_aoi != ""
        last_ca = self.courier_aoi_.lookup(b.q_courier + "|" + b.q_last_aoi, b.q_day)
        last_aoi = self.aoi_.lookup(b.q_last_aoi, b.q_day)
        last_clock = np.where(
            has_last & (last_ca.n > 0), last_ca.mean("clock_min"), last_aoi.mean("clock_min")
        )
        last_clock = np.where(has_last, last_clock, np.nan)
        last_rank = np.where(
            has_last & (last_ca.n > 0), last_ca.mean("rank_frac"), last_aoi.mean("rank_frac")
        )
        last_rank = np.where(has_last, last_rank, np.nan)
        pseudo_key = np.where(np.isfinite(habit_clock), habit_clock, clock + 10.0 * dist)
        rank_key = np.where(np.isfinite(habit_rank), habit_rank, 2.0 + dist)
        pseudo_r = segment_rank(q, rank_key)
        along_r = _sorted_along(q, pseudo_r)
        km_r = _leg_km(along_r, b)  # per leg, shared by the path and the leg-cost sums
        pseudo_r_path = _path_along(along_r, km_r)
        pseudo = segment_rank(q, pseudo_key)
        along_p = _sorted_along(q, pseudo)
        pseudo_path = _path_along(along_p, _leg_km(along_p, b))
        nn = nn_tour(q, b.q_lat, b.q_lng, b.t_lat, b.t_lng)
        along_nn = _sorted_along(q, nn)
        cost = np.where(
            has_aoi & (ca.n > 0), ca.ratio("gap_next", "n_gap"), aoi.ratio("gap_next", "n_gap")
        )
        cost = np.where(np.isfinite(cost), cost, courier.ratio("active_min", "legs")[q])
        last_cost = np.where(
            has_last & (last_ca.n > 0),
            last_ca.ratio("gap_next", "n_gap"),
            last_aoi.ratio("gap_next", "n_gap"),
        )
        last_cost = np.where(np.isfinite(last_cost), last_cost, 0.0)[q]
        km_nn = _leg_km(along_nn, b)
        nn_path = _path_along(along_nn, km_nn)
        min_per_switch = courier.ratio("active_min", "switches")
        areas = _Areas.of(b)
        legs = _LegCost.of(self.courier_leg_.lookup(b.q_courier, b.q_day), q)
        nn_sw = _switches_along(along_nn, areas)
        pseudo_sw = _switches_along(along_r, areas)
        cen_lat = np.bincount(q, b.t_lat, b.n_queries) / np.maximum(n_rem, 1)
        cen_lng = np.bincount(q, b.t_lng, b.n_queries) / np.maximum(n_rem, 1)
        same_aoi = _count_same(q, b.t_aoi) - 1.0
        return {
            "dist_km": dist,
            "win_start_min": b.t_window_start_min,
            "win_end_min": b.t_window_end_min,
            "dist_depot_km": haversine_km(b.q_depot_lat[q], b.q_depot_lng[q], b.t_lat, b.t_lng),
            "n_remaining": n_rem[q],
            "rank_dist": rank,
            "rank_dist_frac": rank / n_rem[q],
            "clock_min": clock,
            "weekday": b.q_weekday[q].astype(np.float64),
            "elapsed_min": b.q_elapsed_min[q],
            "n_done": b.q_n_done[q],
            "km_done": b.q_km_done[q],
            "today_min_per_stop": today_mps[q],
            "today_pace_ratio": (today_mps / min_per_stop)[q],
            "ready_min": b.t_ready_min,
            "packages": b.t_packages,
            "stop_type": _codes(self.stop_types_, b.t_stop_type),
            "vehicle": _codes(self.vehicles_, b.q_vehicle)[q],
            "same_aoi_as_last": np.where(
                has_aoi, (b.t_aoi == b.q_last_aoi[q]).astype(float), np.nan
            ),
            "n_same_aoi": np.where(has_aoi, same_aoi, np.nan),
            "aoi_done": b.t_aoi_done,
            "courier_km_per_min": km_per_min[q],
            "courier_min_per_stop": min_per_stop[q],
            "courier_days": np.minimum(courier.n, EXPERIENCE_CAP)[q],
            "est_speed_min": est_speed,
            "habit_clock_delta": np.where(has_aoi, ca.mean("clock_min") - clock, np.nan),
            "habit_rank_frac": np.where(has_aoi, ca.mean("rank_frac"), np.nan),
            "habit_n": np.where(has_aoi, np.minimum(ca.n, EXPERIENCE_CAP), np.nan),
            "aoi_clock_delta": np.where(has_aoi, aoi.mean("clock_min") - clock, np.nan),
            "aoi_rank_frac": np.where(has_aoi, aoi.mean("rank_frac"), np.nan),
            "aoi_n": np.where(has_aoi, np.minimum(aoi.n, EXPERIENCE_CAP), np.nan),
            "zone_min_per_km": zone.ratio("leg_min", "leg_km"),
            "zone_gap_min": zone.mean("leg_min"),
            "zone_service_min": zone.ratio("service_min", "n_service"),
            "dist_centroid_km": haversine_km(cen_lat[q], cen_lng[q], b.t_lat, b.t_lng),
            "centroid_km": haversine_km(b.q_lat, b.q_lng, cen_lat, cen_lng)[q],
            "pseudo_seq": pseudo.astype(np.float64),
            "pseudo_seq_frac": pseudo / n_rem[q],
            "pseudo_path_km": pseudo_path,
            "pseudo_est_min": pseudo_path / km_per_min[q] + pseudo * min_per_stop[q],
            "last_habit_delta": (b.q_clock_min - last_clock)[q],
            "habit_gap_min": np.where(has_aoi, habit_clock - last_clock[q], np.nan),
            "habit_rank_gap": np.where(has_aoi, habit_rank - last_rank[q], np.nan),
            "pseudo_rank_seq": pseudo_r.astype(np.float64),
            "pseudo_rank_path_km": pseudo_r_path,
            "nn_seq": nn.astype(np.float64),
            "nn_seq_frac": nn / n_rem[q],
            "nn_path_km": nn_path,
            "nn_est_min": nn_path / km_per_min[q] + nn * min_per_stop[q],
            "ready_rank_frac": segment_rank(q, -np.nan_to_num(b.t_ready_min)) / n_rem[q],
            "courier_end_delta": courier.mean("end_clock")[q] - clock,
            "stop_cost_min": cost,
            "nn_cost_sum_min": _cumsum_before(along_nn, cost) + last_cost,
            "pseudo_cost_sum_min": _cumsum_before(along_r, cost) + last_cost,
            "nn_leg_sum_min": _legs_along(along_nn, km_nn, areas, legs),
            "pseudo_leg_sum_min": _legs_along(along_r, km_r, areas, legs),
            "_legs": legs,  # type: ignore[dict-item]
            "_cost": cost,
            "_areas": areas,  # type: ignore[dict-item]
            "_last_cost": last_cost,
            "nn_switches": nn_sw,
            "nn_switch_est_min": nn_sw * min_per_switch[q],
            "pseudo_switches": pseudo_sw,
            "courier_min_per_switch": min_per_switch[q],
            "_km_per_min": km_per_min[q],
            "_min_per_stop": min_per_stop[q],
        }

    def _unordered(self, b: QueryBatch, cols: dict[str, FloatArray]) -> dict[str, FloatArray]:
        q = b.t_query
        pairs = self.courier_pair_
        prec = precedence_rank(
            pairs, q, pairs.area_codes(b.t_aoi), pairs.courier_codes(b.q_courier), b.q_day
        )
        # the habit's order: areas by how many others usually come first, distance breaking
        # ties (targets without an area id count 0 and come first: the data cannot place them)
        order = segment_rank(q, np.nan_to_num(prec.before) * 1000.0 + cols["dist_km"])
        along = _sorted_along(q, order)
        km = _leg_km(along, b)
        areas: _Areas = cols["_areas"]  # type: ignore[assignment]
        legsum = _legs_along(along, km, areas, cols["_legs"])  # type: ignore[arg-type]
        return {
            "prec_before": prec.before,
            "prec_frac": prec.before / np.maximum(prec.others, 1.0),
            "prec_known": prec.known,
            "prec_seq": order.astype(np.float64),
            "prec_seq_frac": order / cols["n_remaining"],
            "prec_path_km": _path_along(along, km),
            "prec_switches": _switches_along(along, areas),
            "prec_leg_sum_min": legsum,
            "prec_leg_today_min": legsum * _today_factor(cols),
        }

    def _unordered_base(
        self, b: QueryBatch
    ) -> tuple[dict[str, FloatArray], npt.NDArray[np.float32]]:
        """The unordered columns before the pair order's (``PAIR_BASE``): by name and as the
        matrix the pair model reads."""
        cols = self._common(b)
        cols.update(self._unordered(b, cols))
        return cols, _as_matrix(cols, PAIR_BASE)

    def _pair_order(
        self, b: QueryBatch, cols: dict[str, FloatArray], base: npt.NDArray[np.float32]
    ) -> dict[str, FloatArray]:
        order_model: PairOrder | None = self.__dict__.get("pair_order_")
        if order_model is None:
            nan = np.full(b.n_targets, np.nan)
            return {name: nan for name in PAIR_ORDER_FEATURES}
        q = b.t_query
        ahead = order_model.ahead(b, base, self.courier_pair_)
        order = segment_rank(q, np.nan_to_num(ahead, nan=0.0) * 1000.0 + cols["dist_km"])
        along = _sorted_along(q, order)
        km = _leg_km(along, b)
        areas: _Areas = cols["_areas"]  # type: ignore[assignment]
        legsum = _legs_along(along, km, areas, cols["_legs"])  # type: ignore[arg-type]
        known = np.isfinite(ahead)
        return {
            "pw_ahead": ahead,
            "pw_frac": ahead / np.maximum(cols["n_remaining"] - 1.0, 1.0),
            "pw_seq": np.where(known, order.astype(np.float64), np.nan),
            "pw_path_km": np.where(known, _path_along(along, km), np.nan),
            "pw_leg_sum_min": np.where(known, legsum, np.nan),
            "pw_leg_today_min": np.where(known, legsum * _today_factor(cols), np.nan),
        }

    def _ordered(self, b: QueryBatch, cols: dict[str, FloatArray]) -> dict[str, FloatArray]:
        q = b.t_query
        seq = b.t_seq.astype(np.float64)
        along = _sorted_along(q, b.t_seq)
        km = _leg_km(along, b)
        path = _path_along(along, km)
        areas: _Areas = cols["_areas"]  # type: ignore[assignment]
        return {
            "seq": seq,
            "seq_frac": seq / cols["n_remaining"],
            "path_km": path,
            "path_est_min": path / cols["_km_per_min"],
            "seq_est_min": (seq + 1.0) * cols["_min_per_stop"],
            "planned_min": b.t_planned_min,
            "seq_switches": (sw := _switches_along(along, areas)),
            "seq_switch_est_min": sw * cols["courier_min_per_switch"],
            "seq_cost_sum_min": _cumsum_before(along, cols["_cost"]) + cols["_last_cost"],
            "seq_leg_sum_min": (legsum := _legs_along(along, km, areas, cols["_legs"])),  # type: ignore[arg-type]
            "seq_leg_today_min": (today := legsum * _today_factor(cols)),
            **window_waits(along, today, b.t_window_start_min, self.window_wait_min)._asdict(),
        }


class WindowWaits(NamedTuple):
    """Booked windows along a sequence, from an estimate of each arrival without waits."""

    win_gap_min: FloatArray  # the target's window start minus its estimated arrival; NaN if none
    seq_win_wait_min: FloatArray  # minutes waited for windows before the target
    seq_win_leg_min: FloatArray  # the estimated arrival with every wait up to and at the target


def window_waits(along: _Along, est: FloatArray, start: FloatArray, max_wait: float) -> WindowWaits:
    """Propagate waits for booked windows along each query's sequence.

    A courier who would reach a stop up to ``max_wait`` minutes before its window opens waits
    for it, and every later stop moves by that wait. On the synthetic dev city (seeds 7 / 8)
    the propagated waits took ordered MAE from 6.41 / 6.46 to 6.15 / 6.29 min; the target's own
    window alone (no waits) to 6.46 / 6.35. One vectorised step per position in the sequence.
    """
    if not np.isfinite(start).any():  # most requests book no window: nothing to propagate
        return WindowWaits(np.full(len(est), np.nan), np.zeros(len(est)), est.astype(np.float64))
    order, _, first = along
    starts = np.flatnonzero(first)
    if len(starts) <= _FEW_QUERIES:  # a service request: plain floats, the same arithmetic
        return _window_waits_few(order, starts, est, start, max_wait)
    row, col, shape = _segment_grid(starts, len(order))
    e, w = np.zeros(shape), np.full(shape, np.nan)
    e[row, col], w[row, col] = np.nan_to_num(est[order]), start[order]
    step = np.diff(e, axis=1, prepend=0.0)  # the legs between consecutive estimates
    gap, upstream, arrival = np.full(shape, np.nan), np.zeros(shape), np.zeros(shape)
    t, waited = np.zeros(shape[0]), np.zeros(shape[0])
    for k in range(shape[1]):
        upstream[:, k] = waited
        reach = t + step[:, k]
        gap[:, k] = g = w[:, k] - reach
        wait = np.where((g > 0) & (g <= max_wait), g, 0.0)  # NaN compares false: no window
        waited = waited + wait
        t = reach + wait
        arrival[:, k] = t
    return WindowWaits(
        _unsort(order, gap[row, col]),
        _unsort(order, upstream[row, col]),
        _unsort(order, arrival[row, col]),
    )


def _window_waits_few(
    order: npt.NDArray[np.int64],
    starts: npt.NDArray[np.int64],
    est: FloatArray,
    start: FloatArray,
    max_wait: float,
) -> WindowWaits:
    e = np.nan_to_num(est[order]).tolist()
    w = start[order].tolist()
    n = len(e)
    gap, upstream, arrival = [math.nan] * n, [0.0] * n, [0.0] * n
    bounds = [*starts.tolist(), n]
    for a, b in itertools.pairwise(bounds):
        t = waited = prev = 0.0
        for i in range(a, b):
            upstream[i] = waited
            reach = t + (e[i] - prev)
            prev = e[i]
            gap[i] = g = w[i] - reach
            wait = g if 0.0 < g <= max_wait else 0.0
            waited += wait
            t = reach + wait
            arrival[i] = t
    return WindowWaits(
        _unsort(order, np.array(gap)),
        _unsort(order, np.array(upstream)),
        _unsort(order, np.array(arrival)),
    )


def nn_tour(
    group: npt.NDArray[np.int64],
    q_lat: FloatArray,
    q_lng: FloatArray,
    lat: FloatArray,
    lng: FloatArray,
) -> npt.NDArray[np.int64]:
    """Visit order of a greedy nearest-neighbour tour from each query's position.

    Couriers left to choose mostly sweep nearby stops first; the tour gives the unordered mode
    a plausible sequence. ``group`` must be sorted (targets of a query are contiguous); one
    vectorised step per stop position, so the cost is O(targets x longest route).
    """
    n_targets = len(group)
    seq = np.full(n_targets, -1, dtype=np.int64)
    if n_targets == 0:
        return seq
    if np.any(np.diff(group) < 0):
        raise ValueError("nn_tour: targets must be sorted by query")
    if len(q_lat) <= _FEW_QUERIES:
        return _nn_tour_few(group, q_lat, q_lng, lat, lng, seq)
    cur_lat, cur_lng = q_lat.astype(np.float64).copy(), q_lng.astype(np.float64).copy()
    # Each step picks one stop per query and drops it, so a step touches only the stops still
    # open: the work is the sum of the queries' squared sizes over two, not targets x longest
    # route. The rows stay in order, so ties still go to the lowest index.
    idx = np.arange(n_targets)
    g, la, lo = group, lat, lng
    for step in range(n_targets):
        if not len(idx):
            break
        dist = np.nan_to_num(haversine_km(cur_lat[g], cur_lng[g], la, lo), nan=0.0)
        new = np.empty(len(g), dtype=bool)
        new[0], new[1:] = True, g[1:] != g[:-1]
        seg_min = np.minimum.reduceat(dist, np.flatnonzero(new))
        cand = np.flatnonzero(dist == seg_min[np.cumsum(new) - 1])
        first = cand[np.r_[True, g[cand][1:] != g[cand][:-1]]]
        seq[idx[first]] = step
        cur_lat[g[first]] = la[first]
        cur_lng[g[first]] = lo[first]
        keep = np.ones(len(idx), dtype=bool)
        keep[first] = False
        idx, g, la, lo = idx[keep], g[keep], la[keep], lo[keep]
    return seq


_FEW_QUERIES = 64  # a service request: one pairwise matrix per query beats per-step numpy calls


def _nn_tour_few(
    group: npt.NDArray[np.int64],
    q_lat: FloatArray,
    q_lng: FloatArray,
    lat: FloatArray,
    lng: FloatArray,
    seq: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """``nn_tour`` for a few queries: the same distances (same function, same arguments) and
    the same tie-break (lowest index), from one pairwise matrix per query."""
    bounds = np.searchsorted(group, np.arange(len(q_lat) + 1))
    for qi in range(len(q_lat)):
        a, b = int(bounds[qi]), int(bounds[qi + 1])
        if a == b:
            continue
        la, lo = lat[a:b], lng[a:b]
        pair = _zero_nan(haversine_km(la[:, None], lo[:, None], la[None, :], lo[None, :]))
        dist = _zero_nan(haversine_km(q_lat[qi : qi + 1], q_lng[qi : qi + 1], la, lo))
        local = np.full(b - a, -1, dtype=np.int64)
        # +inf on visited stops: adding 0.0 leaves an open stop's distance exactly as it is
        visited = np.zeros(b - a)
        for step in range(b - a):
            j = int(np.argmin(dist))
            local[j] = step
            visited[j] = np.inf
            dist = pair[j] + visited
        seq[a:b] = local
    return seq


class _Along(NamedTuple):
    """The order that sorts targets by (query, seq), the sorted queries, and segment starts:
    computed once per sequence and shared by the path, switch and cost features along it."""

    order: npt.NDArray[np.int64]
    g: npt.NDArray[np.int64]
    first: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class _Areas:
    """The batch's area ids as strings, converted once for every switch count."""

    targets: npt.NDArray[np.str_]
    last: npt.NDArray[np.str_]
    unknown: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, b: QueryBatch) -> _Areas:
        return cls(b.t_aoi.astype(str), b.q_last_aoi.astype(str), b.t_aoi == "")


# Per courier, legs between consecutive deliveries of a route: those within one area (a
# building's parcels, minutes apart) and those to a new area, whose minutes grow with the km.
# The sums give each courier's mean same-area leg and a least-squares line for the others.
# Summed along a sequence they estimate the minutes to each stop, which trees cannot add up
# themselves: on the dev splits (synthetic seed 11, LaDe before 2021-08-01) ordered MAE fell
# 14% / 1%. Legs over LEG_CAP_MIN are breaks and waits, not what a leg costs: the cap of 30
# beat 60 and 120 on both dev splits.
LEG_CAP_MIN = 30.0


def _as_matrix(cols: dict[str, FloatArray], names: Any) -> npt.NDArray[np.float32]:
    """Rows x features, float32 (cast once, as LightGBM reads it; C order for the trees)."""
    return np.ascontiguousarray(np.array([cols[n] for n in names], dtype=np.float32).T)


PAIRS = "courier_pair_"  # FitPart.daily entry of the area-pair counts
PRECEDENCE_PRIOR = 1.0  # routes' worth of 1/2 for a pair: one route already says much
LEG_STATS: tuple[str, ...] = ("n_same", "same_min", "n_sw", "sw_km", "sw_min", "sw_km2", "sw_kmmin")


@dataclass(frozen=True)
class _LegCost:
    """Per target (its query's courier): minutes of a same-area leg, and of a new-area leg
    as ``intercept + slope x km``."""

    same: FloatArray
    intercept: FloatArray
    slope: FloatArray

    @classmethod
    def of(cls, c: ProfileLookup, q: npt.NDArray[np.int64]) -> _LegCost:
        n = c.sums["n_sw"]
        with np.errstate(divide="ignore", invalid="ignore"):
            km, mins = c.sums["sw_km"] / n, c.sums["sw_min"] / n
            var = c.sums["sw_km2"] / n - km**2
            slope = np.clip((c.sums["sw_kmmin"] / n - km * mins) / var, 0.0, 60.0)
            same = c.sums["same_min"] / c.sums["n_same"]
        slope = np.where(np.isfinite(slope), slope, 0.0)
        return cls(same[q], (mins - slope * km)[q], slope[q])


def _legs_along(along: _Along, km: FloatArray, areas: _Areas, legs: _LegCost) -> FloatArray:
    """Estimated minutes from the query through the targets in sequence order up to each
    target (``km``: ``_leg_km(along, ...)``): a same-area leg costs the courier's mean one, a
    new-area leg his line in km."""
    order, g, first = along
    a = areas.targets[order]
    prev = np.where(first, areas.last[g], np.concatenate(([""], a[:-1])))
    same = (a == prev) & (a != "")
    step = np.where(same, legs.same[order], legs.intercept[order] + legs.slope[order] * km)
    return _unsort(order, _running_sum(np.nan_to_num(step), first))


def _today_factor(cols: dict[str, FloatArray]) -> FloatArray:
    """Today's pace over the courier's usual, shrunk toward 1 by the stops done (a prior of 5
    stops): the leg sums scaled by it (``seq_leg_today_min``) took the synthetic dev city's
    ordered MAE from 6.64 to 6.41 min; trees cannot multiply two columns either."""
    n = np.nan_to_num(cols["n_done"])
    r = np.clip(np.nan_to_num(cols["today_pace_ratio"], nan=1.0), 0.5, 2.0)
    return (n * r + 5.0) / (n + 5.0)


def _zero_nan(km: FloatArray) -> FloatArray:
    """``np.nan_to_num`` of a fresh ``haversine_km`` result, in place: distances are finite
    or NaN (unknown positions), so only NaN needs replacing (and this is cheaper)."""
    km[np.isnan(km)] = 0.0
    return km


def _switches_along(along: _Along, areas: _Areas) -> FloatArray:
    """Area changes from the current area up to and including each target along a sequence.

    NaN where areas are unknown: the count means nothing without them.
    """
    order, g, first = along
    a = areas.targets[order]
    prev = np.where(first, areas.last[g], np.concatenate(([""], a[:-1])))
    out = _unsort(order, _running_sum((a != prev).astype(np.float64), first))
    return np.where(areas.unknown, np.nan, out)


def _cumsum_before(along: _Along, values: FloatArray) -> FloatArray:
    """Sum of ``values`` of the targets before each one along a sequence (trees cannot add
    rows)."""
    order, _, first = along
    v = values[order]
    return _unsort(order, _running_sum(v, first) - v)


def _sorted_along(group: npt.NDArray[np.int64], seq: npt.NDArray[np.int64]) -> _Along:
    """The order that sorts targets by (query, seq), the sorted queries, and segment starts."""
    order = np.lexsort((seq, group))
    g = group[order]
    return _Along(order, g, np.concatenate(([True], g[1:] != g[:-1])))


def _running_sum(steps: FloatArray, first: npt.NDArray[np.bool_]) -> FloatArray:
    """Inclusive cumulative sum of ``steps`` restarting where ``first`` is true.

    Summed within each segment (not a global cumsum minus an offset), so a route's values do
    not depend on which other routes share the batch: a service request of one route gets
    exactly the training row's value."""
    steps = np.asarray(steps, dtype=np.float64)
    starts = np.flatnonzero(first)
    if len(starts) <= 1:
        return np.cumsum(steps)
    # one row per segment, zero-padded: a row's accumulate is that segment's own cumsum
    row, col, shape = _segment_grid(starts, len(steps))
    padded = np.zeros(shape)
    padded[row, col] = steps
    return np.cumsum(padded, axis=1)[row, col]


def _segment_grid(
    starts: npt.NDArray[np.int64], n: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], tuple[int, int]]:
    """Each of ``n`` sorted values' (segment, position) in a segments x longest-segment grid,
    and the grid's shape: per-segment scans become one numpy step per column."""
    lengths = np.diff(np.append(starts, n))
    col = np.arange(n) - np.repeat(starts, lengths)
    row = np.repeat(np.arange(len(starts)), lengths)
    return row, col, (len(starts), int(lengths.max()))


def _unsort(order: npt.NDArray[np.int64], values: FloatArray) -> FloatArray:
    out = np.empty(len(order))
    out[order] = values
    return out


def _clock_of(epoch_min: FloatArray, like: pd.Series) -> FloatArray:
    """Local minutes since midnight of epoch minutes, in the zone of ``like``."""
    ts = pd.Series(pd.to_datetime(epoch_min * 60.0, unit="s", utc=True)).dt.tz_convert(like.dt.tz)
    return local_clock_min(ts)


_FEW_VALUES = 4096  # up to this many targets, categories are coded and counted in dicts
_CODE_MAPS: dict[int, tuple[pd.Index, dict[str, float]]] = {}  # id -> (vocabulary, codes)


def _code_map(vocab: pd.Index) -> dict[str, float]:
    """Category -> code of a fitted vocabulary, built once per vocabulary (the cache holds the
    vocabulary itself, so an id is never reused while its entry lives)."""
    hit = _CODE_MAPS.get(id(vocab))
    if hit is not None and hit[0] is vocab:
        return hit[1]
    if len(_CODE_MAPS) > 64:  # many fits in one process (tuning): forget the old ones
        _CODE_MAPS.clear()
    code_of = {str(v): float(i) for i, v in enumerate(vocab)}
    _CODE_MAPS[id(vocab)] = (vocab, code_of)
    return code_of


def _codes(vocab: pd.Index, values: npt.NDArray[np.object_]) -> FloatArray:
    if len(values) <= _FEW_VALUES:  # a service request: a dict beats building a pandas index
        code_of = _code_map(vocab)
        codes = np.fromiter((code_of.get(str(v), -1.0) for v in values), np.float64, len(values))
    else:
        codes = vocab.get_indexer(pd.Index(values.astype(str))).astype(np.float64)
    codes[codes < 0] = np.nan  # unseen category: LightGBM treats it as missing
    return codes


def _count_same(group: npt.NDArray[np.int64], values: npt.NDArray[np.object_]) -> FloatArray:
    """How many targets of the same query share each target's value."""
    if len(values) <= _FEW_VALUES:  # a service request: counting in a dict beats factorising
        keys = list(zip(group.tolist(), [str(v) for v in values.tolist()], strict=True))
        tally = Counter(keys)
        return np.fromiter((tally[k] for k in keys), np.float64, len(keys))
    codes, uniques = pd.factorize(values.astype(str))
    _, key, counts = np.unique(
        group.astype(np.int64) * (len(uniques) + 1) + codes, return_inverse=True, return_counts=True
    )
    return counts[key].astype(np.float64)


def _leg_km(along: _Along, b: QueryBatch) -> FloatArray:
    """Km of each leg along a sequence (from the query position to the first target), in
    ``along``'s sorted order."""
    order, g, first = along
    la, lo = b.t_lat[order], b.t_lng[order]
    prev_lat = np.where(first, b.q_lat[g], np.concatenate(([np.nan], la[:-1])))
    prev_lng = np.where(first, b.q_lng[g], np.concatenate(([np.nan], lo[:-1])))
    return _zero_nan(haversine_km(prev_lat, prev_lng, la, lo))


def _path_along(along: _Along, km: FloatArray) -> FloatArray:
    """Km from the query position through the targets in sequence order up to each target
    (``km``: ``_leg_km(along, ...)``)."""
    return _unsort(along.order, _running_sum(km, along.first))


def _profile_events(
    d: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Route-, stop- and leg-level events of the training window for the profiles; ``d`` is
    in visit order (route, arrival, stop id) with a fresh index."""
    route = d[s.ROUTE_ID].to_numpy()
    first = np.r_[True, route[1:] != route[:-1]]
    arrival_min = d[s.ARRIVAL_TIME].astype("int64").to_numpy() / 6e10
    lat, lng = d[s.LAT].to_numpy(float), d[s.LNG].to_numpy(float)
    leg_km = np.where(
        first, np.nan, haversine_km(np.r_[np.nan, lat[:-1]], np.r_[np.nan, lng[:-1]], lat, lng)
    )
    leg_min = np.where(first, np.nan, np.diff(arrival_min, prepend=np.nan))
    day = local_day(d[s.DISPATCH_TIME])
    aoi_all = d[s.AOI_ID].astype("string").fillna("").to_numpy(dtype=object)
    switch = (~first & (aoi_all != np.r_[[""], aoi_all[:-1]])).astype(float)
    grouped = pd.DataFrame({"route": route, "km": leg_km, "t": arrival_min, "sw": switch}).groupby(
        "route", sort=False
    )
    per_route = grouped.agg(
        path_km=("km", "sum"), t0=("t", "min"), t1=("t", "max"), n=("t", "size"), sw=("sw", "sum")
    )
    first_rows = d.loc[first, [s.ROUTE_ID, s.COURIER_ID]].set_index(s.ROUTE_ID)
    routes = pd.DataFrame(
        {
            "key": first_rows.loc[per_route.index, s.COURIER_ID].astype(str).to_numpy(),
            "day": day[first],
            "path_km": per_route["path_km"].to_numpy(),
            "active_min": (per_route["t1"] - per_route["t0"]).to_numpy(),
            "legs": (per_route["n"] - 1).to_numpy(dtype=float),
            # moves between areas: parcels of one building are quick, a new building is not
            "switches": per_route["sw"].to_numpy(dtype=float) + 1.0,
            # local clock of the route's last delivery: how long the courier's day usually runs
            "end_clock": _clock_of(per_route["t1"].to_numpy(), d[s.ARRIVAL_TIME]),
        }
    )
    routes = routes[(routes["legs"] >= 1) & (routes["active_min"] > 0)]
    pos = np.arange(len(d)) - np.repeat(
        np.flatnonzero(first), np.diff(np.r_[np.flatnonzero(first), len(d)])
    )
    n_route = d.groupby(s.ROUTE_ID, sort=False)[s.STOP_ID].transform("size").to_numpy()
    aoi = d[s.AOI_ID].astype("string").fillna("").to_numpy(dtype=object)
    last = np.r_[first[1:], True]
    next_gap = np.where(last, np.nan, np.r_[np.diff(arrival_min), np.nan])
    next_gap = np.where(next_gap > 120.0, np.nan, next_gap)  # a break, not the cost of a stop
    stops = pd.DataFrame(
        {
            "ca": d[s.COURIER_ID].astype(str).to_numpy(dtype=object) + "|" + aoi,
            "aoi": aoi,
            "day": local_day(d[s.ARRIVAL_TIME]),
            "clock_min": local_clock_min(d[s.ARRIVAL_TIME]),
            "rank_frac": pos / np.maximum(n_route - 1, 1),
            # minutes from this stop to the next one of the route: what a stop here costs
            "gap_next": np.nan_to_num(next_gap),
            "n_gap": np.isfinite(next_gap).astype(float),
        }
    )[aoi != ""]
    arr = d[s.ARRIVAL_TIME]
    naive = arr.dt.tz_localize(None)
    prev_how = np.r_[-1, (naive.dt.weekday * 24 + naive.dt.hour).to_numpy()[:-1]]
    service = (d[s.DEPARTURE_TIME] - d[s.ARRIVAL_TIME]).dt.total_seconds().to_numpy() / 60
    legs = pd.DataFrame(
        {
            "key": d[s.ZONE_ID].astype(str).to_numpy(dtype=object) + "|" + prev_how.astype(str),
            "day": local_day(arr),
            "leg_km": leg_km,
            "leg_min": leg_min,
            "service_min": np.nan_to_num(service),
            "n_service": np.isfinite(service).astype(float),
        }
    )[~first]
    return routes, stops, legs, _courier_legs(d, first, leg_km, leg_min, aoi_all, day)


def _courier_legs(
    d: pd.DataFrame,
    first: npt.NDArray[np.bool_],
    km: FloatArray,
    minutes: FloatArray,
    aoi: npt.NDArray[np.object_],
    day: npt.NDArray[np.int64],
) -> pd.DataFrame:
    """One event per leg (legs over ``LEG_CAP_MIN`` left out) with the sums of ``LEG_STATS``."""
    ok = ~first & np.isfinite(minutes) & (minutes <= LEG_CAP_MIN) & np.isfinite(km)
    same = ok & (aoi == np.r_[[""], aoi[:-1]]) & (aoi != "")
    sw = ok & ~same
    k, m = np.nan_to_num(km), np.nan_to_num(minutes)
    out = pd.DataFrame(
        {
            "key": d[s.COURIER_ID].astype(str).to_numpy(dtype=object),
            "day": day,
            "n_same": same.astype(float),
            "same_min": np.where(same, m, 0.0),
            "n_sw": sw.astype(float),
            "sw_km": np.where(sw, k, 0.0),
            "sw_min": np.where(sw, m, 0.0),
            "sw_km2": np.where(sw, k * k, 0.0),
            "sw_kmmin": np.where(sw, k * m, 0.0),
        }
    )
    return out[ok]
