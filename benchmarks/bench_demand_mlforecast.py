"""Peer comparison: doorstep's demand model against Nixtla mlforecast on the same data and folds.

Protocol (``doorstep benchmark demand``'s ``day_ahead``): train on every period before
``--test-from``; for each test day D forecast D (daily: one period; hourly: its 24 hours) from
the data up to D, without refitting. Points: every zone seen before ``--test-from`` x every
period of the test days, a missing period counting as zero; both models are scored by the same
functions (``training.demand_backtest.metrics``) on exactly the same points.

mlforecast setup, comparable to doorstep's: a global LightGBM over all zone series with the same
booster settings, the spec's lags, rolling means of the most recent lag (windows of the spec),
a seasonal mean, an exponentially weighted mean with doorstep's level half-lives (the daily
model's anchor ``ewm_mean_5``), calendar features (weekday, hour, the same holiday calendar) and the zone as a
categorical static feature. Accuracy is compared on the point (doorstep's P50, mlforecast's
forecast); mlforecast's conformal intervals are not scored: they are calibrated only on series
long enough for its backtest windows, and refuse to forecast after ``update`` on a set of
series that includes zones that appeared late, so its coverage is reported as null. Two
objectives are reported, fixed before looking at the test days: ``poisson`` (a count target, as
doorstep's count head) and LightGBM's default ``l2``. Series are zero-filled from each zone's
first period to the end of the data, the information the contract gives both models.

    python benchmarks/bench_demand_mlforecast.py --history changshu_daily.parquet --freq d \\
        --test-from 2024-08-01 --holidays CN --out benchmarks/results/demand_mlforecast_changshu_daily.json

mlforecast is an optional benchmark dependency (``pip install -e '.[bench]'``); without it, or
without the data, the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features import schema as s
from features.demand_features import DemandPanel, calendar_table, spec_for
from training.benchmark_demand import load_demand_history
from training.demand import DemandTrainConfig, train_demand
from training.demand_backtest import (
    Fold,
    Protocol,
    actuals,
    baseline_predictions,
    insample_scale,
    metrics,
    protocol_queries,
    scored_zones,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "demand_mlforecast.json"
OBJECTIVES: tuple[str, ...] = ("poisson", "l2")


@dataclass(frozen=True)
class Setup:
    """Per frequency: lags, rolling windows (over the most recent lag), date features."""

    freq: str
    pandas_freq: str
    lags: tuple[int, ...]
    windows: tuple[int, ...]
    season: int
    date_features: tuple[str, ...]
    horizon: int  # periods forecast at each day-ahead origin
    ewm_halflives: tuple[int, ...] = ()  # periods; doorstep's spec_for(freq).ewm


SETUPS = {
    "d": Setup("d", "D", (1, 2, 7, 14), (7, 28, 56), 7, ("dayofweek", "day"), 1, (5,)),
    "h": Setup("h", "h", (1, 2, 24, 168), (24, 168, 672), 168, ("hour", "dayofweek"), 24),
}


def zero_filled(table: pd.DataFrame, setup: Setup, end: pd.Timestamp) -> pd.DataFrame:
    """Each zone's series from its first period to ``end`` (exclusive), missing = 0, in
    mlforecast's ``unique_id, ds, y`` form."""
    panel = DemandPanel.from_table(table, setup.freq, end=end)
    vals = np.nan_to_num(panel.values, nan=np.nan)
    zone, idx = np.nonzero(np.isfinite(vals))
    return pd.DataFrame(
        {
            "unique_id": pd.Categorical(panel.zones[zone].astype(str)),
            "ds": panel.ts_of(idx),
            "y": vals[zone, idx],
        }
    )


def holiday_flag(country: str | None):  # type: ignore[no-untyped-def]
    """A date feature: 1 on the country's public holidays (doorstep's own calendar table)."""

    def holiday(dates: pd.DatetimeIndex) -> np.ndarray:
        days = pd.DatetimeIndex(dates).normalize()
        cal = calendar_table(pd.DatetimeIndex(days.unique()), country)
        return cal["holiday"].reindex(days).to_numpy(dtype=float)

    return holiday


