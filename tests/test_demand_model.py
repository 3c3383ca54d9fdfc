"""Demand forecasting: declared features, no leakage, baselines and MASE by hand, the model."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from doorstep.compat import FeatureSetMismatch
from doorstep.demand_bundle import (
    DemandPrediction,
    FreqModel,
    check_feature_set,
    horizon_bucket,
    nb_quantiles,
)
from features import schema as s
from features.demand_features import (
    DemandFeatureSpec,
    DemandFeaturizer,
    DemandPanel,
    calendar_table,
    make_queries,
)
from training.benchmark_demand import run_demand_benchmark
from training.demand import (
    DemandTrainConfig,
    make_split,
    mondrian_offsets,
    train_demand,
)
from training.demand_backtest import (
    Fold,
    backtest,
    baseline_predictions,
    insample_scale,
    metrics,
    protocols,
    rolling_folds,
)
from training.eta import BoosterParams

TINY = DemandTrainConfig(
    booster=BoosterParams(
        n_estimators=60, num_leaves=7, min_child_samples=20, early_stopping_rounds=15
    ),
    calib_days=14,
    valid_days=7,
    warmup_days=7,
    max_train_rows=20_000,
    num_threads=1,
)


def daily_table(values: dict[str, list[float]], start: str = "2024-01-01") -> pd.DataFrame:
    rows = [
        (z, pd.Timestamp(start) + pd.Timedelta(days=i), float(v))
        for z, vs in values.items()
        for i, v in enumerate(vs)
    ]
    return pd.DataFrame(rows, columns=[s.ZONE_ID, s.TS, s.VOLUME])


def synthetic(freq: str, zones: int, days: int, seed: int, shock: float = 0.0) -> pd.DataFrame:
    """Poisson counts: zone level x weekday (x hour of day) pattern x an optional day shock
    shared by every zone (what an intraday origin can learn from the morning)."""
    rng = np.random.default_rng(seed)
    periods = days * (24 if freq == "h" else 1)
    ts = pd.date_range("2024-01-01", periods=periods, freq="h" if freq == "h" else "D")
    weekday = np.array([1.0, 1.0, 1.0, 1.0, 1.1, 0.6, 0.5])[ts.dayofweek.to_numpy()]
    hour = 1.0 + np.sin((ts.hour.to_numpy() - 6) / 24 * 2 * np.pi) if freq == "h" else 1.0
    day_shock = np.exp(rng.normal(0, shock, days))[np.arange(periods) // (24 if freq == "h" else 1)]
    level = rng.uniform(2.0, 20.0, zones) / (8.0 if freq == "h" else 1.0)
    lam = level[:, None] * (weekday * hour * day_shock)[None, :]
    vol = rng.poisson(lam).astype(float)
    return pd.DataFrame(
        {
            s.ZONE_ID: np.repeat([f"z{i}" for i in range(zones)], periods),
            s.TS: np.tile(ts, zones),
            s.VOLUME: vol.ravel(),
        }
    )


# --- the declared spec ---------------------------------------------------------------------


def test_feature_names_are_derived_from_the_spec() -> None:
    spec = DemandFeatureSpec.daily(
        lags=(1, 7),
        rolling=(("mean", 3), ("std", 7)),
        seasonal=((7, 2),),
        level_profiles=(7,),
        ewm=(3,),
        calendar=("weekday", "holiday"),
        total_ratios=((1, 7),),
        covariates=("promo",),
    )
    assert spec.feature_names() == [
        "horizon", "lag_1", "lag_7", "roll_mean_3", "roll_std_7", "seas_mean_7x2",
        "level_profile_7", "ewm_mean_3", "weekday", "holiday", "zone", "zone_mean",
        "zone_profile", "zero_run", "total_ratio_1_7", "cov_promo",
    ]  # fmt: skip


def test_default_daily_names_are_pinned() -> None:
    assert DemandFeatureSpec.daily("CN").feature_names() == [
        "horizon", "lag_1", "lag_2", "lag_7", "lag_14", "roll_mean_1", "roll_mean_3",
        "roll_mean_7", "roll_mean_14", "roll_mean_28", "roll_mean_56", "roll_std_28",
        "seas_mean_7x1", "seas_mean_7x4", "seas_mean_7x8", "level_profile_14", "level_profile_28",
        "ewm_mean_5", "weekday", "holiday", "day_off", "days_after_holiday", "zone", "zone_mean",
        "zone_profile", "zero_run", "total_ratio_1_7", "total_ratio_7_28", "total_ratio_28_56",
    ]  # fmt: skip


def test_default_hourly_names_are_pinned() -> None:
    assert DemandFeatureSpec.hourly("CN").feature_names() == [
        "horizon", "origin_hour", "lag_1", "lag_2", "lag_24", "lag_168",
        "roll_mean_1", "roll_mean_3", "roll_mean_24", "roll_mean_168", "roll_mean_672",
        "roll_std_168", "seas_mean_24x1", "seas_mean_24x7", "seas_mean_168x1", "seas_mean_168x4",
        "level_profile_168", "level_profile_672", "hour", "weekday", "holiday", "day_off",
        "days_after_holiday", "zone", "zone_mean", "zone_profile", "zero_run", "class_ratio",
        "daytype_profile", "class_level", "total_ratio_24_168", "total_ratio_168_672",
        "today_so_far", "today_expected", "today_ratio", "total_today_ratio",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"calendar": ("moon",)}, "calendar: unknown item(s) ['moon']"),
        ({"rolling": (("max", 3),)}, "rolling: unknown stat(s) ['max']"),
        ({"lags": (0,)}, "lags, windows and seasons: must be >= 1 period"),
        ({"freq": "w"}, "freq: must be 'h' (hourly) or 'd' (daily), got 'w'"),
    ],
)
def test_bad_spec_is_refused(kwargs: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(msg)):
        DemandFeatureSpec(**kwargs)  # type: ignore[arg-type]


# --- panel and features by hand -------------------------------------------------------------


def test_panel_zero_fills_inside_a_span_not_before_it() -> None:
    table = daily_table({"a": [1, 2, 3, 4]})
    table = pd.concat([table, daily_table({"b": [5]}, start="2024-01-03")])
    table = table[table[s.TS] != pd.Timestamp("2024-01-02")]  # a's missing day is zero
    panel = DemandPanel.from_table(table, "d")
    np.testing.assert_array_equal(panel.values[0], [1, 0, 3, 4])
    np.testing.assert_array_equal(panel.values[1], [np.nan, np.nan, 5, 0])  # b went quiet: 0
    assert panel.first.tolist() == [0, 2]
    # from ``end`` on nothing is known, even where the table has a row
    cut = DemandPanel.from_table(table, "d", end="2024-01-04")
    np.testing.assert_array_equal(cut.values[0], [1, 0, 3, np.nan])


def test_zero_runs_by_hand() -> None:
    table = pd.concat(
        [daily_table({"a": [1, 0, 0, 2, 0, 0]}), daily_table({"b": [0, 0, 3]}, start="2024-01-03")]
    )
    panel = DemandPanel.from_table(table, "d")
    # column i: zero periods ending just before period i; b's unknown days start no run
    assert panel.zero_runs.tolist() == [[0, 0, 1, 2, 0, 1, 2], [0, 0, 0, 1, 2, 0, 1]]


def test_lag_matrix_from_arange() -> None:
    table = daily_table({"a": list(np.arange(20.0))})
    spec = DemandFeatureSpec.daily(
        lags=(1, 2, 7),
        rolling=(("mean", 3),),
        seasonal=((7, 2),),
        level_profiles=(),
        ewm=(),
        calendar=(),
        zone=False,
        zero_run=False,
        total_ratios=(),
    )
    panel = DemandPanel.from_table(table, "d")
    q = make_queries(panel, [pd.Timestamp("2024-01-16")], 3)  # origin = index 15
    X = DemandFeaturizer(spec).fit(table).transform(panel, q)
    expected = np.array(
        [
            # horizon, lag_1, lag_2, lag_7, roll_mean_3, seas_mean_7x2
            [1, 14, 13, 8, 13, (8 + 1) / 2],
            [2, np.nan, 14, 9, 13, (9 + 2) / 2],
            [3, np.nan, np.nan, 10, 13, (10 + 3) / 2],
        ]
    )
    np.testing.assert_array_equal(X, expected.astype(np.float32))


def test_ewm_level_by_hand() -> None:
    # half-life 1: each known period moves the level half-way; zone b starts late, and the
    # unknown periods from ``end`` on carry the last level
    table = pd.concat([daily_table({"a": [4, 0, 2, 2]}), daily_table({"b": [8]}, "2024-01-03")])
    panel = DemandPanel.from_table(table, "d", end="2024-01-04")
    spec = DemandFeatureSpec.daily(
        lags=(), rolling=(), seasonal=(), level_profiles=(), ewm=(1,), calendar=(),
        zone=False, zero_run=False, total_ratios=(),
    )  # fmt: skip
    q = make_queries(panel, pd.date_range("2024-01-02", "2024-01-05"), 1)
    X = DemandFeaturizer(spec).fit(table).transform(panel, q)
    # origin index 1: a's level after [4] is 4; index 2: after [4, 0] is 2; index 3: after
    # [4, 0, 2] is 2, b's after [8] is 8; index 4: day 3 is unknown, levels stay
    assert panel.zones[q.zone].tolist() == ["a", "a", "a", "b", "a", "b"]
    assert X[:, 1].tolist() == [4, 2, 2, 8, 2, 8]


def test_seasonal_mean_skips_seasons_after_the_origin() -> None:
    table = daily_table({"a": list(np.arange(30.0))})
    spec = DemandFeatureSpec.daily(
        lags=(),
        rolling=(),
        seasonal=((7, 1),),
        level_profiles=(),
        ewm=(),
        calendar=(),
        zone=False,
        zero_run=False,
        total_ratios=(),
    )
    panel = DemandPanel.from_table(table, "d")
    q = make_queries(panel, [pd.Timestamp("2024-01-21")], 9)  # origin index 20, targets 20..28
    X = DemandFeaturizer(spec).fit(table).transform(panel, q)
    # targets 20..26 read one week back; 27 and 28 (h = 8, 9) two weeks back
    assert X[:, 1].tolist() == [13, 14, 15, 16, 17, 18, 19, 13, 14]


def test_features_never_see_periods_after_the_origin() -> None:
    table = synthetic("h", zones=3, days=40, seed=1)
    spec = DemandFeatureSpec.hourly("CN", ewm=(24,))
    featurizer = DemandFeaturizer(spec).fit(table)
    origin = pd.Timestamp("2024-02-05 12:00")
    before = DemandPanel.from_table(table, "h")
    changed = table.copy()
    after = changed[s.TS] >= origin
    changed.loc[after, s.VOLUME] = changed.loc[after, s.VOLUME] * 7 + 3
    later = DemandPanel.from_table(changed, "h")
    q = make_queries(before, [origin], None)
    np.testing.assert_array_equal(featurizer.transform(before, q), featurizer.transform(later, q))
    # and the morning does matter: change it and today's features move
    changed.loc[(changed[s.TS] >= origin.normalize()) & ~after, s.VOLUME] += 5
    morning = featurizer.transform(DemandPanel.from_table(changed, "h"), q)
    i = spec.feature_names().index("today_so_far")
    assert (morning[:, i] == featurizer.transform(before, q)[:, i] + 5 * 12).all()


def test_observed_today_sums_the_hours_before_the_cutoff() -> None:
    table = synthetic("h", zones=1, days=10, seed=2)
    spec = DemandFeatureSpec.hourly()
    panel = DemandPanel.from_table(table, "h")
    q = make_queries(panel, [pd.Timestamp("2024-01-09 08:00"), pd.Timestamp("2024-01-09")], 1)
    X = DemandFeaturizer(spec).fit(table).transform(panel, q)
    names = spec.feature_names()
    day = table[(table[s.TS] >= "2024-01-09") & (table[s.TS] < "2024-01-09 08:00")]
    past = [
        table[(table[s.TS] >= d) & (table[s.TS] < d + pd.Timedelta(hours=8))][s.VOLUME].sum()
        for d in pd.date_range("2024-01-02", "2024-01-08")
    ]
    assert X[0, names.index("today_so_far")] == day[s.VOLUME].sum()
    assert X[0, names.index("today_expected")] == pytest.approx(np.mean(past))
    assert X[0, names.index("origin_hour")] == 8
    assert X[1, names.index("today_so_far")] == 0  # midnight: nothing observed yet
    assert np.isnan(X[1, names.index("today_ratio")])


def test_holiday_breaks_and_make_up_working_days() -> None:
    cal = calendar_table(pd.date_range("2024-09-28", "2024-10-09"), "CN")
    # National Day 2024: Oct 1-7 off; Sunday Sep 29 and Saturday Oct 12 are working days
    assert cal["holiday"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert cal["day_off"].tolist() == [1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0]
    assert cal["days_after_holiday"].tolist()[-3:] == [0, 1, 2]
    assert calendar_table(pd.date_range("2024-10-01", "2024-10-01"), None)["holiday"].tolist() == [
        0
    ]


def test_day_classes_by_hand() -> None:
    """Labour Day 2024 (May 1-5 off; Sunday Apr 28 and Saturday May 11 are working days):
    volumes built from a level per class of day and an hour shape per day type, large enough
    that the shrinkage towards the city is negligible."""
    ts = pd.date_range("2024-04-01", "2024-05-20 23:00", freq="h")
    cal = calendar_table(ts.normalize().unique(), "CN").reindex(ts.normalize())
    cls = np.select(
        [cal["holiday"] > 0, cal["day_off"] > 0, (cal["days_after_holiday"] <= 2) & (cal["day_off"] == 0)],
        [2, 1, 3], 0,
    )  # fmt: skip
    level = np.array([100.0, 80.0, 50.0, 125.0])
    work_shape = 1.0 + 0.5 * np.sin(np.arange(24) / 24 * 2 * np.pi)
    off_shape = 1.0 - 0.5 * np.sin(np.arange(24) / 24 * 2 * np.pi)
    shape = np.where(np.isin(cls, (1, 2)), off_shape[ts.hour], work_shape[ts.hour])
    table = pd.DataFrame(
        {
            s.ZONE_ID: np.repeat(["a", "b"], len(ts)),
            s.TS: np.tile(ts, 2),
            s.VOLUME: np.concatenate([level[cls] * shape, 2.0 * level[cls] * shape]),
        }
    )
    assert sorted(set(cls[ts.normalize() == pd.Timestamp("2024-05-06")])) == [3]
    assert sorted(set(cls[ts.normalize() == pd.Timestamp("2024-05-11")])) == [0]  # made up
    spec = DemandFeatureSpec.hourly("CN")
    f = DemandFeaturizer(spec).fit(table)
    usual = (level[cls] * shape)[cls < 2].mean()
    assert f.class_ratio_[0] == pytest.approx(level / usual, rel=2e-3)
    assert f.class_ratio_[1] == pytest.approx(level / usual, rel=2e-3)
    assert f.daytype_profile_[0, 0] == pytest.approx(work_shape, rel=2e-3)
    assert f.daytype_profile_[1, 1] == pytest.approx(off_shape, rel=2e-3)
    # a forecast for the last day of the break from May 4, 00:00, and an unknown zone
    late = pd.concat([table, table[table[s.ZONE_ID] == "a"].assign(**{s.ZONE_ID: "new"})])
    panel = DemandPanel.from_table(late, "h")
    f = DemandFeaturizer(spec).fit(table[pd.to_datetime(table[s.TS]) < "2024-05-04"])
    q = make_queries(panel, [pd.Timestamp("2024-05-04")], 48)
    X = f.transform(panel, q)
    names = spec.feature_names()
    col = {n: X[:, names.index(n)].astype(float) for n in names}
    ratio, prof = f.class_ratio_[:, 2], f.daytype_profile_[:, 1]
    a, new = q.zone == panel.zones.get_loc("a"), q.zone == panel.zones.get_loc("new")
    assert col["class_ratio"][a] == pytest.approx(np.full(a.sum(), ratio[0]), rel=1e-6)
    assert col["class_ratio"][new] == pytest.approx(
        np.full(new.sum(), f.city_class_ratio_[2]), rel=1e-6
    )
    assert col["daytype_profile"][a] == pytest.approx(np.tile(prof[0], 2), rel=1e-5)
    level_672 = col["roll_mean_672"][a]
    assert col["class_level"][a] == pytest.approx(
        level_672 * ratio[0] * np.tile(prof[0], 2), rel=1e-5
    )
    with pytest.raises(ValueError, match="day_classes: needs hourly data"):
        DemandFeatureSpec.daily(day_classes=True)


def test_a_first_holiday_takes_the_day_off_ratio() -> None:
    """Fitted on weeks without a break (Qingming 2024 is Apr 4-6), a break and the days after
    it read the weekend's and the working days' ratios: never NaN, which would floor the
    boosters' anchor and forecast the break at zero."""
    table = synthetic("h", zones=3, days=28, seed=5)  # from 2024-01-01
    spec = DemandFeatureSpec.hourly("CN")
    late = table.assign(**{s.TS: pd.to_datetime(table[s.TS]) + pd.Timedelta(days=70)})
    f = DemandFeaturizer(spec).fit(
        late[pd.to_datetime(late[s.TS]) < "2024-04-04"]
    )  # Mar 11 - Apr 3
    assert np.isfinite(f.class_ratio_).all() and np.isfinite(f.city_class_ratio_).all()
    assert f.city_class_ratio_[2] == f.city_class_ratio_[1]
    assert f.city_class_ratio_[3] == f.city_class_ratio_[0]
    panel = DemandPanel.from_table(late, "h")
    q = make_queries(panel, [pd.Timestamp("2024-04-04")], 24)
    X = f.transform(panel, q)
    names = spec.feature_names()
    assert np.isfinite(X[:, names.index("class_level")]).all()
    assert X[:, names.index("class_level")].max() > 0
    # and a window of working days alone (no weekend yet) still has a day-off hour shape
    f = DemandFeaturizer(spec).fit(late[pd.to_datetime(late[s.TS]) < "2024-03-16"])
    assert np.isfinite(f.daytype_profile_).all() and f.daytype_profile_[:, 1].sum() > 0


