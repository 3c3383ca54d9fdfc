"""Leg travel-time model: labels, the ``leg_v1`` features, the bundle's matrix, leakage.

The synthetic city has a known truth: travel = 1.4 x straight-line km at the vehicle's speed
(car twice a bike's), halved in local rush hours, plus a minute to park; so a model that reads
the local hour and the vehicle must beat a constant speed. The window crosses the spring DST
switch in Europe/Berlin, so rush hours only line up if hours are read in the data's zone.
"""

from __future__ import annotations

import pickle
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from doorstep.leg_bundle import LegBundle, check_feature_set
from features import leg_features as lf
from features import schema as s
from features.geo import offset_deg
from training.eta import BoosterParams
from training.leg import (
    LegConfig,
    LegTrainResult,
    ServiceTimeProfile,
    fit_profiles,
    legs_from_deliveries,
    raw_legs,
    train_leg,
)

TZ = "Europe/Berlin"
LAT0, LNG0 = 52.52, 13.40
SPEED_KMH = {"bike": 14.0, "car": 28.0}
RUSH = frozenset({7, 8, 9, 16, 17, 18})
TEST_FROM = "2024-04-08"
CONFIG = LegConfig(
    booster=BoosterParams(
        learning_rate=0.1,
        num_leaves=15,
        min_child_samples=20,
        n_estimators=200,
        early_stopping_rounds=20,
    ),
    objectives=("l1", "log_l2"),
    valid_days=7,
    num_threads=1,
)


def true_minutes(km: float, local_hour: int, vehicle: str) -> float:
    speed = SPEED_KMH[vehicle] * (0.5 if local_hour in RUSH else 1.0)
    return 1.4 * km / speed * 60.0 + 1.0


