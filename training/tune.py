"""``doorstep tune eta``: Optuna search over the ETA boosters' LightGBM settings.

A trial trains the P50 booster of every mode on the fit window and scores it on the validation
days (the ``valid_days`` before the calibration window, exactly as ``train_eta`` early-stops),
so tuning never sees the calibration or test days. Features are computed once per mode and
shared by every trial: profiles and query features dominate a trial's cost, boosting is cheap.
The study lives in an Optuna storage, so a second run resumes it; the best trial's settings are
written back into the ``booster:`` block of the YAML config that ``doorstep train`` reads.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightgbm as lgb
import mlflow
import numpy as np
import numpy.typing as npt
import optuna
import pandas as pd
import yaml
from optuna_integration import LightGBMPruningCallback

from doorstep.config import load_yaml, to_dict, tracking_uri
from features import schema as s
from features.eta_features import CATEGORICAL, EtaFeaturizer, Mode, feature_names
from features.eta_queries import QueryBatch, queries_from_deliveries
from features.profiles import local_day
from training.eta import EtaConfig, _lgb_params, _subsample, day_of, make_split, with_booster

EXPERIMENT = "doorstep-eta-tuning"
ENV_OPTUNA_STORAGE = "DOORSTEP_OPTUNA_STORAGE"
VALID = "valid"
METRIC = "quantile"  # LightGBM's pinball loss; at alpha 0.5 it is half the MAE
N_ESTIMATORS_MARGIN = 1.2
MAX_BIN_CHOICES = (63, 127, 255)
LR_MIN, LR_MAX = 0.02, 0.2
# rounds for a LR_MIN booster to close ~95% of its gap (1 - (1 - lr)^n): before this, boosters
# compared at the same round differ by learning rate rather than by merit
WARMUP_ROUNDS = math.ceil(math.log(0.05) / math.log(1 - LR_MIN))


@dataclass(frozen=True)
class TuneResult:
    """``best_params`` are the booster values written to the config (space + n_estimators)."""

    best_params: dict[str, Any]
    best_value: float  # mean validation MAE over modes, minutes
    n_trials_total: int  # every trial the study holds after this call, pruned ones included
    study_name: str
    storage: str
    parent_run_id: str


def space_eta(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """The searched ``BoosterParams`` fields (log scales where the effect is multiplicative)."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", LR_MIN, LR_MAX, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 15, 255, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 200, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
        "max_bin": trial.suggest_categorical("max_bin", MAX_BIN_CHOICES),
    }


def default_storage() -> str:
    """``$DOORSTEP_OPTUNA_STORAGE``, else ``optuna.db`` beside a local SQLite MLflow store."""
    if env := os.environ.get(ENV_OPTUNA_STORAGE):
        return env
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).with_name('optuna.db')}"
    return "sqlite:///optuna.db"  # a remote MLflow server: keep the study in the working dir


@dataclass(frozen=True)
class _Matrices:
    names: list[str]
    x_fit: npt.NDArray[np.float32]
    y_fit: npt.NDArray[np.float64]
    x_valid: npt.NDArray[np.float32]
    y_valid: npt.NDArray[np.float64]


def _fit_p50(m: _Matrices, config: EtaConfig, callbacks: list[Any]) -> tuple[float, int]:
    """Validation MAE (minutes) and best iteration of one early-stopped P50 booster."""
    params = _lgb_params(config.booster, 0.5, config.seed, config.num_threads) | {"metric": METRIC}
    cats = [n for n in CATEGORICAL if n in m.names]
    # a fresh Dataset per trial: max_bin and min_child_samples are fixed at construction
    dtrain = lgb.Dataset(m.x_fit, m.y_fit, feature_name=m.names, categorical_feature=cats)
    dvalid = lgb.Dataset(m.x_valid, m.y_valid, reference=dtrain)
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
    pred = booster.predict(m.x_valid, num_iteration=best)
    return float(np.mean(np.abs(np.asarray(pred) - m.y_valid))), best