def test_unknown_zone_gets_no_code_but_a_city_profile() -> None:
    table = daily_table({"a": [4.0] * 21})
    late = pd.concat([table, daily_table({"new": [2.0] * 3}, start="2024-01-19")])
    spec = DemandFeatureSpec.daily(level_profiles=(), total_ratios=())
    featurizer = DemandFeaturizer(spec).fit(table)
    panel = DemandPanel.from_table(late, "d")
    q = make_queries(panel, [pd.Timestamp("2024-01-22")], 1)
    X = featurizer.transform(panel, q)
    names = spec.feature_names()
    assert panel.zones[q.zone].tolist() == ["a", "new"]
    assert X[0, names.index("zone")] == 0
    assert np.isnan(X[1, names.index("zone")])
    assert X[1, names.index("zone_profile")] == pytest.approx(1.0)


# --- baselines, metrics, folds by hand ------------------------------------------------------


def test_baselines_by_hand() -> None:
    table = daily_table({"a": list(np.arange(40.0))})
    panel = DemandPanel.from_table(table, "d")
    q = make_queries(panel, [pd.Timestamp("2024-02-05")], 7)  # origin index 35, targets 35..41
    base = baseline_predictions(panel, q)
    t = np.arange(35, 42)
    assert base["naive"].tolist() == [34] * 7
    assert base["seasonal_naive"].tolist() == (t - 7).tolist()
    assert base["mean_4w"].tolist() == (t - 17.5).tolist()  # mean of t-7, t-14, t-21, t-28


