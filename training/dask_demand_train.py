"""Demand training on Dask: the pandas path's windows, heads and calibration, on a cluster.

The training rows (zone x origin x horizon) are what grows: a national carrier's thousands of
zones, hourly, over years give tens of millions of them (each hourly zone-day is ~100 rows),
far more than its demand table. So they are never gathered: each zone partition computes its
rows of every window (``training.dask_demand``), and the boosters are LightGBM's Dask
estimators (Poisson with the level offset as init score, quantile on sqrt(volume) minus the
level), trained data-parallel on the workers. What comes to the driver is small: the
validation rows' counts and expected volumes (the negative-binomial size), per-partition error
sums (the head choice), and the calibration rows' scores (the conformal offsets: a quantile
over every zone and the city total's per-period sums). The result is the pandas path's
``DemandTrainResult`` holding a ``DemandBundle``: registration and serving do not change.

Differences from ``training.demand.train_demand``, on purpose: no subsampling of training rows
(a cluster is for using all of them), and early stopping is read off the validation curve of a
full-length fit (LightGBM's Dask estimators record it but do not stop early).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import dask
import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
import pandas as pd

from doorstep.demand_bundle import MEAN, QUANTILES, WINDOWS, DemandBundle, FreqModel
from features import schema as s
from features.demand import check_freq
from features.demand_features import CATEGORICAL, DemandFeatureSpec, DemandFeaturizer, spec_for
from training.dask_demand import (
    LABEL,
    ORIGIN,
    TARGET,
    city_totals,
    feature_frame,
    feature_meta,
    fit_featurizer_dask,
    partition_panel,
)
from training.demand import (
    HEADS,
    DemandSplit,
    DemandTrainConfig,
    DemandTrainResult,
    _lgb_params,
    class_offsets,
    fit_nb_size,
    make_split,
    mondrian_offsets,
    point_size,
    window_queries,
)
from training.engine import nonempty

OFFSET, ROOT = "_log_offset", "_sqrt_target"  # the Poisson init score, the quantile label
MIN_ROUNDS = 10
SCORES = ("score", "cls", "m", "y", "o", "t")  # per calibration row (_scores)


@dataclass(frozen=True)
class DaskDemandWindows:
    """The split, the fitted featurizer and the fit / validation / calibration rows (Dask
    DataFrames of features, label, zone, origin and target)."""

    split: DemandSplit
    featurizer: DemandFeaturizer
    names: list[str]
    fit: dd.DataFrame
    valid: dd.DataFrame
    calibration: dd.DataFrame
    start: pd.Timestamp


def _part_windows(
    part: pd.DataFrame,
    totals: pd.Series,
    featurizer: DemandFeaturizer,
    split: DemandSplit,
    config: DemandTrainConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    spec: DemandFeatureSpec = featurizer.spec_
    names = spec.feature_names()
    panel = partition_panel(part, totals, spec, split.test_from)
    if panel is None:
        return feature_meta(names), feature_meta(names), feature_meta(names)
    horizon = None if spec.freq == "h" else config.daily_horizon
    hours, cal_hours = config.origin_hours, config.calib_origin_hours
    windows = (
        (split.fit_from, split.valid_from, hours),
        (split.valid_from, split.calib_from, hours),
        (split.calib_from, split.test_from, cal_hours),
    )
    fit, valid, cal = (
        feature_frame(featurizer, panel, window_queries(panel, a, b, h, horizon), names)
        for a, b, h in windows
    )
    return fit, valid, cal


def demand_windows_dask(
    table: dd.DataFrame,
    freq: str,
    test_from: str | pd.Timestamp,
    spec: DemandFeatureSpec,
    config: DemandTrainConfig,
) -> DaskDemandWindows:
    """``training.demand.demand_windows`` on zone partitions (``dask_demand.by_zone``)."""
    if spec.freq != freq:
        raise ValueError(f"spec: built for freq {spec.freq!r}, training asked for {freq!r}")
    if config.head not in HEADS:
        raise ValueError(f"head: must be one of {list(HEADS)}, got {config.head!r}")
    if config.window not in WINDOWS:
        raise ValueError(f"window: must be one of {list(WINDOWS)}, got {config.window!r}")
    names = spec.feature_names()
    if config.level_feature is not None and config.level_feature not in names:
        raise ValueError(f"level_feature {config.level_feature!r}: not one of the spec's features")
    test = pd.Timestamp(test_from)
    totals = city_totals(table, freq, test)
    split = make_split(pd.DataFrame({s.TS: [totals.index[0]]}), test, config)
    featurizer = fit_featurizer_dask(table, spec, split.test_from, totals)
    meta = feature_meta(names)
    parts = [
        dask.delayed(_part_windows, nout=3)(p, totals, featurizer, split, config)
        for p in table.to_delayed()
    ]
    frames = [
        dd.from_delayed([p[i] for p in parts], meta=meta, verify_meta=False) for i in range(3)
    ]
    fit, valid, cal = dask.persist(*frames)
    return DaskDemandWindows(split, featurizer, names, fit, valid, cal, totals.index[0])


def _targets(frame: pd.DataFrame, model: FreqModel, names: list[str]) -> pd.DataFrame:
    """The Poisson booster's offset and the quantile boosters' label, per row."""
    X = frame[names].to_numpy(np.float32)
    y = frame[LABEL].to_numpy(np.float64)
    return frame.assign(**{OFFSET: model.log_offset(X), ROOT: np.sqrt(y) - model.sqrt_base(X)})


def _regressor(
    objective: str, alpha: float, rounds: int, config: DemandTrainConfig, client: Any
) -> lgb.DaskLGBMRegressor:
    params = _lgb_params(config.booster, objective, alpha, config)
    params.pop("num_threads")
    params.pop("verbosity")
    return lgb.DaskLGBMRegressor(
        client=client, n_estimators=rounds, n_jobs=config.num_threads, verbose=-1, **params
    )


def _fit(
    objective: str,
    alpha: float,
    rounds: int,
    frame: dd.DataFrame,
    label: str,
    names: list[str],
    config: DemandTrainConfig,
    client: Any,
    valid: dd.DataFrame | None = None,
) -> lgb.DaskLGBMRegressor:
    """One booster; the Poisson one starts from the level offset (``init_score``)."""
    poisson = objective == "poisson"
    kw: dict[str, Any] = {"init_score": frame[OFFSET] if poisson else None}
    if valid is not None:
        kw["eval_set"] = [(valid[names], valid[label])]
        if poisson:
            kw["eval_init_score"] = [valid[OFFSET]]
    cats = [n for n in CATEGORICAL if n in names]
    model = _regressor(objective, alpha, rounds, config, client)
    return model.fit(frame[names], frame[label], categorical_feature=cats, **kw)


def _early_stopped(
    objective: str,
    alpha: float,
    fit: dd.DataFrame,
    valid: dd.DataFrame,
    label: str,
    names: list[str],
    config: DemandTrainConfig,
    client: Any,
) -> tuple[lgb.Booster, int]:
    """The booster at its best validation round (what early stopping keeps) and the rounds a
    refit uses (at least ``MIN_ROUNDS``, as ``training.demand`` does)."""
    model = _fit(
        objective, alpha, config.booster.n_estimators, fit, label, names, config, client, valid
    )
    curve = next(iter(next(iter(model.evals_result_.values())).values()))
    best = int(np.argmin(curve)) + 1
    booster = lgb.Booster(model_str=model.booster_.model_to_string(num_iteration=best))
    return booster, max(best, MIN_ROUNDS)


def _p50_error(frame: pd.DataFrame, model: FreqModel, names: list[str]) -> pd.DataFrame:
    X = frame[names].to_numpy(np.float32)
    err = np.abs(model.raw(X)[:, 1] - frame[LABEL].to_numpy(np.float64))
    return pd.DataFrame({"sum": [float(err.sum())], "n": [len(err)]})


def _validation_mae(valid: dd.DataFrame, model: FreqModel, names: list[str]) -> float:
    meta = pd.DataFrame({"sum": np.empty(0, float), "n": np.empty(0, np.int64)})
    parts = valid.map_partitions(_p50_error, model, names, meta=meta).compute()
    return float(parts["sum"].sum() / parts["n"].sum())


def _expected(frame: pd.DataFrame, model: FreqModel, names: list[str]) -> pd.DataFrame:
    X = frame[names].to_numpy(np.float32)
    return pd.DataFrame({"y": frame[LABEL].to_numpy(np.float64), "m": model.expected(X)})


def fit_heads_dask(
    featurizer: DemandFeaturizer,
    names: list[str],
    fit: dd.DataFrame,
    valid: dd.DataFrame,
    config: DemandTrainConfig,
    client: Any,
) -> tuple[FreqModel, int, dict[str, float]]:
    """``training.demand.fit_heads`` with LightGBM's Dask estimators: each head early-stopped
    on the validation rows, the head whose P50 has the lower validation MAE kept, its boosters
    (and the Poisson one) refitted on fit + valid."""
    count = FreqModel(featurizer, {}, head="count", level_feature=config.level_feature)
    meta = fit._meta.assign(**{OFFSET: np.empty(0, np.float64), ROOT: np.empty(0, np.float64)})
    fit = fit.map_partitions(_targets, count, names, meta=meta)
    valid = valid.map_partitions(_targets, count, names, meta=meta)
    fit, valid = nonempty(fit, client), nonempty(valid, client)
    mean_fit, mean_best = _early_stopped("poisson", 0.5, fit, valid, LABEL, names, config, client)
    count.boosters[MEAN] = mean_fit
    ym = valid.map_partitions(
        _expected, count, names, meta=pd.DataFrame({"y": [0.0], "m": [0.0]}).iloc[:0]
    ).compute()
    y_val, mean_val = ym["y"].to_numpy(), ym["m"].to_numpy()
    count.nb_size = fit_nb_size(y_val, mean_val)
    count.point_size = point_size(y_val, mean_val, count.nb_size)
    losses, best = {}, {"count": mean_best}
    if config.head in ("count", "auto"):
        losses["count"] = _validation_mae(valid, count, names)
    quantile = FreqModel(
        featurizer, {MEAN: mean_fit}, head="quantile", level_feature=config.level_feature
    )
    if config.head in ("quantile", "auto") or config.window == "quantile":
        for alpha in QUANTILES:
            quantile.boosters[alpha], best[f"q{alpha:g}"] = _early_stopped(
                "quantile", alpha, fit, valid, ROOT, names, config, client
            )
        if config.head != "count":
            losses["quantile"] = _validation_mae(valid, quantile, names)
    model = min((count, quantile), key=lambda m: losses.get(m.head, np.inf))
    model.window = config.window
    if featurizer.spec_.freq == "h":
        model.origin_groups = tuple(sorted(config.calib_origin_hours))
    both = dd.concat([fit, valid])
    model.boosters[MEAN] = _fit(
        "poisson", 0.5, mean_best, both, LABEL, names, config, client
    ).booster_
    model.nb_size, model.point_size = count.nb_size, count.point_size
    if model.head == "quantile" or model.window == "quantile":
        for alpha in QUANTILES:
            rounds = best[f"q{alpha:g}"]
            model.boosters[alpha] = _fit(
                "quantile", alpha, rounds, both, ROOT, names, config, client
            ).booster_
    return model, best["count" if model.head == "count" else "q0.5"], losses


def _scores(frame: pd.DataFrame, model: FreqModel, names: list[str]) -> pd.DataFrame:
    """Per calibration row: its window score, Mondrian class, expected volume and count."""
    X = frame[names].to_numpy(np.float32)
    y = frame[LABEL].to_numpy(np.float64)
    o, t = frame[ORIGIN].to_numpy(np.int64), frame[TARGET].to_numpy(np.int64)
    h = t - o + 1
    return pd.DataFrame(
        {
            "score": model.window_score(X, y),
            "cls": model.offset_class(X, h),
            "m": model.predict(X, h).mean,
            "y": y,
            "o": o,
            "t": t,
        }
    )


def calibrate_dask(
    model: FreqModel, calibration: dd.DataFrame, names: list[str], coverage: float
) -> None:
    """``training.demand.calibrate`` on the calibration rows' scores, computed where the rows
    are: the zones' offsets per class, the total's per horizon bucket on per-period sums."""
    ints = ("cls", "o", "t")
    meta = pd.DataFrame({c: np.empty(0, np.int64 if c in ints else np.float64) for c in SCORES})
    rows = calibration.map_partitions(_scores, model, names, meta=meta).compute()
    model.conformal = class_offsets(
        rows["score"].to_numpy(), rows["cls"].to_numpy(), model.n_classes(), coverage
    )
    g = rows.groupby(["o", "t"])[["y", "m"]].sum()
    h = g.index.get_level_values("t") - g.index.get_level_values("o") + 1
    tscore = np.abs(np.sqrt(g["y"].to_numpy()) - np.sqrt(np.maximum(g["m"].to_numpy(), 0.0)))
    model.total_conformal = mondrian_offsets(tscore, h, model.freq, coverage)


def train_demand_dask(
    table: dd.DataFrame,
    freq: str,
    test_from: str | pd.Timestamp,
    client: Any,
    spec: DemandFeatureSpec | None = None,
    config: DemandTrainConfig | None = None,
) -> DemandTrainResult:
    """``train_demand`` on a cluster: ``table`` partitioned by zone (``dask_demand.by_zone``
    or ``demand_table_dask``); returns the same ``DemandTrainResult``."""
    freq = check_freq(freq)
    config = config or DemandTrainConfig.for_freq(freq)
    spec = spec or spec_for(freq)
    start = time.perf_counter()
    table = client.persist(table)  # read (and shuffled) once, used by every step
    w = demand_windows_dask(table, freq, test_from, spec, config)
    model, best, losses = fit_heads_dask(w.featurizer, w.names, w.fit, w.valid, config, client)
    calibrate_dask(model, w.calibration, w.names, config.coverage)
    window = (str(w.start), str(w.split.test_from))
    bundle = DemandBundle({freq: model}, training_window=window, num_threads=1)
    n = {k: int(f.shape[0].compute()) for k, f in (("fit", w.fit), ("valid", w.valid))}
    return DemandTrainResult(
        bundle=bundle,
        split=w.split,
        best_iteration=best,
        head=model.head,
        validation_mae=losses,
        fit_seconds=time.perf_counter() - start,
        n_rows={**n, "calibration": int(w.calibration.shape[0].compute())},
        calibration={"zones": model.conformal, "total": model.total_conformal},
    )
