"""Rolling-origin backtests of demand forecasts: folds, protocols, baselines and metrics.

A ``Fold`` trains on the periods before ``train_end`` and scores the days [test_start,
test_end). Inside a fold every test day is a rolling origin: the forecast for it sees the
actual volume of all periods before the origin (the model is not refitted inside a fold;
``backtest`` refits once per fold, the benchmark is one fold). A ``Protocol``
says which origins and horizons are scored. Points: every zone known before ``train_end`` x
every target period, a missing period counting as zero. Baselines are scored on exactly the
model's points:

- ``seasonal_naive``: the latest same-season period (same hour last week / same weekday)
  before the origin;
- ``naive``: the last period before the origin;
- ``mean_4w``: the mean of the latest four same-season periods before the origin.
A zone with no value there (too young) is forecast zero by a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from doorstep.demand_bundle import DemandBundle, DemandPrediction, horizon_bucket, total_window
from features import schema as s
from features.demand_features import (
    DemandFeatureSpec,
    DemandPanel,
    DemandQueries,
    gather,
    make_queries,
    spec_for,
)
from training.demand import DemandTrainConfig, train_demand

FloatArray = npt.NDArray[np.float64]
SEASON: dict[str, int] = {"h": 168, "d": 7}
BASELINES: tuple[str, ...] = ("seasonal_naive", "naive", "mean_4w")
INTRADAY_CUTOFFS: tuple[int, ...] = (8, 12, 16)


@dataclass(frozen=True)
class Fold:
    """Train before ``train_end``; score origins on the days [test_start, test_end)."""

    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    @property
    def days(self) -> pd.DatetimeIndex:
        return pd.date_range(self.test_start, self.test_end - pd.Timedelta(days=1), freq="D")


def rolling_folds(last_day: str | pd.Timestamp, n_folds: int, fold_days: int) -> list[Fold]:
    """``n_folds`` consecutive folds of ``fold_days`` days ending with ``last_day``, oldest
    first; each trains on everything before its own test days."""
    end = pd.Timestamp(last_day).normalize() + pd.Timedelta(days=1)
    folds = []
    for k in range(n_folds, 0, -1):
        start = end - pd.Timedelta(days=k * fold_days)
        folds.append(Fold(start, start, start + pd.Timedelta(days=fold_days)))
    return folds


@dataclass(frozen=True)
class Protocol:
    """Scored origins and horizon (``None``: the rest of the origin's day)."""

    name: str
    origins: pd.DatetimeIndex
    horizon: int | None


def protocols(freq: str, fold: Fold) -> list[Protocol]:
    """Hourly: ``day_ahead`` (24 h from 00:00) and ``intraday`` (rest of the day from 08:00,
    12:00, 16:00). Daily: ``day_ahead`` (the day itself) and ``week_ahead`` (7 days, only
    origins whose week lies inside the fold)."""
    days = fold.days
    if freq == "h":
        cut = pd.DatetimeIndex([d + pd.Timedelta(hours=h) for d in days for h in INTRADAY_CUTOFFS])
        return [Protocol("day_ahead", days, 24), Protocol("intraday", cut, None)]
    week = days[days + pd.Timedelta(days=6) < fold.test_end]
    return [Protocol("day_ahead", days, 1), Protocol("week_ahead", week, 7)]


def scored_zones(panel: DemandPanel, train_end: pd.Timestamp) -> npt.NDArray[np.int64]:
    return np.flatnonzero(panel.first < panel.index_of(train_end))


def protocol_queries(
    panel: DemandPanel, protocol: Protocol, zones: npt.NDArray[np.int64]
) -> DemandQueries:
    return make_queries(panel, protocol.origins, protocol.horizon, zones)


def actuals(panel: DemandPanel, q: DemandQueries) -> FloatArray:
    """Volume at each target; a period the table does not have counts as zero."""
    return np.nan_to_num(panel.values[q.zone, q.target], nan=0.0)


def baseline_predictions(panel: DemandPanel, q: DemandQueries) -> dict[str, FloatArray]:
    """The three baselines on the query rows (only periods before each origin are read)."""
    m = SEASON[panel.freq]
    j0 = -(-q.horizon // m)  # the first season back that lies before the origin
    lags = [gather(panel.values, q.zone, q.target - m * (j0 + j), q.origin) for j in range(4)]
    stack = np.column_stack(lags)
    known = np.isfinite(stack).sum(axis=1)
    mean4 = np.where(known > 0, np.nansum(stack, axis=1) / np.maximum(known, 1), 0.0)
    last = gather(panel.values, q.zone, q.origin - 1, q.origin)
    return {
        "seasonal_naive": np.nan_to_num(lags[0], nan=0.0),
        "naive": np.nan_to_num(last, nan=0.0),
        "mean_4w": mean4,
    }


def insample_scale(
    panel: DemandPanel, zones: npt.NDArray[np.int64], train_end: pd.Timestamp
) -> float:
    """Mean over zones of the in-sample seasonal-naive MAE (periods before ``train_end``,
    both the period and its seasonal lag known): the MASE denominator."""
    m = SEASON[panel.freq]
    v = panel.values[zones, : panel.index_of(train_end)]
    diff = np.abs(v[:, m:] - v[:, :-m])
    known = np.isfinite(diff)
    per_zone = np.where(known, diff, 0.0).sum(axis=1) / np.maximum(known.sum(axis=1), 1)
    return float(np.mean(per_zone[known.any(axis=1)])) if known.any() else float("nan")


def metrics(
    y: FloatArray, pred: FloatArray | DemandPrediction, zone: npt.NDArray[np.int64], scale: float
) -> dict[str, float | None]:
    """MAE, RMSE, WAPE, pooled MASE (mean over zones of each zone's MAE / ``scale``) and
    P10-P90 coverage on unrounded quantiles (None for a point forecast)."""
    point = pred.p50 if isinstance(pred, DemandPrediction) else np.asarray(pred, dtype=float)
    err = np.abs(point - y)
    _, inv = np.unique(zone, return_inverse=True)
    zone_mae = np.bincount(inv, err) / np.bincount(inv)
    total = float(np.sum(y))
    out: dict[str, float | None] = {
        "mae": float(np.mean(err)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "wape": float(np.sum(err) / total) if total > 0 else None,
        "mase": float(np.mean(zone_mae) / scale) if scale > 0 else None,
        "coverage_p10_p90": None,
    }
    if isinstance(pred, DemandPrediction):
        out["coverage_p10_p90"] = float(np.mean((pred.p10 <= y) & (y <= pred.p90)))
    return out


def take(pred: DemandPrediction, mask: npt.NDArray[np.bool_]) -> DemandPrediction:
    return DemandPrediction(pred.p10[mask], pred.p50[mask], pred.p90[mask], pred.mean[mask])


def by_group(
    y: FloatArray,
    pred: DemandPrediction,
    zone: npt.NDArray[np.int64],
    scale: float,
    key: npt.NDArray[Any],
) -> dict[str, dict[str, Any]]:
    """Model metrics per value of ``key`` (horizon, cutoff hour)."""
    out: dict[str, dict[str, Any]] = {}
    for k in np.unique(key):
        m = key == k
        out[str(k)] = {"n_points": int(m.sum()), **metrics(y[m], take(pred, m), zone[m], scale)}
    return out


@dataclass(frozen=True)
class FoldScores:
    """Every protocol of one fold: model, baselines, by horizon, the bottom-up total."""

    fold: Fold
    protocols: dict[str, Any]
    n_zones: int
    mase_scale: float


def score_fold(
    bundle: DemandBundle,
    table: pd.DataFrame,
    freq: str,
    fold: Fold,
    covariates: tuple[str, ...] = (),
) -> FoldScores:
    """Score a bundle trained before ``fold.train_end`` on every protocol of the fold."""
    panel = DemandPanel.from_table(table, freq, end=fold.test_end, covariates=covariates)
    zones = scored_zones(panel, fold.train_end)
    scale = insample_scale(panel, zones, fold.train_end)
    model = bundle.model(freq)
    out: dict[str, Any] = {}
    day_ahead: tuple[DemandQueries, DemandPrediction] | None = None
    for protocol in protocols(freq, fold):
        q = protocol_queries(panel, protocol, zones)
        y = actuals(panel, q)
        pred = bundle.predict_queries(panel, q)
        base = baseline_predictions(panel, q)
        entry: dict[str, Any] = {
            "n_points": len(q),
            "model": metrics(y, pred, q.zone, scale),
            "baselines": {k: metrics(y, v, q.zone, scale) for k, v in base.items()},
            "by_horizon": by_group(y, pred, q.zone, scale, q.horizon),
            "total": total_metrics(y, pred, q, model.total_conformal, freq),
        }
        if protocol.name == "day_ahead":
            day_ahead = (q, pred)
        elif protocol.name == "intraday" and day_ahead is not None:
            entry["by_cutoff"] = _by_cutoff(panel, y, q, pred, day_ahead, scale)
        out[protocol.name] = entry
    return FoldScores(fold, out, len(zones), scale)


def backtest(
    table: pd.DataFrame,
    freq: str,
    folds: list[Fold],
    spec: DemandFeatureSpec | None = None,
    config: DemandTrainConfig | None = None,
) -> list[FoldScores]:
    """Rolling-origin backtest: refit on everything before each fold, score the fold."""
    spec = spec or spec_for(freq)
    ts = pd.to_datetime(table[s.TS])
    out = []
    for fold in folds:
        bundle = train_demand(table[ts < fold.train_end], freq, fold.train_end, spec, config).bundle
        out.append(score_fold(bundle, table[ts < fold.test_end], freq, fold, spec.covariates))
    return out


def total_metrics(
    y: np.ndarray, pred: DemandPrediction, q: DemandQueries, offsets: list[float], freq: str
) -> dict[str, Any]:
    """The bottom-up city total per (origin, period): sum of zone means, its calibrated window."""
    g = (
        pd.DataFrame({"o": q.origin, "t": q.target, "y": y, "m": pred.mean})
        .groupby(["o", "t"])
        .sum()
    )
    h = np.asarray(g.index.get_level_values("t") - g.index.get_level_values("o")) + 1
    off = np.asarray(offsets)[horizon_bucket(h, freq)] if offsets else np.zeros(len(g))
    lo, hi = total_window(g["m"].to_numpy(), off)
    yt = g["y"].to_numpy()
    err = np.abs(g["m"].to_numpy() - yt)
    return {
        "n_points": len(g),
        "mae": float(err.mean()),
        "wape": float(err.sum() / yt.sum()) if yt.sum() > 0 else None,
        "coverage_p10_p90": float(np.mean((lo <= yt) & (yt <= hi))),
    }


def _by_cutoff(
    panel: DemandPanel,
    y: np.ndarray,
    q: DemandQueries,
    pred: DemandPrediction,
    day_ahead: tuple[DemandQueries, DemandPrediction],
    scale: float,
) -> dict[str, Any]:
    """Per cutoff: the re-plan's metrics and the midnight plan's on the same points."""
    dq, dpred = day_ahead
    n = panel.n_periods
    where = pd.Index(dq.zone * n + dq.target).get_indexer(q.zone * n + q.target)
    midnight = take(dpred, where)
    hour = np.asarray(panel.ts_of(q.origin).hour)
    out: dict[str, Any] = {}
    for h in np.unique(hour):
        m = hour == h
        out[f"{h:02d}:00"] = {
            "n_points": int(m.sum()),
            "model": metrics(y[m], take(pred, m), q.zone[m], scale),
            "day_ahead_same_points": metrics(y[m], take(midnight, m), q.zone[m], scale),
        }
    return out