def test_baselines_of_a_young_zone_fall_back_to_zero() -> None:
    table = pd.concat(
        [daily_table({"a": [1.0] * 30}), daily_table({"b": [6.0] * 9}, start="2024-01-22")]
    )
    panel = DemandPanel.from_table(table, "d")
    q = make_queries(panel, [pd.Timestamp("2024-01-30")], 1)
    base = baseline_predictions(panel, q)
    assert base["mean_4w"].tolist() == [1.0, 6.0]  # b: only one week of history
    assert base["seasonal_naive"].tolist() == [1.0, 6.0]
    q = make_queries(panel, [pd.Timestamp("2024-01-25")], 1)
    assert baseline_predictions(panel, q)["seasonal_naive"].tolist() == [1.0, 0.0]


def test_pooled_mase_by_hand() -> None:
    # zone a alternates 0, 2 every week; zone b is constant: in-sample seasonal-naive MAEs
    # (season 7) are 2 and 0, so the scale is their mean, 1
    a = [0.0] * 7 + [2.0] * 7 + [0.0] * 7
    table = daily_table({"a": a, "b": [5.0] * 21})
    panel = DemandPanel.from_table(table, "d")
    scale = insample_scale(panel, np.array([0, 1]), pd.Timestamp("2024-01-22"))
    assert scale == pytest.approx(1.0)
    y = np.array([1.0, 1.0, 5.0, 5.0])
    zone = np.array([0, 0, 1, 1])
    m = metrics(y, np.array([2.0, 2.0, 5.0, 7.0]), zone, scale)
    # zone MAEs 1 and 1 -> pooled MASE (1 + 1) / 2 / 1
    assert m["mase"] == pytest.approx(1.0)
    assert m["mae"] == pytest.approx(1.0)
    assert m["wape"] == pytest.approx(4 / 12)
    assert m["rmse"] == pytest.approx(np.sqrt((1 + 1 + 0 + 4) / 4))
    assert m["coverage_p10_p90"] is None
    pred = DemandPrediction(np.zeros(4), np.ones(4), np.array([1.0, 0.5, 6.0, 4.0]), np.ones(4))
    assert metrics(y, pred, zone, scale)["coverage_p10_p90"] == 0.5


