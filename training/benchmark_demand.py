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

import pandas as pd

from features import schema as s
from features.demand import check_freq, read_demand_file, validate_demand
from features.demand_features import DemandFeatureSpec, spec_for
from training.demand import DemandTrainConfig, train_demand
from training.demand_backtest import Fold, score_fold


def load_demand_history(path: str | Path, freq: str) -> pd.DataFrame:
    """A demand file (CSV or Parquet: zone_id, ts, volume) through validation; bad rows are
    dropped (``doorstep demand-table`` lists them with their reasons)."""
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
    scores = score_fold(train.bundle, table, freq, fold, spec.covariates)
    return {
        "protocols": scores.protocols,
        "fit_seconds": fit_seconds,
        "freq": freq,
        "test_from": str(test.date()),
        "test_days": len(fold.days),
        "n_zones": scores.n_zones,
        "mase_scale": scores.mase_scale,
        "holidays_country": holidays_country,
        "feature_set": train.bundle.feature_set,
        "best_iteration": train.best_iteration,
        "head": train.head,
        "validation_mae": train.validation_mae,
        "n_train_rows": train.n_rows,
        "calibration_offsets": train.calibration,
    }


def best_baseline(baselines: dict[str, dict[str, Any]], metric: str = "wape") -> str | None:
    """The baseline with the lowest ``metric``, skipping those without one (WAPE is null
    when the scored actuals sum to zero); None if no baseline has it."""
    scored = {k: m[metric] for k, m in baselines.items() if m.get(metric) is not None}
    return min(scored, key=lambda k: scored[k]) if scored else None


def fmt(value: float | None, digits: int = 3) -> str:
    """A metric for a table: ``-`` where it is null."""
    return "-" if value is None else f"{value:.{digits}f}"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per protocol: name, points, WAPE, MASE, coverage, best baseline and its WAPE,
    model WAPE over it. Nulls print as ``-``, never crash the table."""
    rows: list[tuple[str, ...]] = []
    for name, p in results["protocols"].items():
        m = p["model"]
        best = best_baseline(p["baselines"])
        base = None if best is None else p["baselines"][best]["wape"]
        ratio = m["wape"] / base if m["wape"] is not None and base else None
        rows.append(
            (
                name,
                f"{p['n_points']:,}",
                fmt(m["wape"]),
                fmt(m["mase"]),
                fmt(m["coverage_p10_p90"]),
                "-" if best is None else f"{best} {fmt(base)}",
                fmt(ratio),
            )
        )
    return rows
