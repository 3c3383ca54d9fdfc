"""``doorstep train eta`` end to end on a tiny city: train, log, register, gate, load back."""

from __future__ import annotations

import dataclasses

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from doorstep.eta_pyfunc import load_bundle
from tests.synth import make_deliveries
from training.eta import BoosterParams, EtaConfig
from training.leg import LegConfig
from training.pipeline_eta import holdout_start, train_and_register_eta
from training.registry import GateRule

TINY = EtaConfig(
    booster=BoosterParams(n_estimators=30, num_leaves=15, min_child_samples=10, early_stopping_rounds=10),
    calib_days=7,
    valid_days=4,
    max_train_queries=4_000,
    num_threads=1,
)
TINY_LEG = LegConfig(booster=BoosterParams(n_estimators=20, num_leaves=7, min_child_samples=10), valid_days=4)
LOOSE = GateRule(tolerance=0.2)  # tiny data: the window check is the real-data benchmark's job


@pytest.fixture(scope="module")
def deliveries() -> pd.DataFrame:
    return make_deliveries(days=34, couriers=4, stops=7, seed=11)


def test_holdout_is_the_most_recent_days(deliveries: pd.DataFrame) -> None:
    assert holdout_start(deliveries, 7) == "2021-06-28"


def test_train_register_gate_and_load_back(deliveries: pd.DataFrame, mlflow_uri: str) -> None:
    first = train_and_register_eta(
        deliveries, TINY, data_source="synth", holdout_days=7, gate=LOOSE, leg_config=TINY_LEG
    )
    assert first.version == "1"
    assert first.decision is not None and first.decision.promoted, first.decision
    client = MlflowClient()
    assert client.get_model_version_by_alias("doorstep-eta", "champion").version in ("1", 1)
    run = mlflow.get_run(first.run_id)
    assert "leg.model.mae_min" in run.data.metrics
    assert run.data.metrics["unordered.model.mae_min"] < run.data.metrics["unordered.baseline.const_median.mae_min"]
    assert run.data.tags["feature_set"] == "eta_v6"

    bundle = load_bundle("models:/doorstep-eta@champion")
    assert bundle.leg is not None
    lat = np.array([43.84, 43.85, 43.83])
    lng = np.array([126.55, 126.56, 126.54])
    minutes = bundle.leg.predict_matrix(lat, lng, lat, lng, pd.Timestamp("2021-07-01 10:00", tz="Asia/Shanghai"))
    assert minutes.shape == (3, 3) and np.all(np.diag(minutes) == 0)

    worse = dataclasses.replace(TINY, booster=dataclasses.replace(TINY.booster, learning_rate=1e-4, n_estimators=3))
    second = train_and_register_eta(
        deliveries, worse, data_source="synth", holdout_days=7, gate=LOOSE, leg_config=TINY_LEG
    )
    assert second.version == "2"
    assert second.decision is not None and not second.decision.promoted
    assert "mae" in second.decision.reason.lower()
    assert client.get_model_version_by_alias("doorstep-eta", "challenger").version in ("2", 2)
    assert client.get_model_version_by_alias("doorstep-eta", "champion").version in ("1", 1)
