"""``doorstep train demand`` end to end on tiny series: train, log, register, gate, load back,
pyfunc round trip, list and roll back through the CLI."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.pyfunc import PythonModel
from typer.testing import CliRunner

from doorstep.cli import app
from doorstep.demand_pyfunc import load_demand_bundle, predict_history
from features import schema as s
from tests.test_demand_model import synthetic
from training.demand import DemandTrainConfig
from training.eta import BoosterParams
from training.pipeline_demand import (
    DemandConfig,
    load_demand_config,
    make_holdout,
    train_and_register_demand,
)

TINY_H = DemandTrainConfig(
    booster=BoosterParams(n_estimators=40, num_leaves=7, min_child_samples=20, early_stopping_rounds=10),
    calib_days=7, valid_days=5, max_train_rows=15_000, head="count", level_feature="level_profile_672",
)  # fmt: skip
TINY_D = DemandTrainConfig(
    booster=BoosterParams(n_estimators=40, num_leaves=7, min_child_samples=10, early_stopping_rounds=10),
    calib_days=7, valid_days=5, level_feature="ewm_mean_5",
)  # fmt: skip
TINY = DemandConfig(hourly=TINY_H, daily=TINY_D, gate_coverage_tolerance=0.25)  # ~100 points


def _worse(config: DemandConfig) -> DemandConfig:
    def slow(c: DemandTrainConfig) -> DemandTrainConfig:
        b = dataclasses.replace(c.booster, learning_rate=1e-3, n_estimators=3)
        return dataclasses.replace(c, booster=b, level_feature=None)

    return dataclasses.replace(config, hourly=slow(config.hourly), daily=slow(config.daily))


@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    hourly = synthetic("h", zones=4, days=36, seed=21)
    days = hourly.assign(**{s.TS: hourly[s.TS].dt.floor("D")})
    return hourly, days.groupby([s.ZONE_ID, s.TS])[s.VOLUME].sum().reset_index()


def test_config_keeps_each_frequencys_defaults(tmp_path: Path) -> None:
    path = tmp_path / "demand.yaml"
    path.write_text(
        "hourly:\n  calib_days: 9\n  booster:\n    num_leaves: 5\ndaily:\n  valid_days: 3\n"
    )
    config = load_demand_config(path)
    assert config.hourly.calib_days == 9 and config.hourly.booster.num_leaves == 5
    assert config.hourly.level_feature == "class_level"  # the hourly default survives
    assert config.hourly.booster.min_child_samples == DemandTrainConfig().booster.min_child_samples
    assert config.daily.valid_days == 3 and config.daily.calib_days == 14
    assert config.daily.level_feature == "ewm_mean_5"
    path.write_text("daily:\n  calib_dayz: 3\n")
    with pytest.raises(ValueError, match=re.escape("unknown config key(s) ['calib_dayz']")):
        load_demand_config(path)
    path.write_text("weekly: {}\n")
    with pytest.raises(ValueError, match=re.escape("unknown config key(s) ['weekly']")):
        load_demand_config(path)


def test_holdout_is_the_last_whole_days(tables: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    hourly, daily = tables
    holdout = make_holdout({"h": hourly, "d": daily}, 7)
    assert holdout.start == pd.Timestamp("2024-01-30") and holdout.end == pd.Timestamp("2024-02-06")
    with pytest.raises(ValueError, match="holdout_days: must be >= 1"):
        make_holdout({"h": hourly}, 0)
    with pytest.raises(ValueError, match="give at least one demand table"):
        make_holdout({}, 7)


def test_too_short_a_history_names_the_frequency(tables: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    _, daily = tables
    with pytest.raises(ValueError, match=r"^daily: need at least 42 days"):
        train_and_register_demand(
            None, daily, DemandConfig(), data_source="synth", registered_name=None
        )


def test_train_register_gate_load_back_and_roll_back(
    tables: tuple[pd.DataFrame, pd.DataFrame], mlflow_uri: str
) -> None:
    hourly, daily = tables
    client = MlflowClient(mlflow_uri)
    # a weak first version becomes champion (no champion yet) ...
    first = train_and_register_demand(hourly, daily, _worse(TINY), data_source="synth")
    assert first.version == "1" and first.decision is not None and first.decision.promoted
    assert first.decision.reason == "no champion yet"
    # ... and a real model beats it on the same hold-out rows in every segment
    second = train_and_register_demand(hourly, daily, TINY, data_source="synth")
    assert second.version == "2"
    assert second.decision is not None and second.decision.promoted, second.decision
    assert set(second.metrics) == {"h.day_ahead", "h.intraday", "d.day_ahead", "d.week_ahead"}
    assert second.holdout_from == "2024-01-30"
    for seg, p in second.metrics.items():
        assert p["model"]["mae"] < first.metrics[seg]["model"]["mae"], seg
    assert client.get_model_version_by_alias("doorstep-demand", "champion").version in ("2", 2)

    run = mlflow.get_run(second.run_id)
    assert run.data.tags["feature_set"] == "demand_v3"
    assert run.data.tags["training_window"] == "2024-01-01 00:00:00/2024-01-30 00:00:00"
    metrics = run.data.metrics
    assert metrics["d.day_ahead.model.mae"] == pytest.approx(
        second.metrics["d.day_ahead"]["model"]["mae"]
    )
    assert "h.day_ahead.baseline.seasonal_naive.mae" in metrics
    assert "h.intraday.by_horizon.3.mae" in metrics
    assert "d.week_ahead.total.coverage_p10_p90" in metrics
    assert run.data.params["daily.level_feature"] == "ewm_mean_5"
    artifacts = {a.path for a in client.list_artifacts(second.run_id, "plots")}
    assert artifacts == {
        "plots/forecast_bands.png",
        "plots/error_by_horizon.png",
        "plots/calibration.png",
    }
    version = client.get_model_version("doorstep-demand", "2")
    assert version.tags["feature_set"] == "demand_v3"

    # serving's fast path and the pyfunc give the same forecast
    bundle = load_demand_bundle("models:/doorstep-demand@champion")
    assert sorted(bundle.models) == ["d", "h"]
    history = hourly[hourly[s.TS] < "2024-02-05"].assign(
        **{s.TS: lambda t: t[s.TS].dt.strftime("%Y-%m-%dT%H:%M:%S")}
    )
    direct = predict_history(bundle, history, origin="2024-02-05T12:00:00")
    assert len(direct) == 4 * 12 and direct[s.TS].iloc[0] == "2024-02-05T12:00:00"
    model = mlflow.pyfunc.load_model("models:/doorstep-demand@champion")
    via_pyfunc = model.predict(history, params={"origin": "2024-02-05T12:00:00"})
    pd.testing.assert_frame_equal(via_pyfunc.reset_index(drop=True), direct, check_dtype=False)
    total = model.predict(
        history, params={"freq": "h", "origin": "2024-02-05T12:00:00", "level": "total"}
    )
    assert total["mean"].sum() == pytest.approx(direct["mean"].sum())
    week = predict_history(bundle, history, freq="d", horizon_periods=7)
    assert len(week) == 4 * 7 and week[s.TS].iloc[0] == "2024-02-05T00:00:00"
    with pytest.raises(ValueError, match=re.escape("freq: no 'w' model in this bundle")):
        predict_history(bundle, history, freq="w")
    with pytest.raises(ValueError, match=re.escape("history: missing column(s) ['volume']")):
        predict_history(bundle, history.drop(columns=[s.VOLUME]))

    # a weaker version is parked as challenger with the reason
    third = train_and_register_demand(hourly, daily, _worse(TINY), data_source="synth")
    assert third.decision is not None and not third.decision.promoted
    assert "mae" in third.decision.reason
    assert client.get_model_version_by_alias("doorstep-demand", "challenger").version in ("3", 3)

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "demand"])
    assert listed.exit_code == 0, listed.output
    assert "doorstep-demand@champion = version 2" in listed.output
    assert "doorstep-demand@challenger = version 3" in listed.output
    rolled = runner.invoke(app, ["models", "rollback", "demand"])
    assert rolled.exit_code == 0, rolled.output
    assert "version 2 -> 1" in rolled.output
    assert client.get_model_version_by_alias("doorstep-demand", "champion").version in ("1", 1)


class _Echo(PythonModel):  # type: ignore[misc]
    def predict(
        self, context: object, model_input: pd.DataFrame, params: object = None
    ) -> pd.DataFrame:
        return model_input


def test_another_pyfunc_is_not_a_demand_model(mlflow_uri: str) -> None:
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=_Echo())
    with pytest.raises(
        ValueError, match=re.escape("not a demand model (no 'demand_bundle' artifact)")
    ):
        load_demand_bundle(info.model_uri)


TINY_YAML = """
gate_coverage_tolerance: 0.25
daily:
  calib_days: 7
  valid_days: 5
  booster: {n_estimators: 40, num_leaves: 7, min_child_samples: 10, early_stopping_rounds: 10}
