"""``doorstep tune eta``: the search space, nested MLflow runs, resuming, write-back, pruning."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from doorstep.config import load_yaml
from features import schema as s
from features.eta_features import EtaFeaturizer
from features.eta_queries import queries_from_deliveries
from features.profiles import local_day
from tests.synth import make_deliveries
from training.eta import BoosterParams, EtaConfig, day_of
from training.tune import (
    ENV_OPTUNA_STORAGE,
    EXPERIMENT,
    MAX_BIN_CHOICES,
    N_ESTIMATORS_MARGIN,
    TuneResult,
    default_storage,
    make_eta_objective,
    space_eta,
    tune_eta,
)

ROOT = Path(__file__).resolve().parents[1]
TEST_FROM = "2021-06-26"  # day 25 of the synthetic month
BOUNDS: dict[str, tuple[float, float]] = {
    "learning_rate": (0.02, 0.2),
    "num_leaves": (15, 255),
    "min_child_samples": (10, 200),
    "feature_fraction": (0.5, 1.0),
    "bagging_fraction": (0.5, 1.0),
    "lambda_l2": (1e-3, 30.0),
}


@pytest.fixture(scope="module")
def deliveries() -> pd.DataFrame:
    return make_deliveries(days=30, couriers=3, stops=6)


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creating tables takes seconds
    return path


@pytest.fixture()
def store(mlflow_uri: str, migrated_db: Path, tmp_path: Path) -> str:
    """A migrated MLflow store whose tuning experiment keeps artifacts under ``tmp_path``."""
    shutil.copyfile(migrated_db, mlflow_uri.removeprefix("sqlite:///"))
    MlflowClient(mlflow_uri).create_experiment(
        EXPERIMENT, artifact_location=(tmp_path / "artifacts").as_uri()
    )
    mlflow.set_tracking_uri(mlflow_uri)
    return mlflow_uri


def tiny_config() -> EtaConfig:
    booster = BoosterParams(n_estimators=8, early_stopping_rounds=3)
    return EtaConfig(
        booster=booster, calib_days=5, valid_days=5, max_train_queries=300, num_threads=1
    )


def test_space_returns_booster_fields_within_bounds() -> None:
    fixed = {k: lo for k, (lo, _) in BOUNDS.items()} | {"max_bin": 63}
    params = space_eta(optuna.trial.FixedTrial(fixed))
    assert params == fixed
    booster_fields = {f.name for f in dataclasses.fields(BoosterParams)}
    assert set(params) <= booster_fields
    assert set(params) == booster_fields - {
        "n_estimators",
        "early_stopping_rounds",
        "max_bag_rows",
    }  # sizes, not tuned
    BoosterParams(**params)  # every key is a real field

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        drawn = space_eta(study.ask())
        for name, (lo, hi) in BOUNDS.items():
            assert lo <= drawn[name] <= hi, name
        assert drawn["max_bin"] in MAX_BIN_CHOICES
        assert isinstance(drawn["num_leaves"], int)
        assert isinstance(drawn["min_child_samples"], int)


def test_tune_nests_trials_resumes_and_writes_config(
    deliveries: pd.DataFrame, store: str, tmp_path: Path
) -> None:
    config_path = tmp_path / "eta.yaml"
    shutil.copyfile(ROOT / "configs" / "eta.yaml", config_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    kwargs: dict[str, Any] = {
        "n_trials": 2,
        "timeout_s": None,
        "storage": storage,
        "study_name": "t",
        "config_path": config_path,
        "seed": 1,
    }

    first = tune_eta(deliveries, TEST_FROM, tiny_config(), **kwargs)
    assert isinstance(first, TuneResult)
    assert (first.n_trials_total, first.storage, first.study_name) == (2, storage, "t")

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{first.parent_run_id}'"
    )
    assert len(children) == 2
    for run in children:
        assert set(run.data.params) == set(BOUNDS) | {"max_bin"}
        assert {"valid_mae_min", "valid_mae_min.ordered", "valid_mae_min.unordered"} <= set(
            run.data.metrics
        )
        assert {"best_iteration.ordered", "best_iteration.unordered"} <= set(run.data.metrics)
    study = optuna.load_study(study_name="t", storage=storage)
    assert all(
        set(t.user_attrs["best_iteration"]) == {"ordered", "unordered"} for t in study.trials
    )

    second = tune_eta(deliveries, TEST_FROM, tiny_config(), **kwargs)
    assert second.n_trials_total == 4
    assert second.parent_run_id != first.parent_run_id
    assert second.best_value <= first.best_value
    params = [t.params for t in optuna.load_study(study_name="t", storage=storage).trials]
    assert params[2] != params[0]  # a resumed sampler does not redraw the first points

    text = config_path.read_text(encoding="utf-8")
    assert text.startswith("# ETA training configuration")  # the rest of the file is kept
    assert text.count("booster:") == 1
    loaded = load_yaml(EtaConfig, config_path)
    expected = dataclasses.replace(BoosterParams(), **second.best_params)
    assert loaded.booster == expected
    assert loaded.booster.early_stopping_rounds == 50  # the file's own value, not the test's
    assert (loaded.calib_days, loaded.max_train_queries) == (14, 60_000)
    best = optuna.load_study(study_name="t", storage=storage).best_trial
    rounds = max(best.user_attrs["best_iteration"].values())
    assert loaded.booster.n_estimators == max(math.ceil(rounds * N_ESTIMATORS_MARGIN), 10)
    assert second.best_params == best.params | {"n_estimators": loaded.booster.n_estimators}


def test_tune_refuses_to_resume_on_other_windows(
    deliveries: pd.DataFrame, store: str, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    kwargs: dict[str, Any] = {"n_trials": 1, "storage": storage, "study_name": "w"}
    tune_eta(deliveries, TEST_FROM, tiny_config(), **kwargs)
    with pytest.raises(ValueError, match="pass another study name"):
        tune_eta(deliveries, "2021-06-27", tiny_config(), **kwargs)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_pruned_trial_is_recorded_as_pruned(deliveries: pd.DataFrame, store: str) -> None:
    history = deliveries[local_day(deliveries[s.DISPATCH_TIME]) < day_of(TEST_FROM)]
    batch = queries_from_deliveries(history)
    day = batch.q_route_day
    split_day = int(day.max()) - 4
    objective = make_eta_objective(
        EtaFeaturizer().fit(history),
        batch.take_queries(day < split_day),
        batch.take_queries(day >= split_day),
        tiny_config(),
        ("ordered", "unordered"),
    )
    study = optuna.create_study(pruner=AlwaysPrune())
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run() as parent:
        study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert list(study.trials[0].intermediate_values) == [0]  # LightGBM's first validation loss
    (child,) = MlflowClient(store).search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert child.info.status == "KILLED"
    assert child.data.tags["optuna.state"] == "PRUNED"


def test_default_storage_sits_beside_the_mlflow_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_OPTUNA_STORAGE, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert default_storage() == f"sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.setenv(ENV_OPTUNA_STORAGE, "postgresql://db/optuna")
    assert default_storage() == "postgresql://db/optuna"