def test_folds_and_protocols() -> None:
    folds = rolling_folds("2024-03-31", n_folds=4, fold_days=7)
    assert [f.test_start for f in folds] == list(pd.date_range("2024-03-04", periods=4, freq="7D"))
    assert folds[-1].test_end == pd.Timestamp("2024-04-01")
    assert all(f.train_end == f.test_start for f in folds)
    day_ahead, week = protocols("d", folds[0])
    assert (day_ahead.name, len(day_ahead.origins), day_ahead.horizon) == ("day_ahead", 7, 1)
    assert (week.name, week.origins.tolist(), week.horizon) == (
        "week_ahead",
        [folds[0].test_start],
        7,
    )
    day = pd.Timestamp("2024-03-04")
    day_ahead, intraday = protocols("h", Fold(day, day, day + pd.Timedelta(days=1)))
    assert intraday.origins.hour.tolist() == [8, 12, 16]
    assert intraday.horizon is None and day_ahead.horizon == 24


# --- calibration pieces ---------------------------------------------------------------------


def test_horizon_buckets() -> None:
    assert horizon_bucket([1, 2, 3, 6, 7, 12, 13, 24], "h").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert horizon_bucket([1, 2, 3, 4, 7], "d").tolist() == [0, 1, 1, 2, 2]