def make_eta_objective(
    featurizer: EtaFeaturizer,
    fit_batch: QueryBatch,
    valid_batch: QueryBatch,
    config: EtaConfig,
    modes: Sequence[str],
) -> Callable[[optuna.Trial], float]:
    """The objective: mean over ``modes`` of the P50 validation MAE in minutes.

    Feature matrices are built here, once, and reused by every trial. Each trial is an MLflow
    run nested under whatever run is active (``tune_eta``'s parent run).
    """
    data = {
        mode: _Matrices(
            names=feature_names(cast(Mode, mode)),
            x_fit=featurizer.transform(fit_batch, cast(Mode, mode)),
            y_fit=fit_batch.t_label_min,
            x_valid=featurizer.transform(valid_batch, cast(Mode, mode)),
            y_valid=valid_batch.t_label_min,
        )
        for mode in modes
    }

    def objective(trial: optuna.Trial) -> float:
        params = space_eta(trial)
        trial_config = with_booster(config, **params)
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.set_tags({"optuna.study": trial.study.study_name, "optuna.trial": trial.number})
            mlflow.log_params(params)
            mae: dict[str, float] = {}
            best: dict[str, int] = {}
            try:
                for i, mode in enumerate(modes):
                    # Only the first mode reports: Optuna keeps one intermediate value per step
                    # (later reports at the same step are dropped with a warning), and the
                    # pruner compares curves step by step, so one mode's curve per trial is
                    # the consistent signal; the modes' losses move together anyway.
                    prune = [LightGBMPruningCallback(trial, METRIC, VALID)] if i == 0 else []
                    mae[mode], best[mode] = _fit_p50(data[mode], trial_config.for_mode(mode), prune)
            except optuna.TrialPruned:
                mlflow.set_tag("optuna.state", "PRUNED")
                mlflow.end_run("KILLED")  # not FAILED: the trial was stopped on purpose
                raise
            value = float(np.mean(list(mae.values())))
            trial.set_user_attr("best_iteration", best)
            trial.set_user_attr("valid_mae_min", mae)
            mlflow.log_metrics(
                {"valid_mae_min": value}
                | {f"valid_mae_min.{m}": v for m, v in mae.items()}
                | {f"best_iteration.{m}": float(n) for m, n in best.items()}
            )
            mlflow.set_tag("optuna.state", "COMPLETE")
        return value

    return objective


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)  # never log a database password


def _date(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


def _windows(
    deliveries: pd.DataFrame, t_from: int, config: EtaConfig
) -> tuple[EtaFeaturizer, QueryBatch, QueryBatch, dict[str, Any]]:
    """train_eta's split; profiles fitted before the calibration window (point in time)."""
    day = local_day(deliveries[s.DISPATCH_TIME])
    split = make_split(deliveries[day < t_from], t_from, config)
    before_cal = deliveries[day < split.fit_end]
    featurizer = config.featurizer().fit(before_cal)
    batch = queries_from_deliveries(before_cal)
    q_day = batch.q_route_day
    rng = np.random.default_rng(config.seed)  # the same draw as train_eta's fit subsample
    fit_b = _subsample(batch.take_queries(q_day < split.valid_from), config.max_train_queries, rng)
    valid_b = batch.take_queries((q_day >= split.valid_from) & (q_day < split.fit_end))
    if valid_b.n_targets == 0:
        raise ValueError(f"no validation queries in [{_date(split.valid_from)}, calibration)")
    key = {
        "valid_from": _date(split.valid_from),
        "calibration_from": _date(split.fit_end),
        "test_from": _date(t_from),
        "modes": list(config.modes),
        "rows_fit": fit_b.n_targets,
        "rows_valid": valid_b.n_targets,
    }
    return featurizer, fit_b, valid_b, key


def _check_same_problem(study: optuna.Study, key: dict[str, Any]) -> None:
    """Refuse to resume a study scored on other windows: its values would not compare."""
    previous = study.user_attrs.get("problem")
    if previous is None:
        study.set_user_attr("problem", key)
    elif previous != key:
        raise ValueError(
            f"study {study.study_name!r} was tuned on {previous}, not {key}; "
            "pass another study name to start afresh"
        )


def write_block(
    config_path: Path,
    keys: Sequence[str],
    value: dict[str, Any],
    note: str,
    check: Callable[[Path], object],
) -> None:
    """Replace the YAML block at ``keys`` (``("booster",)``, ``("hourly", "booster")``) of a
    config file, keeping every other line as it was; add it (and its parents) if absent.

    Text-level so the file's comments and key order survive (blocks indented two spaces per
    level, as ``yaml.safe_dump`` writes them). ``check(path)`` loads the result before it
    replaces the original, so a bad write never lands.
    """
    lines = config_path.read_text(encoding="utf-8").splitlines(keepends=True)
    lo, hi = 0, len(lines)
    for depth, key in enumerate(keys):
        pad = "  " * depth
        start = next(
            (i for i in range(lo, hi) if re.match(rf"{pad}{re.escape(key)}\s*:", lines[i])), None
        )
        if start is None:  # write the rest of the path at the end of the parent block
            nested: Any = value
            for k in reversed(keys[depth:]):
                nested = {k: nested}
            body = [pad + ln for ln in yaml.safe_dump(nested, sort_keys=False).splitlines(True)]
            at = len(keys) - depth  # just below the last key's own line
            note_line = f"{pad}{'  ' * at}# {note}\n"
            lines[hi:hi] = [*body[:at], note_line, *body[at:]]
            break
        end = start + 1
        while end < hi and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > len(pad)
        ):
            end += 1
        if depth == len(keys) - 1:
            body = yaml.safe_dump({key: value}, sort_keys=False).splitlines(keepends=True)
            block = [pad + body[0], f"{pad}  # {note}\n", *(pad + ln for ln in body[1:])]
            lines[start:end] = block
        lo, hi = start + 1, end
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    try:
        check(tmp)
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(config_path)


