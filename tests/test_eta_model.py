"""ETA model: time split, calibrated windows, no crossing, monotone in ordered mode, baselines."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from doorstep.eta_bundle import EtaPrediction, finish, horizon_bucket, shape
from features.eta_queries import QueryBatch, queries_from_deliveries
from tests.synth import make_deliveries
from training.benchmark_eta import run_eta_benchmark
from training.eta import BoosterParams, EtaConfig, bound_rounds, conformal_offsets, make_split

TINY = EtaConfig(
    booster=BoosterParams(
        n_estimators=40, num_leaves=15, min_child_samples=10, early_stopping_rounds=10
    ),
    calib_days=7,
    valid_days=4,
    max_train_queries=5_000,
    num_threads=1,
)


@pytest.fixture(scope="module")
def bench() -> object:
    deliveries = make_deliveries(days=36, couriers=4, stops=8, seed=3)
    # also exercises the refit of every booster on every pre-test day after calibration
    return run_eta_benchmark(
        deliveries, "2021-07-01", dataclasses.replace(TINY, refit_with_calibration="all")
    )


def test_horizon_buckets() -> None:
    assert horizon_bucket([0, 29.9, 30, 59, 60, 119, 120, 500]).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_split_needs_enough_history() -> None:
    deliveries = make_deliveries(days=10, couriers=2, stops=5, seed=0)
    with pytest.raises(ValueError, match="need at least 18 days before the test window"):
        make_split(deliveries, 18_800, TINY)


def test_conformal_offsets_reach_nominal_coverage() -> None:
    rng = np.random.default_rng(0)
    y = rng.gamma(4.0, 15.0, 20_000)
    p50 = y + rng.normal(0, 10, y.size)
    p10, p90 = p50 - 5, p50 + 5  # far too narrow: calibration must widen
    offsets = conformal_offsets(p10, p50, p90, y, 0.8)
    assert all(o > 0 for o in offsets)
    o = np.asarray(offsets)[horizon_bucket(p50)]
    covered = (p10 - o <= y) & (y <= p90 + o)
    assert abs(covered.mean() - 0.8) < 0.01
    for b in range(4):
        assert abs(covered[horizon_bucket(p50) == b].mean() - 0.8) < 0.03


def test_finish_never_crosses_and_is_monotone_when_ordered() -> None:
    batch_like = QueryBatch.__new__(QueryBatch)
    object.__setattr__(batch_like, "t_query", np.array([0, 0, 0, 1, 1]))
    object.__setattr__(batch_like, "t_seq", np.array([0, 1, 2, 0, 1]))
    raw = EtaPrediction(
        p10=np.array([5.0, 3.0, 20.0, 1.0, 0.5]),
        p50=np.array([10.0, 8.0, 25.0, 4.0, 2.0]),
        p90=np.array([15.0, 12.0, 30.0, 9.0, 3.0]),
    )
    out = finish(shape(raw, batch_like, "ordered"), batch_like, "ordered", [1.0, 1.0, 1.0, 1.0])
    assert out.p50.tolist() == [10.0, 10.0, 25.0, 4.0, 4.0]
    assert np.all(out.p10 <= out.p50) and np.all(out.p50 <= out.p90)
    assert np.all(out.p10 >= 0)


def test_benchmark_beats_baselines_with_calibrated_windows(bench: object) -> None:
    results = bench.results  # type: ignore[attr-defined]
    assert set(results["protocols"]) == {"ordered", "unordered"}
    for mode, p in results["protocols"].items():
        assert set(p["model"]) == {
            "mae_min",
            "rmse_min",
            "acc10",
            "acc20",
            "coverage_p10_p90",
            "width_min",
        }
        assert {"speed", "const_median", "zone_hour"} <= set(p["baselines"])
        if mode == "ordered":
            assert {"rank_median", "speed_path"} <= set(p["baselines"])
        assert p["baselines"]["speed"]["coverage_p10_p90"] is None
        assert p["model"]["mae_min"] < p["baselines"]["const_median"]["mae_min"]
        assert (
            0.65 <= p["model"]["coverage_p10_p90"] <= 0.95
        )  # tiny data: loose, the real check is LaDe
    assert results["fit_seconds"] > 0


def test_ordered_predictions_never_decrease_along_the_plan(bench: object) -> None:
    test: QueryBatch = bench.test  # type: ignore[attr-defined]
    pred = bench.evaluation["ordered"].prediction  # type: ignore[attr-defined]
    frame = pd.DataFrame(
        {"q": test.t_query, "seq": test.t_seq, "p50": pred.p50, "p10": pred.p10, "p90": pred.p90}
    )
    frame = frame.sort_values(["q", "seq"])
    for col in ("p10", "p50", "p90"):
        assert (frame.groupby("q")[col].diff().dropna() >= -1e-9).all()
    assert np.all(pred.p10 <= pred.p50) and np.all(pred.p50 <= pred.p90)


def test_bound_boosters_train_their_share_of_the_rounds(bench: object) -> None:
    train = bench.train  # type: ignore[attr-defined]
    for mode, model in train.bundle.modes.items():
        best = train.best_iterations[mode]
        assert model.boosters[0.5].num_trees() == best
        for q in (0.1, 0.9):
            assert model.boosters[q].num_trees() == bound_rounds(best, TINY)
    no_floor = dataclasses.replace(TINY, min_bound_rounds=0)
    assert bound_rounds(100, no_floor) == 60 and bound_rounds(12, no_floor) == 10
    assert bound_rounds(100, dataclasses.replace(no_floor, bound_rounds_share=1.0)) == 100
    # the floor (150 by default), capped at n_estimators (TINY: 40)
    assert EtaConfig().min_bound_rounds == 150
    assert bound_rounds(12, TINY) == 40 and bound_rounds(100, TINY) == 60
    assert bound_rounds(90, EtaConfig()) == 150 and bound_rounds(300, EtaConfig()) == 180
    with pytest.raises(ValueError, match="bound_rounds_share"):
        dataclasses.replace(TINY, bound_rounds_share=0.0)


def test_each_mode_trains_at_its_scale_of_the_shared_booster(bench: object) -> None:
    train = bench.train  # type: ignore[attr-defined]
    lr, bins = TINY.booster.learning_rate, TINY.booster.max_bin
    assert TINY.booster_scale == {"ordered": {"learning_rate": 0.5, "max_bin": 2.0}}  # default
    for mode, model in train.bundle.modes.items():
        scale = TINY.booster_scale.get(mode, {})
        want = lr * scale.get("learning_rate", 1.0)
        assert float(model.boosters[0.5].params["learning_rate"]) == pytest.approx(want)
        assert int(model.boosters[0.5].params["max_bin"]) == round(bins * scale.get("max_bin", 1.0))
        # the bounds keep travelling as far as the P50: their step is its step over the share
        got = float(model.boosters[0.9].params["learning_rate"])
        assert got == pytest.approx(want / TINY.bound_rounds_share)
    assert TINY.for_mode("unordered") is TINY
    # integer parameters are rounded and never scaled below 2
    tiny_bins = dataclasses.replace(TINY, booster_scale={"ordered": {"max_bin": 0.01}})
    assert tiny_bins.for_mode("ordered").booster.max_bin == 2
    with pytest.raises(ValueError, match="booster_scale: unknown mode 'zigzag'"):
        dataclasses.replace(TINY, booster_scale={"zigzag": {"learning_rate": 0.5}})
    with pytest.raises(
        ValueError, match=r"booster_scale.ordered.learning_rate: must be in \(0, 10\]"
    ):
        dataclasses.replace(TINY, booster_scale={"ordered": {"learning_rate": 0.0}})
    with pytest.raises(ValueError, match=r"booster_scale\.ordered: cannot scale 'seed'"):
        dataclasses.replace(TINY, booster_scale={"ordered": {"seed": 2.0}})


def test_refit_after_calibration_refits_the_point_and_keeps_the_calibrated_bounds() -> None:
    from training.eta import train_eta

    deliveries = make_deliveries(days=36, couriers=3, stops=6, seed=5)
    assert EtaConfig().refit_with_calibration == TINY.refit_with_calibration == "p50"
    p50 = train_eta(deliveries, "2021-07-01", TINY)
    none = train_eta(
        deliveries, "2021-07-01", dataclasses.replace(TINY, refit_with_calibration="none")
    )
    assert p50.best_iterations == none.best_iterations
    for mode, model in p50.bundle.modes.items():
        other = none.bundle.modes[mode]
        for q in (0.1, 0.9):  # the same bounds, trained once on the same rows
            assert model.boosters[q].model_to_string() == other.boosters[q].model_to_string()
        # the point saw the calibration days too, with the same rounds
        assert model.boosters[0.5].num_trees() == other.boosters[0.5].num_trees()
        assert model.boosters[0.5].model_to_string() != other.boosters[0.5].model_to_string()
    with pytest.raises(ValueError, match="refit_with_calibration: must be one of"):
        dataclasses.replace(TINY, refit_with_calibration=True)  # type: ignore[arg-type]


def test_training_never_sees_the_test_days() -> None:
    deliveries = make_deliveries(days=36, couriers=3, stops=6, seed=5)
    batch = queries_from_deliveries(deliveries)
    a = run_eta_benchmark(deliveries, "2021-07-01", TINY)
    later = deliveries["dispatch_time"] >= pd.Timestamp("2021-07-01", tz="Asia/Shanghai")
    changed = deliveries.copy()
    changed.loc[later, "arrival_time"] += pd.Timedelta(minutes=30)
    changed.loc[later, "departure_time"] += pd.Timedelta(minutes=30)
    b = run_eta_benchmark(changed, "2021-07-01", TINY)
    assert batch.n_queries > 0
    assert a.train.calibration == b.train.calibration
    assert a.train.best_iterations == b.train.best_iterations


def test_benchmark_validates_contract_parquet(tmp_path: Path) -> None:
    """A contract file goes through validation too: a GPS placeholder at (0, 0) is left out and
    counted (a stop 10,000 km away would wreck the distance baselines); above 1% it is refused."""
    from training.benchmark_eta import load_for_benchmark

    deliveries = make_deliveries(days=3, couriers=4, stops=30, seed=1)
    few = deliveries.copy()
    few.loc[few.index[0], ["lat", "lng"]] = 0.0
    path = tmp_path / "few.parquet"
    few.to_parquet(path)
    frame, info = load_for_benchmark(path, "parquet")
    assert info["rows_in_file"] == len(deliveries)
    assert info["rows_dropped"] == 1
    assert info["dropped_reasons"] == {"lat/lng: at (0, 0), a missing-GPS placeholder": 1}
    assert len(frame) == len(deliveries) - 1
    assert (frame["lat"].abs() > 1).all()

    many = deliveries.copy()
    bad = len(many) // 50  # about 2% of the rows
    many.loc[many.index[:bad], ["lat", "lng"]] = 0.0
    path = tmp_path / "many.parquet"
    many.to_parquet(path)
    msg = f"validation would drop {bad / len(many):.1%} of rows; the protocol allows under 1%"
    with pytest.raises(ValueError, match=re.escape(msg)):
        load_for_benchmark(path, "parquet")


def test_training_with_the_learned_visit_order_fills_its_columns_and_survives_pickling() -> None:
    import pickle

    from features.eta_features import feature_names

    deliveries = make_deliveries(days=36, couriers=3, stops=6, seed=5)
    assert EtaConfig().pair_order is True
    config = dataclasses.replace(TINY, pair_order=True, modes=("unordered",))
    result = run_eta_benchmark(deliveries, "2021-07-01", config)
    featurizer = result.train.bundle.featurizer
    assert len(featurizer.pair_order_.models_) == len(featurizer.pair_order_.cuts_) >= 1
    X = featurizer.transform(result.test, "unordered")
    pw = [i for i, n in enumerate(feature_names("unordered")) if n.startswith("pw_")]
    assert np.isfinite(X[:, pw]).all()  # test days are after the window: the last model ranks
    again = pickle.loads(pickle.dumps(result.train.bundle))
    np.testing.assert_array_equal(
        again.predict(result.test, "unordered").p50,
        result.train.bundle.predict(result.test, "unordered").p50,
    )
    assert result.results["protocols"]["unordered"]["model"]["mae_min"] > 0