def test_mondrian_offsets_reach_nominal_coverage_per_bucket() -> None:
    rng = np.random.default_rng(0)
    horizon = np.repeat([1, 3, 7], 2000)
    score = rng.normal(0, 1, len(horizon)) * np.repeat([1.0, 2.0, 4.0], 2000)
    offsets = mondrian_offsets(score, horizon, "d", 0.8)
    for b, h in enumerate([1, 3, 7]):
        assert np.mean(score[horizon == h] <= offsets[b]) == pytest.approx(0.8, abs=0.02)


def test_count_quantiles_never_cross_and_the_median_is_an_integer() -> None:
    q = nb_quantiles(np.array([0.05, 0.7, 3.0, 40.0]), 5.0)
    assert (q[:, 0] <= q[:, 1]).all() and (q[:, 1] <= q[:, 2]).all()
    assert q[:, 1].tolist() == np.round(q[:, 1]).tolist()
    assert q[0].tolist() == [0.0, 0.0, 0.0]


def test_count_p50_is_the_poisson_median_and_old_bundles_keep_theirs() -> None:
    mean = np.array([0.8, 2.5])
    # Poisson: P(0) = 0.45 at mean 0.8, so the median is 1; a geometric (size 1) puts 0.56 on 0
    new = FreqModel(DemandFeaturizer(), {}, head="count", nb_size=1.0, point_size=np.inf)
    assert new.median_count(mean).tolist() == [1.0, 2.0]
    old = FreqModel(DemandFeaturizer(), {}, head="count", nb_size=1.0)  # no point_size
    assert old.median_count(mean).tolist() == [0.0, 2.0]


