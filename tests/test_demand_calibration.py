"""Conformal windows on counts: scores that do not tie on zeros, so coverage lands on nominal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from doorstep.demand_bundle import DemandBundle, FreqModel
from features import schema as s
from features.demand_features import DemandPanel, spec_for
from training.demand import (
    DemandTrainConfig,
    calibrate,
    class_offsets,
    pooled_group_offsets,
    train_demand,
)
from training.demand_backtest import Fold, actuals, protocol_queries, protocols, scored_zones
from training.eta import BoosterParams

CONFIG = DemandTrainConfig(
    booster=BoosterParams(
        n_estimators=60, num_leaves=7, min_child_samples=20, early_stopping_rounds=15
    ),
    calib_days=28,
    valid_days=14,
    warmup_days=7,
    level_feature="level_profile_14",  # as in production: without it quantile boosters return
    num_threads=1,  # data values (their leaves are residual quantiles), and scores tie again
)
TEST_FROM = pd.Timestamp("2024-04-01")


def sparse_poisson(zones: int, days: int, seed: int) -> pd.DataFrame:
    """Daily Poisson counts of small zones (0.2 to 4 parcels a day): most days are 0 or 1,
    the case where windows on the count scale tie."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-01-01", periods=days, freq="D")
    weekday = np.array([1.0, 1.0, 1.0, 1.0, 1.2, 0.6, 0.5])[ts.dayofweek.to_numpy()]
    level = rng.uniform(0.2, 4.0, zones)
    vol = rng.poisson(level[:, None] * weekday[None, :]).astype(float)
    return pd.DataFrame(
        {
            s.ZONE_ID: np.repeat([f"z{i}" for i in range(zones)], days),
            s.TS: np.tile(ts, zones),
            s.VOLUME: vol.ravel(),
        }
    )


@pytest.fixture(scope="module", params=["count", "quantile"])
def trained(request: pytest.FixtureRequest) -> tuple[FreqModel, pd.DataFrame]:
    table = sparse_poisson(zones=60, days=120, seed=11)
    config = dataclasses.replace(CONFIG, window=request.param)
    bundle = train_demand(table[table[s.TS] < TEST_FROM], "d", TEST_FROM, config=config).bundle
    return bundle.model("d"), table


