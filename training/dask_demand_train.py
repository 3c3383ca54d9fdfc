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
import numpy.typing as npt
import pandas as pd

from doorstep.demand_bundle import DemandBundle, FreqModel
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
    DemandSplit,
    DemandTrainConfig,
    DemandTrainResult,
    _lgb_params,
    checked_names,
    fit_heads_with,
    make_split,
    set_offsets,
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
    names = checked_names(freq, spec, config)
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


class _DaskFitter:
    """``training.demand.HeadFitter`` with LightGBM's Dask estimators on the zone partitions'
    rows, each carrying its Poisson offset and quantile label (``_targets``)."""

    def __init__(
        self,
        featurizer: DemandFeaturizer,
        names: list[str],
        fit: dd.DataFrame,
        valid: dd.DataFrame,
        config: DemandTrainConfig,
        client: Any,
    ) -> None:
        base = FreqModel(featurizer, {}, head="count", level_feature=config.level_feature)
        meta = fit._meta.assign(**{OFFSET: np.empty(0, np.float64), ROOT: np.empty(0, np.float64)})
        fit = fit.map_partitions(_targets, base, names, meta=meta)
        valid = valid.map_partitions(_targets, base, names, meta=meta)
        self.fit, self.valid = nonempty(fit, client), nonempty(valid, client)
        self.names, self.config, self.client = names, config, client
        self._both: dd.DataFrame | None = None

    @staticmethod
    def _kind(alpha: float | None) -> tuple[str, float, str]:
        return ("poisson", 0.5, LABEL) if alpha is None else ("quantile", alpha, ROOT)

    def early_stopped(self, alpha: float | None) -> tuple[lgb.Booster, int]:
        objective, a, label = self._kind(alpha)
        return _early_stopped(
            objective, a, self.fit, self.valid, label, self.names, self.config, self.client
        )

    def refit(self, alpha: float | None, rounds: int) -> lgb.Booster:
        if self._both is None:
            self._both = dd.concat([self.fit, self.valid])
        objective, a, label = self._kind(alpha)
        return _fit(
            objective, a, rounds, self._both, label, self.names, self.config, self.client
        ).booster_

    def valid_expected(
        self, model: FreqModel
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        meta = pd.DataFrame({"y": [0.0], "m": [0.0]}).iloc[:0]
        ym = self.valid.map_partitions(_expected, model, self.names, meta=meta).compute()
        return ym["y"].to_numpy(), ym["m"].to_numpy()

    def valid_mae(self, model: FreqModel) -> float:
        return _validation_mae(self.valid, model, self.names)


def fit_heads_dask(
    featurizer: DemandFeaturizer,
    names: list[str],
    fit: dd.DataFrame,
    valid: dd.DataFrame,
    config: DemandTrainConfig,
    client: Any,
) -> tuple[FreqModel, int, dict[str, float]]:
    """``training.demand.fit_heads_with`` with LightGBM's Dask estimators: each head
    early-stopped on the validation rows, the head whose P50 has the lower validation MAE
    kept, its boosters (and the Poisson one) refitted on fit + valid."""
    fitter = _DaskFitter(featurizer, names, fit, valid, config, client)
    return fit_heads_with(fitter, featurizer, config)


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
    set_offsets(model, rows, coverage)


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