def test_split_needs_enough_history() -> None:
    table = daily_table({"a": [1.0] * 30})
    with pytest.raises(ValueError, match=re.escape("need at least 35 days before test_from")):
        make_split(table, "2024-01-31", TINY)


# --- the model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daily_bench() -> dict[str, object]:
    return run_demand_benchmark(
        synthetic("d", zones=8, days=120, seed=3), "d", "2024-04-08", "CN", config=TINY
    )


def test_benchmark_results_follow_the_contract(daily_bench: dict[str, object]) -> None:
    protocols_ = daily_bench["protocols"]
    assert isinstance(protocols_, dict) and set(protocols_) == {"day_ahead", "week_ahead"}
    keys = {"mae", "rmse", "wape", "mase", "coverage_p10_p90"}
    for p in protocols_.values():
        assert set(p["model"]) == keys
        assert set(p["baselines"]) == {"seasonal_naive", "naive", "mean_4w"}
        assert all(
            set(m) == keys and m["coverage_p10_p90"] is None for m in p["baselines"].values()
        )
    assert protocols_["day_ahead"]["n_points"] == 8 * 22  # Apr 8 to Apr 29
    assert protocols_["week_ahead"]["n_points"] == 8 * 16 * 7  # weeks from Apr 8 to Apr 23
    assert isinstance(daily_bench["fit_seconds"], float)