def fit_mlforecast(
    train: pd.DataFrame,
    setup: Setup,
    objective: str,
    country: str | None,
    config: DemandTrainConfig,
) -> Any:
    import lightgbm as lgb
    from mlforecast import MLForecast
    from mlforecast.lag_transforms import (
        ExponentiallyWeightedMean,
        RollingMean,
        SeasonalRollingMean,
    )

    b = config.booster
    model = lgb.LGBMRegressor(
        objective=objective,
        learning_rate=b.learning_rate,
        num_leaves=b.num_leaves,
        min_child_samples=b.min_child_samples,
        colsample_bytree=b.feature_fraction,
        subsample=b.bagging_fraction,
        subsample_freq=1,
        reg_lambda=b.lambda_l2,
        max_bin=b.max_bin,
        n_estimators=300,
        random_state=config.seed,
        n_jobs=config.num_threads,
        verbosity=-1,
    )
    transforms: list[Any] = [RollingMean(window_size=w) for w in setup.windows]
    transforms.append(SeasonalRollingMean(season_length=setup.season, window_size=4))
    transforms += [
        ExponentiallyWeightedMean(alpha=1.0 - 0.5 ** (1.0 / h)) for h in setup.ewm_halflives
    ]
    fcst = MLForecast(
        models={"lgbm": model},
        freq=setup.pandas_freq,
        lags=list(setup.lags),
        lag_transforms={1: transforms},
        date_features=[*setup.date_features, holiday_flag(country)],
        num_threads=config.num_threads,
    )
    fcst.fit(train, static_features=[])
    return fcst


def rolling_day_ahead(
    fcst: Any, full: pd.DataFrame, days: pd.DatetimeIndex, setup: Setup
) -> pd.DataFrame:
    """For each test day, ``setup.horizon`` periods from the data before it, no refit: predict,
    then ``update`` the stored series with the day's actuals. Only the series seen in training
    are updated: a zone appearing in the test days is never scored, and mlforecast's
    exponentially weighted mean cannot take a new series in ``update``."""
    parts = []
    known = set(fcst.ts.uids)
    full = full[full["unique_id"].isin(known)]
    for day in days:
        parts.append(fcst.predict(setup.horizon).assign(origin=day))
        seen = full[(full["ds"] >= day) & (full["ds"] < day + pd.Timedelta(days=1))]
        fcst.update(seen)
    return pd.concat(parts, ignore_index=True)


