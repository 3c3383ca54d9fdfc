"""``doorstep tune demand``: search space, nested runs, resuming, pruning, nested write-back."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from doorstep.cli import app
from tests.test_demand_model import synthetic
from training.demand import DemandTrainConfig
from training.eta import BoosterParams
from training.pipeline_demand import load_demand_config
from training.tune import MAX_BIN_CHOICES, write_block
from training.tune_demand import EXPERIMENT, space_demand, tune_demand

ROOT = Path(__file__).resolve().parents[1]
TINY = DemandTrainConfig(
    booster=BoosterParams(n_estimators=30, early_stopping_rounds=5),
    calib_days=7, valid_days=7, level_feature="level_profile_14", num_threads=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def daily() -> pd.DataFrame:
    return synthetic("d", zones=6, days=70, seed=31)


def test_space_stays_in_bounds_and_names_booster_fields() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fields = {f.name for f in dataclasses.fields(BoosterParams)}
    for _ in range(20):
        drawn = space_demand(study.ask())
        assert set(drawn) == fields - {
            "n_estimators",
            "early_stopping_rounds",
            "max_bag_rows",
        }  # sizes, not tuned
        assert 7 <= drawn["num_leaves"] <= 127 and isinstance(drawn["num_leaves"], int)
        assert 0.02 <= drawn["learning_rate"] <= 0.2
        assert drawn["max_bin"] in MAX_BIN_CHOICES
        BoosterParams(**drawn)


def test_write_block_replaces_a_nested_section_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "demand.yaml"
    path.write_text(
        "# top comment\nhourly:\n  calib_days: 9  # kept\n  booster:\n    num_leaves: 5\n"
        "    max_bin: 63\n  valid_days: 4\ndaily:\n  valid_days: 3\n"
    )
    write_block(path, ("hourly", "booster"), {"num_leaves": 11}, "tuned", load_demand_config)
    text = path.read_text()
    assert "# top comment" in text and "calib_days: 9  # kept" in text and "    # tuned\n" in text
    raw = yaml.safe_load(text)
    assert raw["hourly"] == {"calib_days": 9, "booster": {"num_leaves": 11}, "valid_days": 4}
    write_block(path, ("daily", "booster"), {"num_leaves": 7}, "tuned d", load_demand_config)
    raw = yaml.safe_load(path.read_text())
    assert raw["daily"] == {"valid_days": 3, "booster": {"num_leaves": 7}}
    assert raw["hourly"]["booster"] == {"num_leaves": 11}
    before = path.read_text()
    with pytest.raises(ValueError, match="unknown config key"):
        write_block(path, ("daily", "booster"), {"leaves": 7}, "bad", load_demand_config)
    assert path.read_text() == before  # a bad write never lands


def test_tune_nests_trials_resumes_and_writes_the_daily_booster(
    daily: pd.DataFrame, mlflow_uri: str, tmp_path: Path
) -> None:
    config_path = tmp_path / "demand.yaml"
    shutil.copyfile(ROOT / "configs" / "demand.yaml", config_path)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    kwargs = {"storage": storage, "study_name": "d", "config_path": config_path, "seed": 1}
    first = tune_demand(daily, "d", "2024-03-04", TINY, n_trials=3, **kwargs)  # type: ignore[arg-type]
    assert first.n_trials_total == 3 and first.best_value > 0
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{first.parent_run_id}'"
    )
    assert len(children) == 3
    done = [r for r in children if r.data.tags["optuna.state"] == "COMPLETE"]
    assert done and all("valid_mae" in r.data.metrics for r in done)

    second = tune_demand(daily, "d", "2024-03-04", TINY, n_trials=1, **kwargs)  # type: ignore[arg-type]
    assert second.n_trials_total == 4  # resumed, not restarted
    loaded = load_demand_config(config_path)
    best = optuna.load_study(study_name="d", storage=storage).best_trial
    for name, value in best.params.items():
        assert getattr(loaded.daily.booster, name) == value
    assert loaded.daily.booster.n_estimators == second.best_params["n_estimators"]
    assert loaded.hourly == load_demand_config(ROOT / "configs" / "demand.yaml").hourly
    assert "# tuned: study d" in config_path.read_text()
    with pytest.raises(ValueError, match="was tuned on"):
        tune_demand(daily, "d", "2024-03-11", TINY, n_trials=1, **kwargs)  # type: ignore[arg-type]


def test_tune_demand_command(daily: pd.DataFrame, mlflow_uri: str, tmp_path: Path) -> None:
    history, config = tmp_path / "daily.parquet", tmp_path / "demand.yaml"
    daily.to_parquet(history)
    config.write_text(
        "daily:\n  calib_days: 7\n  valid_days: 7\n  num_threads: 1\n"
        "  booster: {n_estimators: 20, early_stopping_rounds: 5}\n"
    )
    args = ["tune", "demand", "--freq", "d", "--history", str(history), "--config", str(config)]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    result = CliRunner().invoke(app, [*args, "--trials", "2", "--storage", storage])
    assert result.exit_code == 0, result.output
    assert "study doorstep-demand-d: 2 trials" in result.output
    assert "tuned: study doorstep-demand-d" in config.read_text()
    assert mlflow.get_experiment_by_name(EXPERIMENT) is not None
    bad = CliRunner().invoke(app, [*args, "--freq", "w"])
    assert bad.exit_code == 2 and "--freq: must be h or d" in bad.output