def test_small_fit_beats_seasonal_naive_with_calibrated_windows(
    daily_bench: dict[str, object],
) -> None:
    for p in daily_bench["protocols"].values():  # type: ignore[attr-defined]
        assert p["model"]["mae"] < p["baselines"]["seasonal_naive"]["mae"]
        assert p["model"]["mase"] < 1.0
        assert 0.65 <= p["model"]["coverage_p10_p90"] <= 0.95  # loose: a few hundred points


def test_zones_that_go_quiet_or_appear_late_are_scored_not_crashed_on() -> None:
    table = synthetic("d", zones=4, days=90, seed=4)
    table = table[~((table[s.ZONE_ID] == "z0") & (table[s.TS] >= "2024-03-10"))]  # quiet
    table = table[~((table[s.ZONE_ID] == "z1") & (table[s.TS] < "2024-03-08"))]  # late
    table = table[~((table[s.ZONE_ID] == "z2") & (table[s.TS] < "2024-03-20"))]  # after test_from
    bench = run_demand_benchmark(table, "d", "2024-03-12", config=TINY)
    assert bench["n_zones"] == 3  # z2 appeared after test_from: not scored
    assert bench["protocols"]["day_ahead"]["n_points"] == 3 * 19  # Mar 12 to Mar 30
    bundle = train_demand(table, "d", "2024-03-12", config=TINY).bundle
    p50 = bundle.forecast(table, "2024-03-30", 1).set_index(s.ZONE_ID)["p50"]
    assert set(p50.index) == {"z0", "z1", "z2", "z3"}
    assert p50["z0"] < 1.0  # three weeks of zeros: the quiet zone is forecast quiet


def test_forecast_api_and_bottom_up_total() -> None:
    table = synthetic("d", zones=4, days=70, seed=5)
    bundle = train_demand(table, "d", "2024-03-10", config=TINY).bundle
    fc = bundle.forecast(table, "2024-03-10", 7)
    assert list(fc.columns) == [s.ZONE_ID, s.TS, "horizon", "p10", "p50", "p90", "mean"]
    assert len(fc) == 4 * 7 and fc[s.TS].min() == pd.Timestamp("2024-03-10")
    assert ((fc["p10"] <= fc["p50"]) & (fc["p50"] <= fc["p90"])).all()
    total = bundle.total(fc)
    assert np.allclose(total["mean"], fc.groupby(s.TS)["mean"].sum().to_numpy())
    assert ((total["p10"] <= total["p50"]) & (total["p50"] <= total["p90"])).all()
    # the history after the origin is never read
    later = table.assign(volume=np.where(table[s.TS] >= "2024-03-10", 999.0, table[s.VOLUME]))
    pd.testing.assert_frame_equal(bundle.forecast(later, "2024-03-10", 7), fc)
    with pytest.raises(
        ValueError, match=re.escape("history: ends at 2024-03-05 00:00:00, more than 1 day")
    ):
        bundle.forecast(table[table[s.TS] <= "2024-03-05"], "2024-03-10", 7)
    # what serving loads is what training built
    reloaded = pickle.loads(pickle.dumps(bundle))
    check_feature_set(reloaded)
    reloaded.feature_set = "demand_v1"  # a v1 champion carries its own spec: still served
    check_feature_set(reloaded)
    reloaded.feature_set = "demand_v0"
    with pytest.raises(FeatureSetMismatch, match="model uses 'demand_v0'"):
        check_feature_set(reloaded)
    reloaded.feature_set = bundle.feature_set
    pd.testing.assert_frame_equal(reloaded.forecast(table, "2024-03-10", 7), fc)


