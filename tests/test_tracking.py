"""Logging, reloading and promoting ETA models against a throwaway MLflow store.

A tiny seeded city (4 couriers, 28 days, 8 stops a route) trains 5-tree boosters in about a
second; every test talks to its own SQLite store under ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from doorstep.bundle_io import write_bundle
from doorstep.eta_bundle import EtaBundle
from doorstep.eta_pyfunc import (
    ETA_P10,
    ETA_P50,
    ETA_P90,
    OUTPUT_COLUMNS,
    EtaPyfunc,
    frame_to_routes,
    load_bundle,
    predict_frame,
    routes_to_frame,
)
from features import schema as s
from features.eta_queries import QueryBatch, queries_from_deliveries
from features.eta_request import RouteQuery, ZoneResolver, build_batch, requests_from_deliveries
from training import registry
from training.baselines import fit_baselines
from training.eta import BoosterParams, EtaConfig, EtaTrainResult, route_day, train_eta
from training.evaluate import ModeEvaluation, evaluate
from training.registry import GateRule, RollbackError
from training.tracking import LoggedModel, log_eta_model

TZ = "Asia/Shanghai"
START = pd.Timestamp("2025-03-03", tz=TZ)  # a Monday
DAYS, TEST_DAYS = 28, 7
TEST_FROM = START + pd.Timedelta(days=DAYS - TEST_DAYS)
DEPOT = (43.80, 125.30)
NAME = "doorstep-eta-test"


def synthetic_deliveries(seed: int = 3, couriers: int = 4, stops: int = 8) -> pd.DataFrame:
    """Couriers with their own pace and areas; each day one route through areas in a habitual
    order, so profiles and sequence features carry signal a model can learn."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    centers = rng.normal(0.0, 0.02, size=(couriers, 6, 2)) + np.array(DEPOT)
    for day in range(DAYS):
        for c in range(couriers):
            speed = 0.25 + 0.05 * c  # km per minute
            dispatch = START + pd.Timedelta(days=day, hours=8, minutes=int(rng.integers(0, 30)))
            areas = np.sort(rng.choice(6, size=stops, replace=True))
            t, pos = dispatch, DEPOT
            for k, a in enumerate(areas):
                lat, lng = centers[c, a] + rng.normal(0.0, 0.002, size=2)
                km = float(np.hypot((lat - pos[0]) * 111.0, (lng - pos[1]) * 80.0))
                t = t + pd.Timedelta(minutes=km / speed + rng.gamma(4.0, 1.5))
                service = float(rng.uniform(1.0, 4.0))
                rows.append(
                    {
                        s.ROUTE_ID: f"r{day}-{c}",
                        s.COURIER_ID: f"c{c}",
                        s.VEHICLE_TYPE: "ebike" if c % 2 else "bike",
                        s.STOP_ID: f"s{day}-{c}-{k}",
                        s.LAT: lat,
                        s.LNG: lng,
                        s.ZONE_ID: h3.latlng_to_cell(lat, lng, s.DEFAULT_H3_RESOLUTION),
                        s.DISPATCH_TIME: dispatch,
                        s.READY_TIME: dispatch - pd.Timedelta(minutes=20),
                        s.DEPOT_LAT: DEPOT[0],
                        s.DEPOT_LNG: DEPOT[1],
                        s.AOI_ID: f"a{c}-{a}",
                        s.PLANNED_SEQ: k,
                        s.PLANNED_ARRIVAL: pd.NaT,
                        s.ARRIVAL_TIME: t,
                        s.DEPARTURE_TIME: t + pd.Timedelta(minutes=service),
                        s.PACKAGES: int(rng.integers(1, 4)),
                        s.STOP_TYPE: str(rng.choice(["residential", "business", "locker"])),
                    }
                )
                t, pos = t + pd.Timedelta(minutes=service), (lat, lng)
    frame = pd.DataFrame(rows)
    for col in (s.DISPATCH_TIME, s.READY_TIME, s.ARRIVAL_TIME, s.DEPARTURE_TIME, s.PLANNED_ARRIVAL):
        stamps = pd.to_datetime(frame[col], utc=True).dt.round("s").dt.tz_convert(TZ)
        frame[col] = stamps.astype(pd.DatetimeTZDtype(unit="ns", tz=TZ))
    for col in (s.PLANNED_SEQ, s.PACKAGES):
        frame[col] = frame[col].astype("Int64")
    return frame


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def store(mlflow_uri: str, migrated_db: Path, tmp_path: Path) -> str:
    """The conftest's throwaway store, started from an already-migrated copy (creating
    MLflow's tables takes seconds per database), with the experiment's artifacts under
    ``tmp_path`` instead of ``./mlruns``."""
    shutil.copyfile(migrated_db, mlflow_uri.removeprefix("sqlite:///"))
    artifacts = (tmp_path / "artifacts").as_uri()
    MlflowClient(mlflow_uri).create_experiment("doorstep-eta", artifact_location=artifacts)
    return mlflow_uri


