"""Compiled boosters (lleaves) predict what LightGBM predicts, are cached per CPU, and never
travel inside a pickled bundle."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from doorstep import fast_trees as ft

pytestmark = pytest.mark.skipif(not ft.available(), reason="lleaves is not installed")


def _booster(seed: int = 0, objective: str = "quantile") -> tuple[lgb.Booster, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 6))
    X[rng.random(X.shape) < 0.05] = np.nan  # missing values take the trees' default branches
    y = X[:, 0] * 3 + np.nan_to_num(X[:, 1]) ** 2 + rng.normal(0, 0.5, 400)
    params = {"objective": objective, "alpha": 0.9, "num_leaves": 7, "verbose": -1, "seed": seed}
    return lgb.train(params, lgb.Dataset(X, y), num_boost_round=25), X


def test_compiled_booster_predicts_what_lightgbm_predicts(tmp_path: Path) -> None:
    booster, X = _booster()
    fast = ft.compiled(booster, tmp_path)
    assert fast is not None
    np.testing.assert_allclose(fast.predict(X), booster.predict(X), rtol=0, atol=1e-9)
    assert len(list(tmp_path.glob("*.so"))) == 1


def test_cache_is_reused_and_missing_is_not_compiled_unless_asked(tmp_path: Path) -> None:
    booster, X = _booster(1)
    assert ft.compiled(booster, tmp_path, compile_missing=False) is None
    assert ft.compile_boosters({"b": booster}, tmp_path) == ["b"]
    assert ft.compile_boosters({"b": booster}, tmp_path) == []  # cached: nothing to do
    again = ft.compiled(booster, tmp_path, compile_missing=False)
    assert again is not None
    np.testing.assert_allclose(again.predict(X), booster.predict(X), atol=1e-9)
    other, _ = _booster(2)
    assert ft.compiled(other, tmp_path, compile_missing=False) is None  # another model


def test_accelerated_eta_bundle_predicts_the_same_and_pickles_without_binaries(
    tmp_path: Path,
) -> None:
    from features.eta_queries import queries_from_deliveries
    from tests.synth import make_deliveries
    from tests.test_pipeline_eta import TINY, TINY_LEG
    from training.eta import train_eta
    from training.leg import train_leg

    deliveries = make_deliveries(days=24, couriers=3, stops=6, seed=2)
    bundle = train_eta(deliveries, "2021-06-20", TINY).bundle
    bundle.leg = train_leg(deliveries, "2021-06-20", TINY_LEG).bundle
    batch = queries_from_deliveries(deliveries)
    before = {m: bundle.predict(batch, m) for m in bundle.modes}
    lat = np.array([43.84, 43.85, 43.86])
    lng = np.array([126.55, 126.56, 126.57])
    when = deliveries["dispatch_time"].iloc[-1]
    matrix = bundle.leg.predict_matrix(lat, lng, lat, lng, when)

    order = bundle.featurizer.pair_order_  # the learned visit order is on by default
    assert set(order.serving_boosters()) == {"ranker", "pair"}
    assert (batch.q_route_day >= order.cuts_[-1]).any()  # days the last (compiled) models rank
    report = ft.accelerate(bundle, tmp_path, compile_missing=True)
    # 3 quantile boosters per mode, the leg model, the visit order's ranker and pair model
    assert report.complete and report.compiled == len(ft.boosters_of(bundle)) == 9
    assert set(order.fast_) == {"ranker", "pair"}
    for mode, pred in before.items():
        after = bundle.predict(batch, mode)
        np.testing.assert_allclose(after.p50, pred.p50, atol=1e-6)
        np.testing.assert_allclose(after.p90, pred.p90, atol=1e-6)
    np.testing.assert_allclose(
        bundle.leg.predict_matrix(lat, lng, lat, lng, when), matrix, atol=1e-6
    )

    copy = pickle.loads(pickle.dumps(bundle))
    assert all(not m.__dict__.get("fast") for m in copy.modes.values())
    assert copy.leg.__dict__.get("fast") is None
    assert "fast_" not in copy.featurizer.pair_order_.__dict__
    np.testing.assert_allclose(copy.predict(batch, "unordered").p50, before["unordered"].p50)
    np.testing.assert_allclose(copy.predict(batch, "ordered").p50, before["ordered"].p50)


def test_recorded_keys_find_the_same_binaries_and_stale_records_are_ignored(
    tmp_path: Path,
) -> None:
    """Workers skip serialising boosters by reading the keys recorded beside a model copy;
    a record for another bundle file, or a key without its binary, falls back to the trees."""
    booster, X = _booster(2)
    first = ft.compiled(booster, tmp_path)
    assert first is not None and first.key
    keys_file = tmp_path / "tree-keys.json"
    ft.save_known_keys(keys_file, "bundle-1", {"b": first.key})
    assert ft.read_known_keys(keys_file, "bundle-1") == {"b": first.key}
    assert ft.read_known_keys(keys_file, "bundle-2") == {}  # another bundle file
    assert ft.read_known_keys(tmp_path / "absent.json", "bundle-1") == {}
    again = ft.compiled(booster, tmp_path, compile_missing=False, key=first.key)
    assert again is not None
    np.testing.assert_array_equal(again.predict(X), first.predict(X))
    stale = ft.compiled(booster, tmp_path, compile_missing=False, key="0" * 24)
    assert stale is not None and stale.key == first.key