def write_booster(config_path: Path, booster: dict[str, Any], note: str) -> None:
    """Replace the ``booster:`` block of an ETA config (see ``write_block``)."""
    write_block(config_path, ("booster",), booster, note, lambda p: load_yaml(EtaConfig, p))


@dataclass(frozen=True)
class StudyRun:
    study: optuna.Study
    parent_run_id: str
    n_trials_total: int
    storage: str

    def result(self, best_params: dict[str, Any]) -> TuneResult:
        """The named result of this study, whose best ``best_params`` were written back."""
        return TuneResult(
            best_params=dict(best_params),
            best_value=float(self.study.best_value),
            n_trials_total=self.n_trials_total,
            study_name=self.study.study_name,
            storage=self.storage,
            parent_run_id=self.parent_run_id,
        )


def run_study(
    objective: Callable[[optuna.Trial], float],
    *,
    study_name: str,
    storage: str,
    seed: int,
    problem: dict[str, Any],
    experiment: str,
    n_trials: int | None,
    timeout_s: float | None,
    warmup_steps: int,
    on_best: Callable[[optuna.Study], None],
) -> StudyRun:
    """Create or resume the study, refuse one tuned on another ``problem``, optimise under a
    parent MLflow run (trials nest under it), then call ``on_best(study)`` inside that run."""
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize",
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_steps),
    )
    _check_same_problem(study, problem)
    # offset by the trials already stored, or a resumed run would redraw the same startup points
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"tune-{study_name}") as parent:
        mlflow.set_tags({"optuna.study": study_name, "optuna.storage": _redact(storage)})
        mlflow.log_params(problem | {"n_trials": n_trials, "timeout_s": timeout_s, "seed": seed})
        study.optimize(objective, n_trials=n_trials, timeout=timeout_s)
        states = [t.state for t in study.trials]
        mlflow.log_metrics(
            {
                "n_trials_total": len(states),
                "n_complete": states.count(optuna.trial.TrialState.COMPLETE),
                "n_pruned": states.count(optuna.trial.TrialState.PRUNED),
            }
        )
        if optuna.trial.TrialState.COMPLETE not in states:
            raise RuntimeError(f"study {study_name!r}: no trial completed; nothing to write back")
        mlflow.set_tag("optuna.best_trial", study.best_trial.number)
        on_best(study)
    return StudyRun(study, parent.info.run_id, len(states), storage)


def tune_eta(
    deliveries: pd.DataFrame,
    test_from: str | pd.Timestamp,
    config: EtaConfig | None = None,
    *,
    n_trials: int | None = 50,
    timeout_s: float | None = None,
    storage: str | None = None,
    study_name: str = "doorstep-eta",
    config_path: Path | None = None,
    seed: int | None = None,
) -> TuneResult:
    """Run (or resume) the study; log a parent MLflow run; write the best booster back.

    ``n_trials`` and ``timeout_s`` bound this call, not the study: every call adds trials.
    """
    config = config or EtaConfig()
    storage = storage or default_storage()
    seed = config.seed if seed is None else seed
    featurizer, fit_b, valid_b, key = _windows(deliveries, day_of(test_from), config)
    objective = make_eta_objective(featurizer, fit_b, valid_b, config, config.modes)
    written: dict[str, Any] = {}

    def on_best(study: optuna.Study) -> None:
        best_trial = study.best_trial
        rounds = max(best_trial.user_attrs["best_iteration"].values())
        # the cap only bounds early stopping at training time; the margin leaves room for the
        # refit on fit + validation days, which has more rows and may want a few more rounds
        written.update(
            best_trial.params | {"n_estimators": max(math.ceil(rounds * N_ESTIMATORS_MARGIN), 10)}
        )
        mlflow.log_metric("best_valid_mae_min", float(study.best_value))
        mlflow.log_dict(written, "best_booster.json")
        if config_path is not None:
            note = (
                f"tuned: study {study_name}, trial {best_trial.number}, "
                f"validation MAE {study.best_value:.3f} min"
            )
            on_file = load_yaml(EtaConfig, config_path)  # keeps the file's other booster keys
            write_booster(config_path, to_dict(with_booster(on_file, **written).booster), note)

    run = run_study(
        objective,
        study_name=study_name,
        storage=storage,
        seed=seed,
        problem=key,
        experiment=EXPERIMENT,
        n_trials=n_trials,
        timeout_s=timeout_s,
        warmup_steps=min(WARMUP_ROUNDS, config.booster.n_estimators // 2),
        on_best=on_best,
    )
    return run.result(written)