def tiny_config(**booster: Any) -> EtaConfig:
    params = {"n_estimators": 5, "num_leaves": 7, "min_child_samples": 10, "learning_rate": 0.3}
    return EtaConfig(
        booster=BoosterParams(**(params | booster)),
        calib_days=7,
        valid_days=5,
        max_train_queries=2_000,
        num_threads=1,
    )


@dataclass(frozen=True)
class Trained:
    deliveries: pd.DataFrame
    result: EtaTrainResult
    evaluation: dict[str, ModeEvaluation]
    test: QueryBatch
    routes: list[RouteQuery]
    config: EtaConfig


def train_and_evaluate(deliveries: pd.DataFrame, config: EtaConfig) -> Trained:
    result = train_eta(deliveries, TEST_FROM.date().isoformat(), config)
    batch = queries_from_deliveries(deliveries)
    day = route_day(batch)
    test = batch.take_queries(day >= result.split.test_from)
    train = batch.take_queries(day < result.split.fit_end)
    history = deliveries[deliveries[s.DISPATCH_TIME] < TEST_FROM]
    evaluation = evaluate(result.bundle, fit_baselines(history, train), test)
    recent = deliveries[deliveries[s.DISPATCH_TIME] >= TEST_FROM]
    routes = requests_from_deliveries(recent[recent[s.ROUTE_ID].isin(["r25-0", "r25-1"])])[:3]
    return Trained(deliveries, result, evaluation, test, routes, config)


@pytest.fixture(scope="module")
def trained() -> Trained:
    return train_and_evaluate(synthetic_deliveries(), tiny_config())


@pytest.fixture(scope="module")
def weak(trained: Trained) -> Trained:
    """Nearly a constant: a learning rate this small leaves the boosters at their init."""
    return train_and_evaluate(trained.deliveries, tiny_config(learning_rate=1e-4))


def log(t: Trained, name: str | None = NAME) -> LoggedModel:
    return log_eta_model(
        t.result,
        t.evaluation,
        config=t.config,
        data_info={"data_source": "synthetic:test_tracking", "rows": str(len(t.deliveries))},
        example_routes=t.routes,
        y_test=t.test.t_label_min,
        registered_name=name,
    )


def scores(evaluation: dict[str, ModeEvaluation]) -> dict[str, dict[str, float | None]]:
    return {mode: ev.model for mode, ev in evaluation.items()}


def bundle_predictions(bundle: EtaBundle, routes: list[RouteQuery], mode: str) -> np.ndarray:
    zones = ZoneResolver(bundle.featurizer.h3_resolution)
    pred = bundle.predict(build_batch(routes, bundle.featurizer.tz_, zones), mode)  # type: ignore[arg-type]
    return np.column_stack([pred.p10, pred.p50, pred.p90])


# --- request table ---------------------------------------------------------------------------


def test_request_table_round_trips_routes(trained: Trained) -> None:
    frame = routes_to_frame(trained.routes, "ordered")
    assert frame_to_routes(frame) == {"ordered": trained.routes}


def test_request_table_predictions_follow_row_order(trained: Trained) -> None:
    bundle = trained.result.bundle
    frame = pd.concat(
        [routes_to_frame(trained.routes, m, [f"{m}{i}" for i in range(3)]) for m in bundle.modes],
        ignore_index=True,
    )
    shuffled = frame.iloc[np.random.default_rng(0).permutation(len(frame))].reset_index(drop=True)
    out = predict_frame(bundle, shuffled)
    assert tuple(out.columns) == OUTPUT_COLUMNS
    assert out["stop_id"].tolist() == shuffled["stop_id"].tolist()
    for mode in bundle.modes:
        # a query's stops out of order are another route: compare on the ordered table
        ordered = predict_frame(bundle, frame[frame["mode"] == mode])
        expected = bundle_predictions(bundle, trained.routes, mode)
        np.testing.assert_array_equal(ordered[[ETA_P10, ETA_P50, ETA_P90]].to_numpy(), expected)


