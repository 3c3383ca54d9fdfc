"""ETA training on Dask: the same features and the same bundle, computed on a cluster.

Nothing here re-implements a feature. The deliveries are a Dask DataFrame whose partitions
hold whole routes (partitioned by date: a route is one courier-day). Each partition runs the
ordinary per-route code (``EtaFeaturizer.partial``, ``queries_from_deliveries``,
``EtaFeaturizer.transform``); the fitted aggregates are the partitions' per-(key, day) sums
added up (``EtaFeaturizer.fit_parts``), a distributed group-by's map and combine steps. The
boosters are LightGBM's own Dask estimators, trained data-parallel on the workers' partitions;
the result is the same ``EtaBundle`` the pandas path builds, so logging, the registry and the
service do not know which engine trained it.

Differences from ``training.eta.train_eta``, on purpose: no subsampling of training queries (a
cluster is for using all of them), and early stopping is read off the validation curve of a
full-length fit (LightGBM's Dask estimators record it but do not stop early).
"""

from __future__ import annotations

import time
from typing import Any

import dask
import dask.dataframe as dd
import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd

from doorstep.eta_bundle import QUANTILES, EtaBundle, ModeModel, shape
from features import schema as s
from features.eta_features import CATEGORICAL, EtaFeaturizer, Mode, feature_names
from features.eta_queries import QueryBatch, concat_batches, queries_from_deliveries
from features.pair_order import PairOrder
from features.profiles import local_day
from training.engine import nonempty
from training.eta import (
    EtaConfig,
    EtaTrainResult,
    _target,
    conformal_offsets,
    day_of,
    quantile_params,
    quantile_rounds,
    split_days,
    truncated,
)

LABEL, DAY = "_label", "_route_day"
MIN_ROUNDS = 10


def by_route_day(deliveries: pd.DataFrame, npartitions: int) -> dd.DataFrame:
    """A Dask DataFrame of in-memory deliveries with whole route days per partition (the
    index is the route's local day, so a day never straddles two partitions)."""
    day = pd.Index(local_day(deliveries[s.DISPATCH_TIME]), name=DAY)
    frame = deliveries.set_index(day).sort_index(kind="stable")
    return dd.from_pandas(frame, npartitions=npartitions, sort=True)


def read_deliveries_dask(path: str) -> dd.DataFrame:
    """Partitioned Parquet (one folder or file per date, as ``doorstep simulate --partitioned``
    writes): each file holds whole days, so each partition holds whole routes."""
    return dd.read_parquet(path)


def _route_days(part: pd.DataFrame) -> npt.NDArray[np.int64]:
    return np.unique(local_day(part[s.DISPATCH_TIME])) if len(part) else np.empty(0, np.int64)


def _before(part: pd.DataFrame, day: int) -> pd.DataFrame:
    return part[local_day(part[s.DISPATCH_TIME]) < day]


def _partial(part: pd.DataFrame, t_from: int, featurizer: EtaFeaturizer) -> Any:
    history = _before(part.reset_index(drop=True), t_from)
    return featurizer.partial(history) if len(history) else None


def fit_featurizer(
    ddf: dd.DataFrame, t_from: int, featurizer: EtaFeaturizer | None = None
) -> EtaFeaturizer:
    """``EtaFeaturizer.fit`` on the days before ``t_from``: map on partitions, combine here."""
    featurizer = featurizer if featurizer is not None else EtaFeaturizer()
    parts = dask.compute(*[dask.delayed(_partial)(p, t_from, featurizer) for p in ddf.to_delayed()])
    return featurizer.fit_parts([p for p in parts if p is not None])


def _sampled_queries(part: pd.DataFrame, t_from: int, order: PairOrder) -> QueryBatch | None:
    history = _before(part.reset_index(drop=True), t_from)
    batch = queries_from_deliveries(history) if len(history) else None
    return batch.take_queries(order.sample_queries(batch)) if batch and batch.n_queries else None


def fit_pair_order_dask(ddf: dd.DataFrame, t_from: int, featurizer: EtaFeaturizer) -> EtaFeaturizer:
    """``EtaFeaturizer.fit_pair_order`` on the days before ``t_from`` (after ``fit_featurizer``).

    The pair order learns from a sample of at most ``max_day_queries`` history queries a day
    (``PairOrder.sample_queries``). Partitions hold whole days, so each draws its days' share
    of that same sample; only the sample comes to the client, where the models train."""
    order = featurizer.pair_order
    if order is None:
        raise ValueError("pair_order: this featurizer was built without one")
    parts = dask.compute(
        *[dask.delayed(_sampled_queries)(p, t_from, order) for p in ddf.to_delayed()]
    )
    batches = [b for b in parts if b is not None]
    return featurizer.fit_pair_order(concat_batches(batches)) if batches else featurizer