"""


def test_train_demand_command_on_a_daily_table(tmp_path: Path, mlflow_uri: str) -> None:
    history, config = tmp_path / "daily.csv", tmp_path / "demand.yaml"
    synthetic("d", zones=4, days=45, seed=22).to_csv(history, index=False)
    config.write_text(TINY_YAML)
    args = ["train", "demand", "--history", str(history), "--freq", "d", "--config", str(config)]
    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "d.day_ahead" in result.output and "d.week_ahead" in result.output
    assert "version 1 -> champion: no champion yet" in result.output
    assert sorted(load_demand_bundle("models:/doorstep-demand@champion").models) == ["d"]
    bad = CliRunner().invoke(app, [*args[:-4], "--freq", "w"])
    assert bad.exit_code == 2 and "--freq: must be one of h, d, both" in bad.output


def test_main_job_reports_a_history_too_short_for_demand(
    tables: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path, mlflow_uri: str
) -> None:
    from doorstep.pipeline import MainOptions, _train_demand

    hourly, daily = tables  # 36 days: 29 before the hold-out
    messages: list[str] = []
    out = _train_demand(MainOptions(demand_config=None), hourly, daily, "synth", messages.append)
    assert out is None
    assert messages[-1].startswith("demand model not trained: hourly: need at least 35 days")


def test_benchmark_table_survives_a_null_baseline_wape() -> None:
    from training.benchmark_demand import best_baseline, summary_rows

    metrics = {"mae": 0.0, "rmse": 0.0, "wape": None, "mase": None, "coverage_p10_p90": None}
    results = {
        "protocols": {
            "day_ahead": {
                "n_points": 24,
                "model": {**metrics, "coverage_p10_p90": 1.0},
                "baselines": {"seasonal_naive": metrics, "naive": metrics, "mean_4w": metrics},
            },
            "intraday": {
                "n_points": 12,
                "model": {**metrics, "wape": 0.5, "mase": 0.7, "coverage_p10_p90": 0.8},
                "baselines": {
                    "seasonal_naive": {**metrics, "wape": 1.0},
                    "naive": metrics,
                    "mean_4w": {**metrics, "wape": 0.8},
                },
            },
        }
    }
    assert best_baseline(results["protocols"]["day_ahead"]["baselines"]) is None
    assert best_baseline(results["protocols"]["intraday"]["baselines"]) == "mean_4w"
    assert summary_rows(results) == [
        ("day_ahead", "24", "-", "-", "1.000", "-", "-"),
        ("intraday", "12", "0.500", "0.700", "0.800", "mean_4w 0.800", "0.625"),
    ]