def test_request_table_errors_are_clear(trained: Trained) -> None:
    bundle = trained.result.bundle
    frame = routes_to_frame(trained.routes, "ordered")
    with pytest.raises(ValueError, match=re.escape("missing column(s) ['courier_lat']")):
        predict_frame(bundle, frame.drop(columns=["courier_lat"]))
    with pytest.raises(ValueError, match="without a UTC offset"):
        predict_frame(bundle, frame.assign(time="2025-03-28T09:00:00"))
    with pytest.raises(ValueError, match=re.escape("['sideways'] not served")):
        predict_frame(bundle, frame.assign(mode="sideways"))


# --- logging ---------------------------------------------------------------------------------


def test_logged_model_carries_its_evidence_and_round_trips(trained: Trained, store: str) -> None:
    """One log (logging costs seconds): what the run records, then what comes back."""
    logged = log(trained)
    check_run(MlflowClient(store), logged, trained)
    check_round_trip(logged, trained)


def check_run(client: MlflowClient, logged: LoggedModel, trained: Trained) -> None:
    run = client.get_run(logged.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "doorstep-eta"
    metrics = run.data.metrics
    for mode in ("ordered", "unordered"):
        for key in (
            f"{mode}.model.mae_min",
            f"{mode}.model.coverage_p10_p90",
            f"{mode}.model.share_below_p50",
            f"{mode}.model.stability_min",
            f"{mode}.baseline.speed.mae_min",
            f"{mode}.baseline.const_median.mae_min",
            f"{mode}.baseline.zone_hour.mae_min",
        ):
            assert key in metrics, key
        assert any(k.startswith(f"{mode}.by_horizon.") for k in metrics)
    assert "ordered.baseline.rank_median.mae_min" in metrics
    assert metrics["ordered.model.mae_min"] == pytest.approx(
        trained.evaluation["ordered"].model["mae_min"]
    )
    assert "fit_seconds" in metrics
    params = run.data.params
    assert params["booster.n_estimators"] == "5"
    assert params["best_iteration.ordered"] == str(trained.result.best_iterations["ordered"])
    tags = run.data.tags
    assert tags["feature_set"] == "eta_v6"
    assert tags["test_from"] == TEST_FROM.date().isoformat()
    assert tags["data_source"] == "synthetic:test_tracking"
    assert tags["training_window"] == "/".join(trained.result.bundle.training_window)

    artifacts = {a.path for a in client.list_artifacts(logged.run_id)}
    plots = {a.path for a in client.list_artifacts(logged.run_id, "plots")}
    assert "evaluation.json" in artifacts
    assert plots == {
        "plots/residuals_by_horizon.png",
        "plots/calibration.png",
        "plots/feature_importance.png",
    }
    path = mlflow.artifacts.download_artifacts(
        run_id=logged.run_id, artifact_path="evaluation.json"
    )
    summary = json.loads(Path(path).read_text())
    assert summary["modes"]["unordered"]["baselines"]["speed"]["mae_min"] > 0
    assert "all" in summary["modes"]["ordered"]["coverage_by_horizon"]

    assert logged.model_version == "1"
    version = client.get_model_version(NAME, "1")
    assert version.run_id == logged.run_id
    assert version.tags["feature_set"] == "eta_v6"
    assert version.tags["data_source"] == "synthetic:test_tracking"


def check_round_trip(logged: LoggedModel, trained: Trained) -> None:
    info = mlflow.models.get_model_info(logged.model_uri)
    assert info.signature is not None
    assert {c.name for c in info.signature.inputs.inputs if c.required} >= {
        "query_id", "mode", "time", "courier_lat", "courier_lng", "stop_id", "lat", "lng",
    }  # fmt: skip
    assert not next(c for c in info.signature.inputs.inputs if c.name == "aoi_id").required
    assert info.saved_input_example_info is not None
    local = Path(mlflow.artifacts.download_artifacts(logged.model_uri))
    reqs = (local / "requirements.txt").read_text()
    assert "lightgbm==" in reqs and "mlflow==" in reqs and "h3==" in reqs

    bundle = trained.result.bundle
    pyfunc = mlflow.pyfunc.load_model(logged.model_uri)
    fast = load_bundle(f"models:/{NAME}/{logged.model_version}")
    for mode in bundle.modes:
        frame = routes_to_frame(trained.routes, mode)
        expected = bundle_predictions(bundle, trained.routes, mode)
        got = pyfunc.predict(frame)
        assert list(got.columns) == list(OUTPUT_COLUMNS)
        np.testing.assert_array_equal(got[[ETA_P10, ETA_P50, ETA_P90]].to_numpy(), expected)
        np.testing.assert_array_equal(bundle_predictions(fast, trained.routes, mode), expected)
    # the stored input example still predicts (MLflow validated it at log time too)
    example = mlflow.models.Model.load(local).load_input_example(str(local))
    assert isinstance(example, pd.DataFrame)
    assert set(example["mode"]) == {"ordered", "unordered"}
    assert pyfunc.predict(example)[ETA_P50].notna().all()


def test_load_bundle_refuses_an_unknown_feature_set(trained: Trained, tmp_path: Path) -> None:
    stale = dataclasses.replace(trained.result.bundle, feature_set="eta_v0")
    mlflow.pyfunc.save_model(
        tmp_path / "model",
        python_model=EtaPyfunc(),
        artifacts={"bundle": str(write_bundle(stale, tmp_path / "bundle.pkl"))},
        pip_requirements=[],  # inferring them would load the model in a subprocess
    )
    with pytest.raises(ValueError, match=re.escape("model uses 'eta_v0'")):
        load_bundle(str(tmp_path / "model"))


def test_log_requires_a_data_source(trained: Trained, store: str) -> None:
    with pytest.raises(ValueError, match="data_source"):
        log_eta_model(
            trained.result,
            trained.evaluation,
            config=trained.config,
            data_info={},
            example_routes=trained.routes,
            y_test=trained.test.t_label_min,
        )


def test_pyfunc_without_bundle_says_how_to_load() -> None:
    with pytest.raises(RuntimeError, match="load_model"):
        EtaPyfunc().predict(None, pd.DataFrame())


# --- champion / challenger -------------------------------------------------------------------


def test_gate_with_real_models(trained: Trained, weak: Trained, store: str) -> None:
    """The champion is re-scored on the challenger's rows through the registry."""
    gate = GateRule(tolerance=0.15)  # tiny models on a tiny city: coverage is rough
    client = MlflowClient(store)

    def scorer(uri: str) -> dict[str, dict[str, float | None]]:
        bundle = load_bundle(uri)
        return {
            m: ev.model for m, ev in evaluate(bundle, _baselines(trained), trained.test).items()
        }

    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("doorstep-eta")
    with mlflow.start_run() as run:  # a caller's run (a pipeline step) is used, not replaced
        first = log(trained)
    assert first.run_id == run.info.run_id
    decision = registry.promote_if_better(
        NAME, str(first.model_version), scores(trained.evaluation), scorer, gate
    )
    assert decision.promoted, decision.reason
    assert decision.reason == "no champion yet"
    assert (decision.champion_version, decision.previous_champion) == ("1", None)

    # only the champion is ever loaded: the challenger needs no artifact, just its scores
    (second,) = _versions(client, 1)
    decision = registry.promote_if_better(NAME, second, scores(weak.evaluation), scorer, gate)
    assert not decision.promoted
    assert "mae_min" in decision.reason and "not below champion's" in decision.reason
    assert decision.champion_version == "1"
    listed = registry.current_versions(NAME)
    assert {a: v.version for a, v in listed.items()} == {"champion": "1", "challenger": "2"}
    assert listed["champion"].run_id == first.run_id
    assert listed["champion"].tags["feature_set"] == "eta_v6"
    assert client.get_model_version(NAME, "2").tags["gate_decision"].startswith("challenger:")


def _baselines(t: Trained) -> Any:
    batch = queries_from_deliveries(t.deliveries)
    train = batch.take_queries(route_day(batch) < t.result.split.fit_end)
    return fit_baselines(t.deliveries[t.deliveries[s.DISPATCH_TIME] < TEST_FROM], train)


def _versions(client: MlflowClient, n: int, source: str = "/nowhere") -> list[str]:
    """Cheap registered versions for gate logic (their source is never loaded)."""
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    return [str(client.create_model_version(NAME, source).version) for _ in range(n)]


def _mode_scores(mae: float, coverage: float = 0.80) -> dict[str, dict[str, float | None]]:
    return {m: {"mae_min": mae, "coverage_p10_p90": coverage} for m in ("ordered", "unordered")}


def test_gate_promotes_better_records_history_and_rolls_back(store: str) -> None:
    client = MlflowClient(store)
    v1, v2, v3 = _versions(client, 3)
    maes = {v1: 10.0, v2: 12.0, v3: 8.0}
    calls: list[str] = []

    def scorer(uri: str) -> dict[str, dict[str, float | None]]:
        calls.append(uri)
        return _mode_scores(maes[uri.rsplit("/", 1)[1]])

    assert registry.promote_if_better(NAME, v1, _mode_scores(10.0), scorer).promoted
    worse = registry.promote_if_better(NAME, v2, _mode_scores(12.0), scorer)
    assert not worse.promoted
    assert worse.reason == (
        "ordered mae_min 12.000 not below champion's 10.000; "
        "unordered mae_min 12.000 not below champion's 10.000"
    )
    better = registry.promote_if_better(NAME, v3, _mode_scores(8.0), scorer)
    assert better.promoted, better.reason
    assert (better.champion_version, better.previous_champion) == (v3, v1)
    assert calls == [f"models:/{NAME}/{v1}", f"models:/{NAME}/{v1}"]
    assert registry.champion_history(NAME, client) == [v1, v3]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v3
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == v2

    back = registry.rollback(NAME, client)
    assert (back.from_version, back.to_version) == (v3, v1)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v1
    assert registry.champion_history(NAME, client) == [v1]
    with pytest.raises(RollbackError, match=re.escape(f"champion {v1} has no earlier champion")):
        registry.rollback(NAME, client)


def test_gate_needs_every_mode_better_and_coverage_in_tolerance(store: str) -> None:
    client = MlflowClient(store)
    v1, v2, v3 = _versions(client, 3)
    champion = _mode_scores(10.0)
    registry.promote_if_better(NAME, v1, champion, lambda uri: champion)
    mixed = _mode_scores(10.0) | {"ordered": {"mae_min": 9.0, "coverage_p10_p90": 0.8}}
    mixed["unordered"]["mae_min"] = 10.5
    decision = registry.promote_if_better(NAME, v2, mixed, lambda uri: champion)
    assert not decision.promoted
    assert decision.reason == "unordered mae_min 10.500 not below champion's 10.000"
    wide = registry.promote_if_better(NAME, v3, _mode_scores(5.0, 0.90), lambda uri: champion)
    assert not wide.promoted
    assert wide.reason.startswith("ordered coverage 0.900 outside 0.80+-0.03")
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == v3


def test_a_champion_this_code_cannot_serve_is_replaced(store: str) -> None:
    """After an upgrade that changes the feature set, the old champion cannot be scored (or
    served): a challenger within coverage replaces it; one outside coverage still does not."""
    from doorstep.compat import FeatureSetMismatch

    client = MlflowClient(store)
    v1, v2, v3 = _versions(client, 3)
    registry.promote_if_better(NAME, v1, _mode_scores(5.0), lambda uri: _mode_scores(5.0))

    def old_features(uri: str) -> dict[str, dict[str, float | None]]:
        raise FeatureSetMismatch("feature_set: model uses 'eta_v0', this code computes 'eta_v6'")

    wide = registry.promote_if_better(NAME, v2, _mode_scores(9.0, 0.60), old_features)
    assert not wide.promoted and "coverage 0.600 outside" in wide.reason
    decision = registry.promote_if_better(NAME, v3, _mode_scores(9.0), old_features)
    assert decision.promoted
    assert decision.reason == (
        f"champion {v1} cannot be served by this code "
        "(feature_set: model uses 'eta_v0', this code computes 'eta_v6')"
    )
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == v3

    def broken(uri: str) -> dict[str, dict[str, float | None]]:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):  # any other scoring failure still surfaces
        registry.promote_if_better(NAME, v2, _mode_scores(1.0), broken)


def test_first_version_still_needs_coverage(store: str) -> None:
    client = MlflowClient(store)
    (v1,) = _versions(client, 1)
    decision = registry.promote_if_better(NAME, v1, _mode_scores(5.0, 0.60), lambda uri: {})
    assert not decision.promoted and decision.champion_version is None
    assert "coverage 0.600 outside" in decision.reason


def test_rollback_without_history_is_a_clear_error(store: str) -> None:
    client = MlflowClient(store)
    (v1,) = _versions(client, 1)
    with pytest.raises(
        RollbackError, match=re.escape(f"{NAME}: no champion, nothing to roll back")
    ):
        registry.rollback(NAME, client)
    registry.promote_if_better(NAME, v1, _mode_scores(5.0), lambda uri: {})
    with pytest.raises(RollbackError, match="no earlier champion to roll back to"):
        registry.rollback(NAME, client)