def _window_frame(
    part: pd.DataFrame, featurizer: EtaFeaturizer, mode: Mode, lo: int, hi: int, target: str
) -> pd.DataFrame:
    """Feature rows (+ label and route day) of the queries of routes dispatched in [lo, hi)."""
    names = feature_names(mode)
    part = part.reset_index(drop=True)
    day = local_day(part[s.DISPATCH_TIME]) if len(part) else np.empty(0, np.int64)
    part = part[(day >= lo) & (day < hi)]
    if len(part) == 0:
        return pd.DataFrame({**{n: np.empty(0, np.float32) for n in names},
                             LABEL: np.empty(0), DAY: np.empty(0, np.int64)})  # fmt: skip
    batch = queries_from_deliveries(part)
    out = pd.DataFrame(featurizer.transform(batch, mode), columns=names)
    out[LABEL] = _target(batch.t_label_min, target)
    out[DAY] = batch.q_route_day[batch.t_query]
    return out


def window_features(
    ddf: dd.DataFrame, featurizer: EtaFeaturizer, mode: Mode, lo: int, hi: int, target: str
) -> dd.DataFrame:
    names = feature_names(mode)
    meta = pd.DataFrame({**{n: np.empty(0, np.float32) for n in names},
                         LABEL: np.empty(0), DAY: np.empty(0, np.int64)})  # fmt: skip
    # one task holds the fitted featurizer and every partition depends on it: passed as a
    # literal it is copied into each partition's task, which on a long history is gigabytes
    fitted = dask.delayed(featurizer)
    parts = [dask.delayed(_window_frame)(p, fitted, mode, lo, hi, target) for p in ddf.to_delayed()]
    return dd.from_delayed(parts, meta=meta, verify_meta=False)


def _fit_quantile(
    X: dd.DataFrame,
    y: dd.Series,
    alpha: float,
    config: EtaConfig,
    rounds: int,
    cats: list[str],
    client: Any,
    n_rows: int,
    eval_set: list[tuple[Any, Any]] | None = None,  # (dd.DataFrame, dd.Series) pairs
) -> lgb.DaskLGBMRegressor:
    # ``n_rows`` over all workers: each bags its share at the fraction that caps the total
    params = quantile_params(config, alpha, n_rows)
    params.pop("num_threads")
    params.pop("verbosity")
    model = lgb.DaskLGBMRegressor(
        client=client,
        n_estimators=rounds,
        n_jobs=config.num_threads,
        verbose=-1,
        **params,
    )
    return model.fit(X, y, eval_set=eval_set, eval_metric="quantile", categorical_feature=cats)


