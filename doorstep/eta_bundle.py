"""The ETA model bundle: features + boosters + conformal calibration, and its prediction rule.

Training builds it, MLflow stores it, serving loads it; none of them re-implements predict.
It lives outside ``training/`` because the service must never import training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from doorstep.compat import FeatureSetMismatch
from features.eta_features import FEATURE_SET, EtaFeaturizer, Mode, feature_names
from features.eta_queries import QueryBatch

FloatArray = npt.NDArray[np.float64]
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
# Horizon buckets (minutes of *predicted* ETA, known at serving) for Mondrian calibration.
HORIZON_EDGES: tuple[float, ...] = (30.0, 60.0, 120.0)


def horizon_bucket(minutes: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """0: < 30 min, 1: 30-60, 2: 60-120, 3: >= 120."""
    return np.searchsorted(
        np.asarray(HORIZON_EDGES), np.asarray(minutes, dtype=float), side="right"
    )


def horizon_label(bucket: int) -> str:
    edges = (0.0, *HORIZON_EDGES, np.inf)
    lo, hi = edges[bucket], edges[bucket + 1]
    return f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">={lo:g}"


@dataclass(frozen=True)
class EtaPrediction:
    """Minutes from the query time to each target: calibrated P10 <= P50 <= P90."""

    p10: FloatArray
    p50: FloatArray
    p90: FloatArray


@dataclass
class ModeModel:
    """The three quantile boosters of one mode and the conformal widening per horizon bucket."""

    boosters: dict[float, lgb.Booster]
    # minutes added below P10 and above P90, per horizon bucket (index) of the raw P50
    conformal: list[float] = field(default_factory=list)
    # what the boosters predict: "minutes", or "log1p" minutes. Quantiles commute with a
    # monotone transform, so log-space quantile boosters give minute quantiles exactly.
    target: str = "minutes"
    # compiled copies of the boosters (doorstep.fast_trees), attached by serving; never pickled
    fast: dict[float, Any] = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "fast"}

    def predict_quantile(
        self, q: float, X: npt.NDArray[np.float32], num_threads: int
    ) -> FloatArray:
        fast = self.__dict__.get("fast")  # absent in bundles pickled before it existed
        if fast and q in fast:
            return fast[q].predict(X)
        return np.asarray(self.boosters[q].predict(X, num_threads=num_threads))


@dataclass
class EtaBundle:
    """Everything needed to answer an ETA query; picklable, MLflow-loggable."""

    featurizer: EtaFeaturizer
    modes: dict[str, ModeModel]
    feature_set: str = FEATURE_SET
    training_window: tuple[str, str] = ("", "")
    num_threads: int = 1
    # the leg travel-time model (doorstep.leg_bundle.LegBundle) for the matrix endpoint,
    # trained on the same window and shipped in the same registered model
    leg: Any = None

    def raw(self, batch: QueryBatch, mode: Mode) -> EtaPrediction:
        """Uncalibrated quantiles, sorted so they never cross."""
        return self.raw_from_features(self.featurizer.transform(batch, mode), mode)

    def raw_from_features(self, X: npt.NDArray[np.float32], mode: Mode) -> EtaPrediction:
        """``raw`` on an already computed feature matrix (training reuses its matrices)."""
        model = self.modes[mode]
        preds = [model.predict_quantile(q, X, self.num_threads) for q in QUANTILES]
        stacked = np.sort(np.column_stack(preds), axis=1)
        if model.target == "log1p":
            stacked = np.expm1(stacked)
        return EtaPrediction(stacked[:, 0], stacked[:, 1], stacked[:, 2])

    def shaped(self, batch: QueryBatch, mode: Mode) -> EtaPrediction:
        """Uncalibrated quantiles with the shape rules applied (what calibration is fitted on)."""
        return shape(self.raw(batch, mode), batch, mode)

    def predict(self, batch: QueryBatch, mode: Mode) -> EtaPrediction:
        """Calibrated P10/P50/P90; in ordered mode never decreasing along the sequence."""
        order = plan_order(batch) if mode == "ordered" else None  # sorted once, used 5 times
        shaped = shape(self.raw(batch, mode), batch, mode, order)
        return finish(shaped, batch, mode, self.modes[mode].conformal, order)


def plan_order(batch: QueryBatch) -> npt.NDArray[np.int64]:
    """The order that sorts targets by (query, planned sequence)."""
    return np.lexsort((batch.t_seq, batch.t_query))


def shape(
    raw: EtaPrediction,
    batch: QueryBatch,
    mode: Mode,
    order: npt.NDArray[np.int64] | None = None,
) -> EtaPrediction:
    """Non-negative; in ordered mode each quantile is a running maximum along the plan
    (``order``: ``plan_order(batch)`` if the caller has it)."""
    p10, p50, p90 = (np.maximum(v, 0.0) for v in (raw.p10, raw.p50, raw.p90))
    if mode == "ordered":
        order = plan_order(batch) if order is None else order
        p10, p50, p90 = (_cummax_along(batch.t_query, order, v) for v in (p10, p50, p90))
    return EtaPrediction(p10, p50, p90)


def finish(
    raw: EtaPrediction,
    batch: QueryBatch,
    mode: Mode,
    conformal: list[float],
    order: npt.NDArray[np.int64] | None = None,
) -> EtaPrediction:
    """Widen shaped quantiles by the conformal offsets; keep P10 >= 0, no crossing, and (ordered)
    monotone along the plan: offsets differ by horizon bucket, so the window is re-shaped."""
    offset = np.asarray(conformal)[horizon_bucket(raw.p50)] if conformal else np.zeros_like(raw.p50)
    p10 = np.maximum(raw.p10 - offset, 0.0)
    p50 = raw.p50
    p90 = raw.p90 + offset
    if mode == "ordered":
        order = plan_order(batch) if order is None else order
        p10, p90 = (_cummax_along(batch.t_query, order, v) for v in (p10, p90))
    p50 = np.maximum(p50, p10)
    p90 = np.maximum(p90, p50)
    return EtaPrediction(p10, p50, p90)


def _cummax_along(
    group: npt.NDArray[np.int64], order: npt.NDArray[np.int64], values: FloatArray
) -> FloatArray:
    """Running maximum of ``values`` along ``order`` (sorting by group, then sequence) within
    each group."""
    v, g = values[order], group[order]
    # offset each group above all earlier ones so one global running max respects groups
    span = float(np.nanmax(np.abs(v))) * 2.0 + 1.0 if len(v) else 1.0
    lifted = v + g * span
    out = np.empty_like(values)
    out[order] = np.maximum.accumulate(lifted) - g * span
    return out


def check_feature_set(bundle: EtaBundle) -> None:
    """Serving refuses a bundle whose feature set it does not know."""
    if bundle.feature_set != FEATURE_SET:
        raise FeatureSetMismatch(
            f"feature_set: model uses {bundle.feature_set!r}, this code computes {FEATURE_SET!r}"
        )
    for mode in bundle.modes:
        names = feature_names(mode)  # type: ignore[arg-type]
        booster = bundle.modes[mode].boosters[0.5]
        if booster.feature_name() != names:
            raise FeatureSetMismatch(
                f"feature_set: the {mode} model's features differ from {FEATURE_SET}"
            )