def score_points(
    panel: DemandPanel, protocol: Protocol, zones: np.ndarray, frame: pd.DataFrame | None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """The protocol's points, their actuals, the baselines and (given) the peer's forecast."""
    q = protocol_queries(panel, protocol, zones)
    y = actuals(panel, q)
    pred = None
    if frame is not None:
        key = pd.MultiIndex.from_arrays(
            [frame["unique_id"].astype(str), pd.DatetimeIndex(frame["ds"])]
        )
        want = pd.MultiIndex.from_arrays([panel.zones[q.zone].astype(str), panel.ts_of(q.target)])
        f = frame.set_index(key).reindex(want)
        pred = np.nan_to_num(np.maximum(f["lgbm"].to_numpy(dtype=float), 0.0), nan=0.0)
    return q.zone, y, baseline_predictions(panel, q), pred


def run(table: pd.DataFrame, freq: str, test_from: str, country: str | None) -> dict[str, Any]:
    setup = SETUPS[freq]
    test = pd.Timestamp(test_from)
    ts = pd.to_datetime(table[s.TS])
    end = ts.max().normalize() + pd.Timedelta(days=1)
    fold = Fold(test, test, end)
    protocol = Protocol("day_ahead", fold.days, setup.horizon)
    panel = DemandPanel.from_table(table, freq, end=end)
    zones = scored_zones(panel, test)
    scale = insample_scale(panel, zones, test)
    zone, y, baselines, _ = score_points(panel, protocol, zones, None)
    out: dict[str, Any] = {
        "freq": freq,
        "test_from": test_from,
        "protocol": "day_ahead",
        "n_points": len(y),
        "n_zones": len(zones),
        "baselines": {k: metrics(y, v, zone, scale) for k, v in baselines.items()},
        "models": {},
    }
    config = DemandTrainConfig.for_freq(freq)

    start, cpu = time.perf_counter(), time.process_time()
    bundle = train_demand(table[ts < test], freq, test, spec_for(freq, country), config).bundle
    fit_s, fit_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    q = protocol_queries(panel, protocol, zones)
    pred = bundle.predict_queries(panel, q)
    out["models"]["doorstep"] = {
        **metrics(y, pred, zone, scale),
        "fit_seconds": fit_s,
        "predict_seconds": time.perf_counter() - start,
        "fit_cpu_seconds": fit_cpu,
        "predict_cpu_seconds": time.process_time() - cpu,
    }

    full = zero_filled(table, setup, end)
    for objective in OBJECTIVES:
        start, cpu = time.perf_counter(), time.process_time()
        fcst = fit_mlforecast(full[full["ds"] < test], setup, objective, country, config)
        fit_s, fit_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        frame = rolling_day_ahead(fcst, full, fold.days, setup)
        predict_s, predict_cpu = time.perf_counter() - start, time.process_time() - cpu
        _, _, _, peer = score_points(panel, protocol, zones, frame)
        assert peer is not None
        out["models"][f"mlforecast_{objective}"] = {
            **metrics(y, peer, zone, scale),
            "fit_seconds": fit_s,
            "predict_seconds": predict_s,
            "fit_cpu_seconds": fit_cpu,
            "predict_cpu_seconds": predict_cpu,
        }
    return out


def table_lines(results: dict[str, Any]) -> list[str]:
    head = f"{'model':<22}{'WAPE':>8}{'MASE':>8}{'MAE':>8}{'cover':>8}{'fit s':>9}{'pred s':>9}"
    head += f"{'fit cpu':>9}{'pred cpu':>9}"
    lines = [head]
    for name, m in results["models"].items():
        cover = "-" if m["coverage_p10_p90"] is None else f"{m['coverage_p10_p90']:.3f}"
        lines.append(
            f"{name:<22}{m['wape']:>8.3f}{m['mase']:>8.3f}{m['mae']:>8.3f}{cover:>8}"
            f"{m['fit_seconds']:>9.1f}{m['predict_seconds']:>9.1f}"
            f"{m['fit_cpu_seconds']:>9.1f}{m['predict_cpu_seconds']:>9.1f}"
        )
    for name, m in results["baselines"].items():
        lines.append(f"{name:<22}{m['wape']:>8.3f}{m['mase']:>8.3f}{m['mae']:>8.3f}{'-':>8}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--history", type=Path, required=True, help="demand table zone_id, ts, volume"
    )
    parser.add_argument("--freq", choices=sorted(SETUPS), default="d")
    parser.add_argument("--test-from", required=True)
    parser.add_argument("--holidays", default=None, help="holiday country code, e.g. CN")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("mlforecast") is None:
        print("skipped: mlforecast is not installed (pip install -e '.[bench]')")
        return 0
    if not args.history.exists():
        print(f"skipped: no demand table at {args.history}")
        return 0
    table = load_demand_history(args.history, args.freq)
    # a zone younger than the longest lag has null features at first; LightGBM handles them
    warnings.filterwarnings("ignore", message="Found null values")
    results = run(table, args.freq, args.test_from, args.holidays)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"day_ahead, {results['n_points']:,} points, test from {args.test_from} -> {args.out}")
    print("\n".join(table_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
