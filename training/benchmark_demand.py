"""``doorstep benchmark demand``: the reproducible demand protocol (a contract; see the README).

Train on every period before ``test_from``; evaluate every day from ``test_from`` to the last
day of the table, each day a rolling origin that sees the actual volume before it. Points are
every zone seen before ``test_from`` x every period of the test days (missing counts as zero);
the model (its point is P50) and the baselines are scored on the same points.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from doorstep.demand_bundle import DemandPrediction, horizon_bucket, total_window
from features import schema as s
from features.demand import check_freq, read_demand_file, validate_demand
from features.demand_features import DemandFeatureSpec, DemandPanel, DemandQueries, spec_for
from training.demand import DemandTrainConfig, train_demand
from training.demand_backtest import (
    Fold,
    actuals,
    baseline_predictions,
    by_group,
    insample_scale,
    metrics,
    protocol_queries,
    protocols,
    scored_zones,
    take,
)


def load_demand_history(path: str | Path, freq: str) -> pd.DataFrame:
    """A demand file (CSV or Parquet: zone_id, ts, volume) through validation; bad rows are
    dropped (the CLI reports how many)."""
    return validate_demand(read_demand_file(path), freq, where=str(path)).table


def run_demand_benchmark(
    table: pd.DataFrame,
    freq: str,
    test_from: str | pd.Timestamp,
    holidays_country: str | None = None,
    *,
    config: DemandTrainConfig | None = None,
    spec: DemandFeatureSpec | None = None,
) -> dict[str, Any]:
    """Train before ``test_from``, score every protocol of ``freq`` and every baseline.

    ``spec`` (default: ``spec_for(freq, holidays_country)``) and ``config`` (default:
    ``DemandTrainConfig.for_freq(freq)``) are for experiments; the CLI passes neither.
    """
    freq = check_freq(freq)
    test = pd.Timestamp(test_from)
    ts = pd.to_datetime(table[s.TS])
    if not (ts >= test).any():
        raise ValueError(f"--test-from {test.date()}: no period on or after it in the table")
    spec = spec or spec_for(freq, holidays_country)
    start = time.perf_counter()
    train = train_demand(table[ts < test], freq, test, spec, config)
    fit_seconds = time.perf_counter() - start
    fold = Fold(test, test, ts.max().normalize() + pd.Timedelta(days=1))
    panel = DemandPanel.from_table(table, freq, end=fold.test_end, covariates=spec.covariates)
    zones = scored_zones(panel, test)
    scale = insample_scale(panel, zones, test)
    model = train.bundle.model(freq)
    out: dict[str, Any] = {}
    day_ahead: tuple[DemandQueries, DemandPrediction] | None = None
    for protocol in protocols(freq, fold):
        q = protocol_queries(panel, protocol, zones)
        y = actuals(panel, q)
        pred = train.bundle.predict_queries(panel, q)
        entry: dict[str, Any] = {
            "n_points": len(q),
            "model": metrics(y, pred, q.zone, scale),
            "baselines": {
                k: metrics(y, v, q.zone, scale) for k, v in baseline_predictions(panel, q).items()
            },
            "by_horizon": by_group(y, pred, q.zone, scale, q.horizon),
            "total": _total(y, pred, q, model.total_conformal, freq),
        }
        if protocol.name == "day_ahead":
            day_ahead = (q, pred)
        elif protocol.name == "intraday" and day_ahead is not None:
            entry["by_cutoff"] = _by_cutoff(panel, y, q, pred, day_ahead, scale)
        out[protocol.name] = entry
    return {
        "protocols": out,
        "fit_seconds": fit_seconds,
        "freq": freq,
        "test_from": str(test.date()),
        "test_days": len(fold.days),
        "n_zones": len(zones),
        "mase_scale": scale,
        "holidays_country": holidays_country,
        "feature_set": train.bundle.feature_set,
        "best_iteration": train.best_iteration,
        "head": train.head,
        "validation_mae": train.validation_mae,
        "n_train_rows": train.n_rows,
        "calibration_offsets": train.calibration,
    }


def _total(
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
