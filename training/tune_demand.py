"""``doorstep tune demand``: Optuna search over one frequency's demand booster settings.

A trial fits the Poisson booster (the count head's expected volume, which every head keeps for
the bottom-up total) on the fit window, early-stopped and pruned on LightGBM's Poisson
validation loss, and is scored by the validation MAE of its P50 (the point every benchmark
metric scores), exactly on ``train_demand``'s windows: tuning never sees the calibration or
hold-out days. Features are built once and shared by every trial. The study storage, the
parent/nested MLflow runs and the write-back (into the ``hourly:`` or ``daily:`` section's
``booster:`` block) are ``training/tune.py``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import optuna
import pandas as pd
from optuna_integration import LightGBMPruningCallback

from doorstep.config import to_dict
from doorstep.demand_bundle import FreqModel, count_distribution
from features.demand import check_freq
from features.demand_features import spec_for
from training.demand import (
    DemandTrainConfig,
    DemandWindows,
    _datasets,
    _lgb_params,
    demand_windows,
)
from training.pipeline_demand import FREQ_KEYS, load_demand_config
from training.tune import (
    MAX_BIN_CHOICES,
    N_ESTIMATORS_MARGIN,
    VALID,
    TuneResult,
    default_storage,
    run_study,
    write_block,
)

EXPERIMENT = "doorstep-demand-tuning"
METRIC = "poisson"  # LightGBM's Poisson negative log-likelihood on the validation rows
LR_MIN, LR_MAX = 0.02, 0.2
WARMUP_ROUNDS = 30


def space_demand(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """The searched ``BoosterParams`` fields; demand series are few and noisy, so the trees
    searched are smaller than the ETA model's."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", LR_MIN, LR_MAX, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 300, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
        "max_bin": trial.suggest_categorical("max_bin", MAX_BIN_CHOICES),
    }


def with_booster(config: DemandTrainConfig, **params: Any) -> DemandTrainConfig:
    return replace(config, booster=replace(config.booster, **params))


@dataclass(frozen=True)
class TrialScore:
    mae: float
    best_iteration: int


def fit_poisson(w: DemandWindows, config: DemandTrainConfig, callbacks: list[Any]) -> TrialScore:
    """One early-stopped Poisson booster on the fit rows; the validation MAE of its P50."""
    model = FreqModel(w.featurizer, {}, head="count", level_feature=config.level_feature)
    offset = (model.log_offset(w.X[0]), model.log_offset(w.X[1]))
    params = _lgb_params(config.booster, "poisson", 0.5, config) | {"metric": METRIC}
    # a fresh Dataset per trial: max_bin and min_child_samples are fixed at construction
    dtrain = _datasets(w.names, [w.X[0]], [w.y[0]], [offset[0]])
    dvalid = lgb.Dataset(w.X[1], w.y[1], init_score=offset[1], reference=dtrain)
    stop = lgb.early_stopping(config.booster.early_stopping_rounds, verbose=False)
    booster = lgb.train(
        params,
        dtrain,
        config.booster.n_estimators,
        valid_sets=[dvalid],
        valid_names=[VALID],
        callbacks=[stop, *callbacks],
    )
    best = max(booster.best_iteration or config.booster.n_estimators, 1)
    raw = booster.predict(
        w.X[1], num_iteration=best, raw_score=True, num_threads=config.num_threads
    )
    mean = np.exp(np.asarray(raw, dtype=np.float64) + offset[1])
    p50 = count_distribution(mean, np.inf).ppf(0.5)  # the count head's P50 (train_demand's)
    return TrialScore(float(np.mean(np.abs(p50 - w.y[1]))), best)


def make_demand_objective(
    w: DemandWindows, config: DemandTrainConfig
) -> Callable[[optuna.Trial], float]:
    """The objective on prepared windows; each trial an MLflow run nested under the parent."""

    def objective(trial: optuna.Trial) -> float:
        params = space_demand(trial)
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.set_tags({"optuna.study": trial.study.study_name, "optuna.trial": trial.number})
            mlflow.log_params(params)
            try:
                prune = [LightGBMPruningCallback(trial, METRIC, VALID)]
                score = fit_poisson(w, with_booster(config, **params), prune)
            except optuna.TrialPruned:
                mlflow.set_tag("optuna.state", "PRUNED")
                mlflow.end_run("KILLED")  # not FAILED: the trial was stopped on purpose
                raise
            trial.set_user_attr("best_iteration", score.best_iteration)
            mlflow.log_metrics(
                {"valid_mae": score.mae, "best_iteration": float(score.best_iteration)}
            )
            mlflow.set_tag("optuna.state", "COMPLETE")
        return score.mae

    return objective


def tune_demand(
    table: pd.DataFrame,
    freq: str,
    test_from: str | pd.Timestamp,
    config: DemandTrainConfig | None = None,
    *,
    holidays_country: str | None = None,
    n_trials: int | None = 50,
    timeout_s: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    config_path: Path | None = None,
    seed: int | None = None,
) -> TuneResult:
    """Run (or resume) the study for ``freq``; write the best booster into ``config_path``'s
    ``hourly:`` / ``daily:`` section. ``n_trials`` and ``timeout_s`` bound this call."""
    freq = check_freq(freq)
    config = config or DemandTrainConfig.for_freq(freq)
    storage = storage or default_storage()
    study_name = study_name or f"doorstep-demand-{freq}"
    seed = config.seed if seed is None else seed
    spec = spec_for(freq, holidays_country)
    w = demand_windows(table, freq, test_from, spec, config)
    problem = {
        "freq": freq,
        "valid_from": str(w.split.valid_from.date()),
        "calibration_from": str(w.split.calib_from.date()),
        "test_from": str(w.split.test_from.date()),
        "rows_fit": len(w.y[0]),
        "rows_valid": len(w.y[1]),
        "level_feature": str(config.level_feature),
    }
    written: dict[str, Any] = {}

    def on_best(study: optuna.Study) -> None:
        best = study.best_trial
        rounds = int(best.user_attrs["best_iteration"])
        # room for the refit on fit + validation days (more rows, a few more rounds)
        written.update(
            best.params | {"n_estimators": max(math.ceil(rounds * N_ESTIMATORS_MARGIN), 10)}
        )
        mlflow.log_metric("best_valid_mae", float(study.best_value))
        mlflow.log_dict(written, "best_booster.json")
        if config_path is not None:
            section = FREQ_KEYS[freq]
            on_file = load_demand_config(config_path).for_freq(freq)  # keeps other keys
            note = f"tuned: study {study_name}, trial {best.number}, validation MAE {study.best_value:.4f}"
            booster = to_dict(with_booster(on_file, **written).booster)
            write_block(config_path, (section, "booster"), booster, note, load_demand_config)

    run = run_study(
        make_demand_objective(w, config),
        study_name=study_name,
        storage=storage,
        seed=seed,
        problem=problem,
        experiment=EXPERIMENT,
        n_trials=n_trials,
        timeout_s=timeout_s,
        warmup_steps=min(WARMUP_ROUNDS, config.booster.n_estimators // 2),
        on_best=on_best,
    )
    return run.result(written)