def train_eta_dask(
    ddf: dd.DataFrame, test_from: str | pd.Timestamp, config: EtaConfig, client: Any
) -> EtaTrainResult:
    """``train_eta`` on a cluster: profiles, boosters and calibration from the days before
    ``test_from``; returns the same ``EtaTrainResult``."""
    start = time.perf_counter()
    t_from = day_of(test_from)
    days = np.concatenate(dask.compute(*[dask.delayed(_route_days)(p) for p in ddf.to_delayed()]))
    split = split_days(days, t_from, config)
    ddf = ddf.persist()
    featurizer = fit_featurizer(ddf, t_from, config.featurizer())
    if featurizer.pair_order is not None:
        fit_pair_order_dask(ddf, t_from, featurizer)
    modes: dict[str, ModeModel] = {}
    best: dict[str, int] = {}
    calibration: dict[str, list[float]] = {}
    rows: dict[str, int] = {}
    for mode in config.modes:
        m: Mode = mode  # type: ignore[assignment]
        names = feature_names(m)
        cats = [n for n in CATEGORICAL if n in names]
        fit = window_features(ddf, featurizer, m, -(2**31), split.valid_from, config.target)
        valid = window_features(ddf, featurizer, m, split.valid_from, split.fit_end, config.target)
        fit, valid = nonempty(fit, client), nonempty(valid, client)
        n_fit, n_valid = int(fit.shape[0].compute()), int(valid.shape[0].compute())
        mode_config = config.for_mode(m)
        median = _fit_quantile(
            fit[names], fit[LABEL], 0.5, mode_config, config.booster.n_estimators, cats, client,
            n_fit, eval_set=[(valid[names], valid[LABEL])],
        )  # fmt: skip
        curve = next(iter(median.evals_result_.values()))["quantile"]
        best[mode] = max(int(np.argmin(curve)) + 1, MIN_ROUNDS)
        # refit on fit + valid with the best rounds, or keep the early-stopped P50 (truncated)
        # and train only the bounds on the fit rows; as in fit_mode, a P50 that is refitted
        # after calibration anyway ("p50") is not refitted here
        data = dd.concat([fit, valid]) if config.refit_full else fit
        later = config.refit_with_calibration == "p50"
        boosters = {
            q: _fit_quantile(
                data[names], data[LABEL], q, mode_config,
                quantile_rounds(q, best[mode], config),
                cats, client, n_fit + n_valid if config.refit_full else n_fit,
            ).booster_
            if (config.refit_full and not later) or q != 0.5
            else truncated(median.booster_, best[mode])
            for q in QUANTILES
        }  # fmt: skip
        del data
        model = ModeModel(boosters=boosters, target=config.target)
        # the calibration window is days, not the history: it is brought here and scored
        cal = _calibration_rows(ddf, featurizer, m, split.fit_end, t_from)
        bundle = EtaBundle(featurizer, {mode: model}, num_threads=config.num_threads)
        X_cal = cal[0]
        raw = shape(bundle.raw_from_features(X_cal, m), cal[1], m)
        model.conformal = conformal_offsets(
            raw.p10, raw.p50, raw.p90, cal[1].t_label_min, config.coverage
        )
        calibration[mode] = model.conformal
        if config.refit_with_calibration != "none":  # as in train_eta: every pre-test day
            cal_rows = window_features(ddf, featurizer, m, split.fit_end, t_from, config.target)
            data = dd.concat([fit, valid, nonempty(cal_rows, client)])
            refit = QUANTILES if config.refit_with_calibration == "all" else (0.5,)
            model.boosters = model.boosters | {
                q: _fit_quantile(
                    data[names], data[LABEL], q, mode_config,
                    quantile_rounds(q, best[mode], config), cats, client,
                    n_fit + n_valid + cal[1].n_targets,
                ).booster_
                for q in refit
            }  # fmt: skip
            del data, cal_rows
        modes[mode] = model
        rows[f"{mode}.fit"] = n_fit
        rows[f"{mode}.valid"] = n_valid
        rows[f"{mode}.calibration"] = cal[1].n_targets
        del fit, valid  # the workers free this mode's rows before the next mode's are built
    window = featurizer.window_
    out = EtaBundle(featurizer, modes, training_window=window, num_threads=1)
    return EtaTrainResult(
        bundle=out,
        split=split,
        best_iterations=best,
        fit_seconds=time.perf_counter() - start,
        n_train_rows=rows,
        calibration=calibration,
    )


def _calibration_rows(
    ddf: dd.DataFrame, featurizer: EtaFeaturizer, mode: Mode, lo: int, hi: int
) -> tuple[npt.NDArray[np.float32], Any]:
    """Features and the query batch of the calibration days, gathered on the client (the
    shape rule needs each route's sequence, which the batch carries)."""

    def part_rows(part: pd.DataFrame) -> pd.DataFrame:
        part = part.reset_index(drop=True)
        day = local_day(part[s.DISPATCH_TIME]) if len(part) else np.empty(0, np.int64)
        return part[(day >= lo) & (day < hi)]

    days = dask.compute(*[dask.delayed(part_rows)(p) for p in ddf.to_delayed()])
    deliveries = pd.concat([d for d in days if len(d)], ignore_index=True)
    batch = queries_from_deliveries(deliveries)
    return featurizer.transform(batch, mode), batch


def write_features(
    ddf: dd.DataFrame,
    test_from: str | pd.Timestamp,
    out: str,
    target: str = "log1p",
    modes: tuple[str, ...] = ("ordered", "unordered"),
) -> dict[str, str]:
    """The training feature rows (days before ``test_from``) as Parquet, one folder per mode,
    written partition by partition by the workers: a training set too big for one machine is
    never gathered anywhere. Returns mode -> folder."""
    t_from = day_of(test_from)
    featurizer = fit_featurizer(ddf, t_from)
    paths = {}
    for mode in modes:
        m: Mode = mode  # type: ignore[assignment]
        frame = window_features(ddf, featurizer, m, -(2**31), t_from, target)
        path = f"{out.rstrip('/')}/{mode}"
        frame.to_parquet(path, write_index=False)
        paths[mode] = path
    return paths