def calibration_rows(model: FreqModel, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Day-ahead rows of the 28 calibration days (what ``calibrate`` saw for horizon 1)."""
    panel = DemandPanel.from_table(table[table[s.TS] < TEST_FROM], "d", end=TEST_FROM)
    start = TEST_FROM - pd.Timedelta(days=CONFIG.calib_days)
    fold = Fold(start, start, TEST_FROM)
    q = protocol_queries(panel, protocols("d", fold)[0], scored_zones(panel, start))
    return model.featurizer.transform(panel, q), actuals(panel, q)


def test_window_score_is_the_smallest_covering_offset(
    trained: tuple[FreqModel, pd.DataFrame],
) -> None:
    model, table = trained
    X, y = calibration_rows(model, table)
    score = model.window_score(X, y)
    saved = model.conformal
    try:
        for d in [-0.2, -0.05, 0.0, 0.05, 0.2] if model.window == "count" else [-0.5, 0, 0.5]:
            model.conformal = [d] * model.n_classes()
            p = model.predict(X, np.ones(len(y), dtype=int))
            covered = (p.p10 <= y) & (y <= p.p90)
            edge = np.isclose(score, d)
            assert (covered[~edge] == (score[~edge] <= d)).all()
    finally:
        model.conformal = saved


def test_coverage_lands_on_nominal_not_above_it(trained: tuple[FreqModel, pd.DataFrame]) -> None:
    model, table = trained
    X, y = calibration_rows(model, table)
    assert (y == 0).mean() > 0.2  # many zeros: where offsets on counts used to tie
    p = model.predict(X, np.ones(len(y), dtype=int))
    assert np.mean((p.p10 <= y) & (y <= p.p90)) == pytest.approx(0.80, abs=0.02)
    # later days from the same process: nominal within sampling noise (~1,000 points)
    fold = Fold(TEST_FROM, TEST_FROM, TEST_FROM + pd.Timedelta(days=20))
    panel = DemandPanel.from_table(table, "d", end=fold.test_end)
    q = protocol_queries(panel, protocols("d", fold)[0], scored_zones(panel, TEST_FROM))
    pred = DemandBundle({"d": model}).predict_queries(panel, q)
    yt = actuals(panel, q)
    assert np.mean((pred.p10 <= yt) & (yt <= pred.p90)) == pytest.approx(0.80, abs=0.04)


def test_windows_never_cross_and_the_point_is_the_heads_p50(
    trained: tuple[FreqModel, pd.DataFrame],
) -> None:
    model, table = trained
    X, y = calibration_rows(model, table)
    h = np.ones(len(y), dtype=int)
    raw_p50 = model.raw(X)[:, 1]
    saved = model.conformal
    try:
        for d in (-0.5, -0.1, 0.0, 0.3):
            model.conformal = [d] * model.n_classes()
            p = model.predict(X, h)
            assert (p.p10 <= p.p50).all() and (p.p50 <= p.p90).all() and (p.p10 >= 0).all()
            assert np.isfinite(p.p90).all()
            np.testing.assert_array_equal(p.p50, raw_p50)
    finally:
        model.conformal = saved


def test_a_negative_offset_narrows_the_window(trained: tuple[FreqModel, pd.DataFrame]) -> None:
    model, table = trained
    X, y = calibration_rows(model, table)
    h = np.ones(len(y), dtype=int)
    saved = model.conformal
    try:
        model.conformal = [0.0] * model.n_classes()
        wide = model.predict(X, h)
        model.conformal = [-0.05] * model.n_classes()
        narrow = model.predict(X, h)
    finally:
        model.conformal = saved
    assert (narrow.p90 - narrow.p10 <= wide.p90 - wide.p10 + 1e-9).all()
    assert np.mean((narrow.p10 <= y) & (y <= narrow.p90)) < np.mean(
        (wide.p10 <= y) & (y <= wide.p90)
    )


def test_a_bundle_from_before_windows_keeps_its_rule(
    trained: tuple[FreqModel, pd.DataFrame],
) -> None:
    """A registered champion pickled before ``window`` existed has window None: its offsets
    are sqrt-scale widenings of the head's floored quantiles, applied as they were."""
    model, table = trained
    X, y = calibration_rows(model, table)
    old = dataclasses.replace(model, window=None, conformal=[0.25, 0.25, 0.25])
    p = old.predict(X, np.ones(len(y), dtype=int))
    raw = old.raw(X)
    np.testing.assert_allclose(p.p90, np.maximum((np.sqrt(raw[:, 2]) + 0.25) ** 2, raw[:, 1]))
    np.testing.assert_array_equal(p.p50, raw[:, 1])


def test_hourly_offsets_are_per_origin_group_and_horizon_bucket() -> None:
    spec = spec_for("h")
    names = spec.feature_names()
    model = FreqModel.__new__(FreqModel)
    model.featurizer = type("F", (), {"spec_": spec})()  # type: ignore[assignment]
    model.origin_groups = (0, 8, 12, 16)
    X = np.zeros((5, len(names)), dtype=np.float32)
    X[:, names.index("origin_hour")] = [0, 7, 8, 13, 20]
    cls = model.offset_class(X, np.array([1, 24, 3, 7, 13]))
    # 4 horizon buckets per group: (group 0, b0), (0, b3), (1, b1), (2, b2), (3, b3)
    assert cls.tolist() == [0, 3, 5, 10, 15]
    assert model.n_classes() == 16


def test_class_offsets_fall_back_to_pooled_for_small_classes() -> None:
    score = np.concatenate([np.linspace(0, 1, 1000), [5.0] * 5])
    cls = np.concatenate([np.zeros(1000, dtype=int), np.ones(5, dtype=int)])
    offsets = class_offsets(score, cls, 2, 0.8)
    assert offsets[0] == pytest.approx(0.8, abs=0.01)
    assert offsets[1] == pytest.approx(np.quantile(score, 0.8), abs=0.01)  # 5 rows: pooled


def test_pooled_group_offsets_make_each_group_nominal_over_its_classes() -> None:
    """Group 0: a night bucket whose rows are covered by any window (-inf scores: the count is
    the P50) beside a busy bucket; group 1: two ordinary buckets. Group 0's busy bucket
    takes the level that makes the group's pooled coverage 0.8; group 1 keeps its own."""
    rng = np.random.default_rng(0)
    night = np.where(rng.random(2000) < 0.95, -np.inf, rng.normal(size=2000))
    busy, a, b = rng.normal(size=(3, 2000))
    score = np.concatenate([night, busy, a, b])
    cls = np.repeat([0, 1, 2, 3], 2000)
    own = class_offsets(score, cls, 4, 0.8)
    pooled = pooled_group_offsets(score, cls, 4, 2, 0.8)
    hit = score <= np.asarray(pooled)[cls]
    assert hit[cls < 2].mean() == pytest.approx(0.8, abs=0.002)
    assert hit[cls == 0].mean() > 0.94  # the night cannot narrow
    assert hit[cls == 1].mean() == pytest.approx((0.8 * 2 - hit[cls == 0].mean()), abs=0.003)
    assert pooled[1] < own[1]
    assert pooled[2:] == own[2:]
    own_hit = score <= np.asarray(own)[cls]
    assert own_hit[cls < 2].mean() > 0.86  # what per-bucket calibration gives


def test_calibrate_refits_offsets_in_place(trained: tuple[FreqModel, pd.DataFrame]) -> None:
    model, table = trained
    copy = dataclasses.replace(model, conformal=[])
    panel = DemandPanel.from_table(table[table[s.TS] < TEST_FROM], "d", end=TEST_FROM)
    from training.demand import window_queries

    start = TEST_FROM - pd.Timedelta(days=CONFIG.calib_days)
    q = window_queries(panel, start, TEST_FROM, CONFIG.calib_origin_hours, CONFIG.daily_horizon)
    calibrate(copy, panel, q, 0.8, 1)
    assert copy.conformal == pytest.approx(model.conformal)