def test_intraday_forecast_uses_the_volume_already_observed() -> None:
    table = synthetic("h", zones=4, days=42, seed=7, shock=0.5)
    config = DemandTrainConfig(
        booster=BoosterParams(n_estimators=80, num_leaves=7, min_child_samples=20, early_stopping_rounds=80),
        calib_days=7, valid_days=5, max_train_rows=40_000, head="count",
    )  # fmt: skip
    bundle = train_demand(table, "h", "2024-02-12", config=config).bundle
    history = table[table[s.TS] < "2024-02-12"]
    busy = history.copy()
    morning = (busy[s.TS] >= "2024-02-11") & (busy[s.TS] < "2024-02-11 12:00")
    busy.loc[morning, s.VOLUME] *= 3
    calm = bundle.forecast(history, "2024-02-11 12:00")
    replan = bundle.forecast(busy, "2024-02-11 12:00")
    assert len(calm) == 4 * 12
    assert replan["mean"].sum() > 1.2 * calm["mean"].sum()
    # at midnight nothing is observed yet, so the morning cannot matter
    pd.testing.assert_frame_equal(
        bundle.forecast(busy, "2024-02-11"), bundle.forecast(history, "2024-02-11")
    )


def test_a_level_anchored_model_follows_a_level_it_never_saw() -> None:
    table = synthetic("d", zones=4, days=70, seed=6)
    config = DemandTrainConfig(
        booster=TINY.booster,
        calib_days=14,
        valid_days=7,
        head="count",
        level_feature="level_profile_14",
    )
    bundle = train_demand(table, "d", "2024-03-10", config=config).bundle
    usual = bundle.forecast(table, "2024-03-10", 7)["mean"].sum()
    tripled = bundle.forecast(table.assign(volume=table[s.VOLUME] * 3), "2024-03-10", 7)
    assert 2.2 < tripled["mean"].sum() / usual < 3.8


def test_rolling_backtest_refits_per_fold_and_covers_loosely() -> None:
    table = synthetic("d", zones=6, days=120, seed=8)
    folds = rolling_folds("2024-04-29", n_folds=4, fold_days=7)
    scores = backtest(table, "d", folds, config=TINY)
    assert [f.fold for f in scores] == folds
    points = [f.protocols["day_ahead"]["n_points"] for f in scores]
    assert points == [6 * 7] * 4
    covered = sum(
        f.protocols["day_ahead"]["model"]["coverage_p10_p90"] * n
        for f, n in zip(scores, points, strict=True)
    )
    assert 0.65 <= covered / sum(points) <= 0.95  # loose: 168 points


def test_benchmark_command_writes_the_contract(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from doorstep.cli import app

    history, out = tmp_path / "history.csv", tmp_path / "results.json"
    synthetic("d", zones=3, days=100, seed=9).to_csv(history, index=False)
    args = ["benchmark", "demand", "--history", str(history), "--freq", "d"]
    result = CliRunner().invoke(app, [*args, "--test-from", "2024-04-01", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    assert set(results["protocols"]) == {"day_ahead", "week_ahead"}
    assert results["protocols"]["day_ahead"]["n_points"] == 3 * 9  # Apr 1 to Apr 9
    assert isinstance(results["fit_seconds"], float)