def make_deliveries(seed: int = 0, days: int = 42, couriers: int = 10, stops: int = 18):
    """Courier-days from Monday 2024-03-04; every third courier's scanner records departures."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in range(days):
        date = pd.Timestamp("2024-03-04") + pd.Timedelta(days=day)
        for c in range(couriers):
            vehicle = "bike" if c % 2 == 0 else "car"
            t = (date + pd.Timedelta(hours=rng.uniform(6.5, 12.0))).tz_localize(TZ)
            dispatch = t
            x, y = rng.uniform(-4, 4, 2)
            for k in range(stops):
                if k > 0:
                    if rng.random() < 0.15:  # the next parcel of the same building
                        dx, dy = rng.normal(0, 0.005, 2)
                    else:
                        dx, dy = rng.uniform(-4, 4, 2) - (x, y)
                    km = float(np.hypot(dx, dy))
                    x, y = x + dx, y + dy
                    noise = rng.lognormal(0.0, 0.15)
                    t = t + pd.Timedelta(minutes=true_minutes(km, t.hour, vehicle) * noise)
                packages = int(rng.integers(1, 4))
                service = pd.Timedelta(minutes=2.0 + 0.5 * packages + rng.exponential(0.5))
                dlat, dlng = offset_deg(LAT0, x, y)
                rows.append(
                    {
                        s.ROUTE_ID: f"{c}-{day}",
                        s.COURIER_ID: str(c),
                        s.VEHICLE_TYPE: vehicle,
                        s.STOP_ID: f"{c}-{day}-{k}",
                        s.LAT: LAT0 + float(dlat),
                        s.LNG: LNG0 + float(dlng),
                        s.DISPATCH_TIME: dispatch,
                        s.READY_TIME: dispatch,
                        s.ARRIVAL_TIME: t,
                        s.DEPARTURE_TIME: t + service if c % 3 == 0 else pd.NaT,
                        s.PACKAGES: packages,
                        s.STOP_TYPE: "residential" if k % 2 else "business",
                    }
                )
                t = t + service
    frame = pd.DataFrame(rows)
    frame[s.DEPARTURE_TIME] = pd.to_datetime(frame[s.DEPARTURE_TIME]).dt.tz_convert(TZ)
    return frame


@pytest.fixture(scope="module")
def deliveries() -> pd.DataFrame:
    return make_deliveries()


@pytest.fixture(scope="module")
def trained(deliveries: pd.DataFrame) -> LegTrainResult:
    return train_leg(deliveries, TEST_FROM, CONFIG)


@pytest.fixture(scope="module")
def bundle(trained: LegTrainResult) -> LegBundle:
    return trained.bundle


def test_feature_names_are_pinned() -> None:
    assert lf.FEATURE_SET == "leg_v1"
    assert lf.feature_names() == [
        "dist_km", "bearing_sin", "bearing_cos", "same_zone",
        "hour_of_week", "clock_hour", "how_min_per_km",
        "vehicle",
        "o_zone_min_per_km", "o_zone_leg_min", "o_zone_n", "o_zone_how_min_per_km",
        "d_zone_min_per_km", "d_zone_leg_min", "d_zone_n", "d_zone_how_min_per_km",
        "est_min",
    ]  # fmt: skip


def _stop(route: str, stop: str, north_km: float, arrival: str, departure: str | None) -> dict:
    dlat, _ = offset_deg(LAT0, 0.0, north_km)
    return {
        s.ROUTE_ID: route,
        s.COURIER_ID: "c",
        s.STOP_ID: stop,
        s.LAT: LAT0 + float(dlat),
        s.LNG: LNG0,
        s.ARRIVAL_TIME: pd.Timestamp(arrival, tz=TZ),
        s.DEPARTURE_TIME: pd.Timestamp(departure, tz=TZ) if departure else pd.NaT,
    }


def test_labels_by_hand() -> None:
    frame = pd.DataFrame(
        [
            _stop("r1", "a", 0.0, "2024-03-04 10:00", "2024-03-04 10:03"),
            _stop("r1", "b", 1.0, "2024-03-04 10:10", None),
            _stop("r1", "c", 1.0, "2024-03-04 10:16", None),  # same point as b: no travel
            _stop("r1", "d", 2.0, "2024-03-04 10:30", None),
            _stop("r1", "e", 3.0, "2024-03-04 14:00", None),  # 207 min: a break, not travel
            _stop("r2", "f", 0.0, "2024-03-04 09:00", "2024-03-04 09:05"),
            _stop("r2", "g", 1.0, "2024-03-04 09:04", None),  # arrives before f's departure
        ]
    )
    frame[s.DEPARTURE_TIME] = pd.to_datetime(frame[s.DEPARTURE_TIME]).dt.tz_convert(TZ)
    service = ServiceTimeProfile(default_min=3.0)  # too few legs for any group: the default
    legs = legs_from_deliveries(frame, service.fit(raw_legs(frame)))
    assert legs[lf.O_STOP_ID].tolist() == ["a", "c"]
    assert legs[lf.D_STOP_ID].tolist() == ["b", "d"]
    np.testing.assert_allclose(legs[lf.TRAVEL_MIN], [7.0, 14.0 - 3.0])
    assert legs[lf.SERVICE_OBSERVED].tolist() == [True, False]
    assert legs[lf.DEPART].iloc[1] == pd.Timestamp("2024-03-04 10:19", tz=TZ)
    np.testing.assert_allclose(legs[lf.LEG_KM], [1.0, 1.0], rtol=1e-2)


def test_service_profile_observed_median_else_low_quantile_of_near_gaps() -> None:
    n = 40
    legs = pd.DataFrame(
        {
            s.STOP_TYPE: ["residential"] * n + ["business"] * n + ["locker"] * 3,
            s.PACKAGES: [1] * (2 * n + 3),
            s.SERVICE_MIN: [np.nan] * n + [2.5] * n + [np.nan] * 3,
            lf.LEG_KM: [0.01] * (2 * n + 3),
            lf.GAP_MIN: [4.0 + i for i in range(n)] + [9.0] * n + [1.0] * 3,
        }
    )
    profile = ServiceTimeProfile(quantile=0.1, near_km=0.05, min_count=30).fit(legs)
    got = profile.predict(
        pd.Series(["residential", "business", "locker", None]), pd.Series([1] * 4)
    )
    # residential: 10 % of gaps 4..43; business: observed median; others: pooled observed median
    np.testing.assert_allclose(got, [7.9, 2.5, 2.5, 2.5])


def test_model_learns_hour_and_vehicle_and_beats_baselines(trained: LegTrainResult) -> None:
    mae = trained.metrics["mae_min"]
    assert mae < 0.7 * trained.baselines["const_speed"]["mae_min"]
    assert mae < 0.85 * trained.baselines["zone_hour_speed"]["mae_min"]
    assert set(trained.selection) == {"l1", "log_l2"}
    assert trained.objective in trained.selection
    assert set(trained.metrics) == {"mae_min", "rmse_min", "mape", "n_legs"}
    assert min(trained.n_legs.values()) > 500


def test_learned_effects_have_the_right_sign(bundle: LegBundle) -> None:
    o_lat, o_lng = offset_deg(LAT0, -1.0, 0.0)
    d_lat, d_lng = offset_deg(LAT0, 1.0, 0.0)
    args = ([LAT0 + o_lat], [LNG0 + o_lng], [LAT0 + d_lat], [LNG0 + d_lng])
    rush = pd.Timestamp("2024-04-09 08:30", tz=TZ)
    calm = pd.Timestamp("2024-04-09 12:30", tz=TZ)
    bike_rush, bike_calm = (bundle.predict_minutes(*args, t, "bike")[0] for t in (rush, calm))
    car_calm = bundle.predict_minutes(*args, calm, "car")[0]
    assert bike_rush > 1.5 * bike_calm
    assert bike_calm > 1.5 * car_calm


def test_reference_line_by_hand() -> None:
    km = np.repeat(np.arange(1.0, 11.0), 5)
    legs = pd.DataFrame(
        {
            lf.O_LAT: LAT0,
            lf.O_LNG: LNG0,
            lf.D_LAT: LAT0 + 0.01,
            lf.D_LNG: LNG0,
            lf.DEPART: pd.Timestamp("2024-03-04 10:00", tz=TZ),
            lf.LEG_KM: km,
            lf.TRAVEL_MIN: 2.0 + 3.0 * km,
        }
    )
    f = lf.LegFeaturizer().fit(legs)
    np.testing.assert_allclose(f.reference_, (2.0, 3.0), atol=1e-9)
    np.testing.assert_allclose(f.reference_minutes([0.0, 20.0]), [2.0, 62.0])


def test_pairs_beyond_the_longest_leg_keep_growing(bundle: LegBundle) -> None:
    """Trees flatten beyond their data; the reference-line offset keeps far pairs growing."""
    km = np.array([8.0, 16.0, 32.0])
    dlat, dlng = offset_deg(LAT0, km, np.zeros(3))  # due east
    dep = pd.Timestamp("2024-04-09 12:30", tz=TZ)
    m = bundle.predict_minutes(np.full(3, LAT0), np.full(3, LNG0), LAT0 + dlat, LNG0 + dlng, dep)
    assert m[1] > 1.6 * m[0] and m[2] > 1.6 * m[1]


def _points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dlat, dlng = offset_deg(LAT0, rng.uniform(-4, 4, n), rng.uniform(-4, 4, n))
    return LAT0 + dlat, LNG0 + dlng


def test_matrix_equals_pairs_and_diagonal_is_zero(bundle: LegBundle) -> None:
    lat, lng = _points(30, seed=1)
    lat[-1], lng[-1] = -33.87, 151.21  # Sydney: a zone the profiles never saw
    dep = pd.Timestamp("2024-04-09 17:15", tz=TZ)
    m = bundle.predict_matrix(lat, lng, lat, lng, dep, "car")
    assert m.shape == (30, 30)
    np.testing.assert_array_equal(np.diag(m), 0.0)
    assert np.isfinite(m).all() and (m[~np.eye(30, dtype=bool)] > 0).all()
    oi, di = np.meshgrid(np.arange(30), np.arange(30), indexing="ij")
    pairs = bundle.predict_minutes(
        lat[oi.ravel()], lng[oi.ravel()], lat[di.ravel()], lng[di.ravel()], dep, "car"
    )
    np.testing.assert_allclose(m.ravel(), pairs, rtol=1e-12)


def test_matrix_departure_per_origin_and_rectangular(bundle: LegBundle) -> None:
    o_lat, o_lng = _points(7, seed=2)
    d_lat, d_lng = _points(11, seed=3)
    dep = pd.Timestamp("2024-04-09 08:00", tz=TZ).timestamp() + 3600.0 * np.arange(7)
    m = bundle.predict_matrix(o_lat, o_lng, d_lat, d_lng, dep, "bike")
    assert m.shape == (7, 11)
    for i in (0, 6):
        row = bundle.predict_minutes(
            np.full(11, o_lat[i]), np.full(11, o_lng[i]), d_lat, d_lng, np.full(11, dep[i]), "bike"
        )
        np.testing.assert_allclose(m[i], row, rtol=1e-12)


def test_matrix_100_by_100_shape_and_diagonal(bundle: LegBundle) -> None:
    """Speed is a benchmark (benchmarks/), not a unit test: here only the result is checked."""
    lat, lng = _points(100, seed=4)
    dep = pd.Timestamp("2024-04-09 09:00", tz=TZ)
    m = bundle.predict_matrix(lat, lng, lat, lng, dep, "bike")
    assert m.shape == (100, 100)
    assert np.all(np.diag(m) == 0.0)
    assert np.all(m[~np.eye(100, dtype=bool)] > 0)


def test_unknown_zone_and_vehicle_fall_back_to_pooled(bundle: LegBundle) -> None:
    f = bundle.featurizer
    args = ([-33.87], [151.21], [-33.88], [151.22], pd.Timestamp("2024-04-09 10:00", tz=TZ))
    minutes = bundle.predict_minutes(*args, "hovercraft")
    assert np.isfinite(minutes).all() and minutes[0] > 0
    row = dict(zip(lf.feature_names(), f.pairs(*args, "hovercraft").X[0], strict=True))
    assert row["o_zone_n"] == 0.0 and row["d_zone_n"] == 0.0
    assert row["o_zone_min_per_km"] == pytest.approx(f.zone_table_[-1, 0], rel=1e-6)
    assert np.isnan(row["vehicle"])
    assert np.isfinite(bundle.predict_minutes(*args, None)).all()


def test_departure_forms_agree_and_naive_is_refused(bundle: LegBundle) -> None:
    lat, lng = _points(5, seed=5)
    local = pd.Timestamp("2024-04-09 17:40", tz=TZ)
    by_local = bundle.predict_minutes(lat, lng, lat[::-1], lng[::-1], local, "car")
    by_utc = bundle.predict_minutes(lat, lng, lat[::-1], lng[::-1], local.tz_convert("UTC"), "car")
    by_epoch = bundle.predict_minutes(
        lat, lng, lat[::-1], lng[::-1], np.full(5, local.timestamp()), "car"
    )
    np.testing.assert_array_equal(by_local, by_utc)
    np.testing.assert_array_equal(by_local, by_epoch)
    msg = "departure: a Timestamp must be time-zone aware"
    with pytest.raises(ValueError, match=re.escape(msg)):
        bundle.predict_minutes(lat, lng, lat, lng, pd.Timestamp("2024-04-09 17:40"), "car")
    msg = "departure: pass a tz-aware Timestamp, tz-aware timestamps or epoch seconds"
    with pytest.raises(ValueError, match=re.escape(msg)):
        bundle.predict_minutes(lat, lng, lat, lng, np.array(["2024-04-09"]), "car")


def test_hour_of_week_is_local_in_the_learned_zone(bundle: LegBundle) -> None:
    assert bundle.featurizer.tz_ == TZ
    after_dst = pd.Timestamp("2024-04-01 08:30", tz=TZ)  # Monday, UTC+2
    before_dst = pd.Timestamp("2024-03-25 08:30", tz=TZ)  # Monday, UTC+1
    for stamp in (after_dst, before_dst):
        when = lf.local_time(np.array([stamp.timestamp()]), TZ)
        assert when.hour_of_week.tolist() == [8]
        assert when.clock_hour.tolist() == [8.5]


def test_leakage_legs_after_test_from_do_not_change_profiles(deliveries: pd.DataFrame) -> None:
    future = deliveries[s.ARRIVAL_TIME] >= pd.Timestamp(TEST_FROM, tz=TZ)
    changed = deliveries.copy()
    changed.loc[future, s.LAT] += 0.01
    changed.loc[future, s.ARRIVAL_TIME] += pd.Timedelta(minutes=7)
    changed.loc[future, s.VEHICLE_TYPE] = "van"
    a, b = fit_profiles(deliveries, TEST_FROM, CONFIG), fit_profiles(changed, TEST_FROM, CONFIG)
    assert a.service.table_ == b.service.table_
    pd.testing.assert_frame_equal(a.history, b.history)
    for name in ("zone_table_", "zone_how_table_", "how_table_"):
        np.testing.assert_array_equal(getattr(a.featurizer, name), getattr(b.featurizer, name))
    assert list(a.featurizer.vehicles_) == list(b.featurizer.vehicles_) == ["bike", "car"]


def test_point_in_time_features_ignore_later_days(deliveries: pd.DataFrame) -> None:
    legs = fit_profiles(deliveries, TEST_FROM, CONFIG).history
    cut = pd.Timestamp("2024-03-25", tz=TZ)
    later = legs[lf.DEPART] >= cut
    changed = legs.copy()
    changed.loc[later, lf.TRAVEL_MIN] *= 3.0
    original, altered = lf.LegFeaturizer().fit(legs), lf.LegFeaturizer().fit(changed)
    early, late = legs[~later], legs[later]
    t_early = (
        original.transform(early, point_in_time=True),
        altered.transform(early, point_in_time=True),
    )
    np.testing.assert_array_equal(*t_early)
    # not vacuous: the same change does move the features of the later legs
    assert not np.allclose(
        original.transform(late, point_in_time=True),
        altered.transform(late, point_in_time=True),
        equal_nan=True,
    )


def test_serving_tables_equal_point_in_time_after_the_window(deliveries: pd.DataFrame) -> None:
    p = fit_profiles(deliveries, TEST_FROM, CONFIG)
    served = p.featurizer.transform(p.test)
    as_of = p.featurizer.transform(p.test, point_in_time=True)
    np.testing.assert_allclose(served, as_of, rtol=1e-6, equal_nan=True)


def test_featurizer_follows_the_estimator_contract(deliveries: pd.DataFrame) -> None:
    f = lf.LegFeaturizer(h3_resolution=7, prior=2.0)
    assert clone(f).get_params() == {"h3_resolution": 7, "prior": 2.0}
    with pytest.raises(NotFittedError):
        f.pairs([LAT0], [LNG0], [LAT0], [LNG0], 0.0)
    legs = fit_profiles(deliveries, TEST_FROM, CONFIG).history
    assert f.fit(legs) is f
    assert list(f.get_feature_names_out()) == lf.feature_names()
    with pytest.raises(ValueError, match=re.escape("legs lack column(s): depart_time")):
        f.transform(legs.drop(columns=[lf.DEPART]))


def test_bundle_round_trip_and_feature_set_check(bundle: LegBundle) -> None:
    lat, lng = _points(20, seed=6)
    dep = pd.Timestamp("2024-04-10 11:00", tz=TZ)
    again = pickle.loads(pickle.dumps(bundle))
    np.testing.assert_array_equal(
        again.predict_matrix(lat, lng, lat, lng, dep, "bike"),
        bundle.predict_matrix(lat, lng, lat, lng, dep, "bike"),
    )
    check_feature_set(again)
    again.feature_set = "leg_v0"
    msg = "feature_set: model uses 'leg_v0', this code computes 'leg_v1'"
    with pytest.raises(ValueError, match=re.escape(msg)):
        check_feature_set(again)
