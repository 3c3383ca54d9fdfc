"""ETA feature set eta_v6: pinned names, point-in-time profiles, no leakage, one code path."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from features import schema as s
from features.eta_features import EtaFeaturizer, feature_names
from features.eta_queries import queries_from_deliveries
from features.eta_request import ZoneResolver, build_batch, requests_from_deliveries
from features.pair_order import PairOrder
from features.profiles import PointInTimeProfile
from tests.synth import TZ, make_deliveries


def _featurizer() -> EtaFeaturizer:
    """With a tiny learned visit order, so its columns are exercised (not left NaN)."""
    order = PairOrder(refresh_days=5, min_days=5, rounds=10, min_child_samples=20, max_targets=10)
    return EtaFeaturizer(pair_order=order)


@pytest.fixture(scope="module")
def deliveries() -> pd.DataFrame:
    return make_deliveries(days=21, couriers=3, stops=6, seed=1)


def test_feature_names_are_pinned() -> None:
    unordered = feature_names("unordered")
    assert unordered[:5] == [
        "dist_km",
        "dist_depot_km",
        "n_remaining",
        "rank_dist",
        "rank_dist_frac",
    ]
    assert len(unordered) == len(set(unordered)) == 75
    assert unordered[56:60] == [
        "nn_leg_sum_min",
        "pseudo_leg_sum_min",
        "win_start_min",
        "win_end_min",
    ]
    assert unordered[60:] == [
        "prec_before",
        "prec_frac",
        "prec_known",
        "prec_seq",
        "prec_seq_frac",
        "prec_path_km",
        "prec_switches",
        "prec_leg_sum_min",
        "prec_leg_today_min",
        "pw_ahead",
        "pw_frac",
        "pw_seq",
        "pw_path_km",
        "pw_leg_sum_min",
        "pw_leg_today_min",
    ]
    assert feature_names("ordered") == [
        *unordered[:60],
        "seq",
        "seq_frac",
        "path_km",
        "path_est_min",
        "seq_est_min",
        "planned_min",
        "seq_switches",
        "seq_switch_est_min",
        "seq_cost_sum_min",
        "seq_leg_sum_min",
        "seq_leg_today_min",
        "win_gap_min",
        "seq_win_wait_min",
        "seq_win_leg_min",
    ]
    with pytest.raises(ValueError, match="mode: must be 'ordered' or 'unordered', got 'zigzag'"):
        feature_names("zigzag")  # type: ignore[arg-type]


def test_point_in_time_profile_sees_only_earlier_days() -> None:
    events = pd.DataFrame(
        {"key": ["a", "a", "a", "b"], "day": [1, 2, 3, 2], "x": [10.0, 20.0, 30.0, 100.0]}
    )
    prof = PointInTimeProfile(stats=("x",), prior=0.0).fit(events)
    look = prof.lookup(["a", "a", "a", "a", "b", "c"], [1, 2, 3, 9, 3, 3])
    assert look.n.tolist() == [0, 1, 2, 3, 1, 0]
    np.testing.assert_allclose(look.mean("x")[1:5], [10.0, 15.0, 20.0, 100.0])
    # with a prior, an unseen key gets the pooled mean as of its day: (10 + 20 + 100) / 3
    shrunk = PointInTimeProfile(stats=("x",), prior=2.0).fit(events).lookup(["c"], [3])
    np.testing.assert_allclose(shrunk.mean("x"), [130.0 / 3])


def test_training_queries_follow_the_protocol(deliveries: pd.DataFrame) -> None:
    batch = queries_from_deliveries(deliveries)
    routes = deliveries[s.ROUTE_ID].nunique()
    # a dispatch query and one after each stop but the last (it leaves nothing in hand)
    assert batch.n_queries == routes * 6
    assert batch.n_targets == routes * (6 + 5 + 4 + 3 + 2 + 1)
    assert np.all((batch.t_label_min > 0) & (batch.t_label_min <= 240))
    first = batch.take_queries(np.arange(batch.n_queries) == 0)
    assert first.q_n_done.tolist() == [0.0]
    assert first.t_seq.tolist() == list(range(6))


def test_leakage_rows_after_t_do_not_change_features_at_t(deliveries: pd.DataFrame) -> None:
    t = pd.Timestamp("2021-06-12 12:00", tz=TZ)
    batch = queries_from_deliveries(deliveries)
    at_or_before = pd.to_datetime(batch.q_time, unit="s", utc=True) <= t
    sub = batch.take_queries(np.asarray(at_or_before))
    changed = deliveries.copy()
    later = changed[s.ARRIVAL_TIME] > t
    changed.loc[later, s.LAT] += 0.05
    changed.loc[later, s.ARRIVAL_TIME] += pd.Timedelta(minutes=37)
    extra = changed[later].assign(**{s.STOP_ID: lambda f: f[s.STOP_ID] + "-x"})
    changed = pd.concat([changed, extra], ignore_index=True)
    for mode in ("ordered", "unordered"):
        a = _featurizer().fit(deliveries).transform(sub, mode)
        b = _featurizer().fit(changed).transform(sub, mode)
        np.testing.assert_array_equal(a, b)


def test_both_modes_at_once_equal_each_mode_alone(deliveries: pd.DataFrame) -> None:
    featurizer = _featurizer().fit(deliveries)
    batch = queries_from_deliveries(deliveries)
    both = featurizer.transform_modes(batch, ("ordered", "unordered"))
    assert set(both) == {"ordered", "unordered"}
    for mode, matrix in both.items():
        assert np.isfinite(matrix).any(axis=0).sum() > 10  # real columns, not all NaN
        np.testing.assert_array_equal(matrix, featurizer.transform(batch, mode))


def test_service_requests_give_the_training_features(deliveries: pd.DataFrame) -> None:
    featurizer = _featurizer().fit(deliveries)
    history = queries_from_deliveries(deliveries)
    live = build_batch(requests_from_deliveries(deliveries), featurizer.tz_, ZoneResolver())
    assert live.n_targets == history.n_targets
    for mode in ("ordered", "unordered"):
        names = feature_names(mode)
        a = pd.DataFrame(featurizer.transform(history, mode), columns=names)
        a["key"] = (
            history.t_stop_id + "@" + np.round(history.q_time[history.t_query], 3).astype(str)
        )
        b = pd.DataFrame(featurizer.transform(live, mode), columns=names)
        b["key"] = live.t_stop_id + "@" + np.round(live.q_time[live.t_query], 3).astype(str)
        merged = a.merge(b, on="key", suffixes=("_train", "_serve"))
        assert len(merged) == history.n_targets
        for name in names:
            np.testing.assert_allclose(
                merged[f"{name}_train"], merged[f"{name}_serve"], rtol=1e-5, atol=1e-4, err_msg=name
            )


def test_unknown_courier_and_zone_fall_back(deliveries: pd.DataFrame) -> None:
    featurizer = _featurizer().fit(deliveries)
    last_route = deliveries[s.ROUTE_ID].iloc[-1]
    live = requests_from_deliveries(deliveries[deliveries[s.ROUTE_ID] == last_route])
    route = live[0]
    stranger = type(route.state)(
        **{**route.state.__dict__, "courier_id": "new-courier", "vehicle_type": "hovercraft"}
    )
    batch = build_batch([type(route)(stranger, route.stops)], featurizer.tz_, ZoneResolver())
    X = pd.DataFrame(featurizer.transform(batch, "unordered"), columns=feature_names("unordered"))
    assert X["courier_days"].eq(0).all()
    assert np.isfinite(X["courier_km_per_min"]).all()  # pooled pace, not NaN
    assert X["vehicle"].isna().all()  # unseen category is missing, not an error


def test_nn_tour_few_queries_path_equals_the_vectorised_one() -> None:
    from features import eta_features as ef

    rng = np.random.default_rng(3)
    n_q = ef._FEW_QUERIES + 6  # above the threshold: the vectorised path
    sizes = rng.integers(0, 30, n_q)
    group = np.repeat(np.arange(n_q), sizes)
    lat = 43.8 + rng.integers(0, 40, len(group)) * 1e-3  # a coarse grid: many exact ties
    lng = 126.5 + rng.integers(0, 40, len(group)) * 1e-3
    lat[::17] = np.nan  # unknown coordinates count as distance 0, in both paths
    q_lat, q_lng = 43.82 + np.zeros(n_q), 126.52 + np.zeros(n_q)
    vectorised = ef.nn_tour(group, q_lat, q_lng, lat, lng)
    few = np.empty_like(vectorised)
    for qi in range(n_q):
        m = group == qi
        few[m] = ef.nn_tour(
            np.zeros(m.sum(), dtype=np.int64),
            q_lat[qi : qi + 1],
            q_lng[qi : qi + 1],
            lat[m],
            lng[m],
        )
    np.testing.assert_array_equal(few, vectorised)
    assert (vectorised >= 0).all()


def test_one_request_at_a_time_gives_the_training_features(deliveries: pd.DataFrame) -> None:
    """The service answers one route per call: the small-batch paths (dict lookups, per-query
    tours) must give exactly what the training batch gives."""
    featurizer = _featurizer().fit(deliveries)
    requests = requests_from_deliveries(deliveries)
    whole = build_batch(requests, featurizer.tz_, ZoneResolver())
    picks = np.random.default_rng(0).choice(len(requests), 15, replace=False)
    starts = np.r_[0, np.cumsum([len(r.stops) for r in requests])]
    for mode in ("ordered", "unordered"):
        X_all = featurizer.transform(whole, mode)
        for i in picks:
            one = build_batch([requests[i]], featurizer.tz_, ZoneResolver())
            np.testing.assert_array_equal(
                featurizer.transform(one, mode), X_all[starts[i] : starts[i + 1]]
            )


def test_small_batch_paths_give_what_the_vectorised_paths_give(
    deliveries: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service request takes the small-batch paths (dict coding and counting, one pooled row
    per day, per-query tours); the training batch takes the vectorised ones. Forcing every
    batch through each set of paths must give the same numbers, to the bit."""
    from features import eta_features as ef
    from features import profiles

    featurizer = _featurizer().fit(deliveries)
    requests = requests_from_deliveries(deliveries)
    batches = [
        queries_from_deliveries(deliveries),
        build_batch(requests, featurizer.tz_, ZoneResolver()),
        build_batch(requests[5:6], featurizer.tz_, ZoneResolver()),
    ]

    def features(limit: int) -> list[np.ndarray]:
        with monkeypatch.context() as mp:
            mp.setattr(ef, "_FEW_VALUES", limit)
            mp.setattr(ef, "_FEW_QUERIES", limit)
            mp.setattr(profiles, "_FEW_KEYS", limit)
            fitted = pickle.loads(pickle.dumps(featurizer))  # no lookup caches carried over
            return [fitted.transform(b, m) for b in batches for m in ("ordered", "unordered")]

    for small, vectorised in zip(features(10**9), features(0), strict=True):
        np.testing.assert_array_equal(small, vectorised)


def test_lookup_caches_are_not_pickled(deliveries: pd.DataFrame) -> None:
    featurizer = _featurizer().fit(deliveries)
    batch = build_batch(requests_from_deliveries(deliveries)[:1], featurizer.tz_, ZoneResolver())
    featurizer.transform(batch, "ordered")
    assert "_pooled_of" in featurizer.aoi_.__dict__
    again = pickle.loads(pickle.dumps(featurizer))
    assert "_pooled_of" not in again.aoi_.__dict__
    assert "_code_of" not in again.aoi_.__dict__
    np.testing.assert_array_equal(
        again.transform(batch, "ordered"), featurizer.transform(batch, "ordered")
    )


def test_leg_sums_add_up_a_courier_leg_law_along_the_plan() -> None:
    """Legs that cost 1.5 min inside an area and 2 + 3 x km to a new one: the fitted
    per-courier leg line, summed along the plan, gives each stop's minutes exactly."""
    from features.geo import haversine_km

    d = make_deliveries(days=10, couriers=2, stops=8, seed=4)
    d = d.sort_values([s.ROUTE_ID, s.PLANNED_SEQ]).reset_index(drop=True)
    first = (d[s.ROUTE_ID] != d[s.ROUTE_ID].shift()).fillna(True).to_numpy(dtype=bool)
    km = haversine_km(d[s.LAT].shift().to_numpy(), d[s.LNG].shift().to_numpy(), d[s.LAT], d[s.LNG])
    same = (d[s.AOI_ID] == d[s.AOI_ID].shift()).fillna(False).to_numpy(dtype=bool)
    leg = np.where(first, 5.0, np.where(same, 1.5, 2.0 + 3.0 * np.nan_to_num(km)))
    cum = pd.Series(leg).groupby(d[s.ROUTE_ID]).cumsum().to_numpy()
    d[s.ARRIVAL_TIME] = d[s.DISPATCH_TIME] + pd.to_timedelta(cum, unit="min")
    d[s.DEPARTURE_TIME] = d[s.ARRIVAL_TIME] + pd.Timedelta(minutes=1)
    featurizer = _featurizer().fit(d)
    batch = queries_from_deliveries(d)
    X = pd.DataFrame(featurizer.transform(batch, "ordered"), columns=feature_names("ordered"))
    after_a_stop = batch.q_n_done[batch.t_query] >= 1
    seen_before = batch.q_day[batch.t_query] > batch.q_day.min()
    rows = after_a_stop & seen_before
    assert rows.sum() > 100
    np.testing.assert_allclose(X["seq_leg_sum_min"][rows], batch.t_label_min[rows], atol=1e-6)
    # without the plan, the same legs along a guessed order cost at least the straight way
    assert (X["nn_leg_sum_min"][rows] >= 1.5 - 1e-9).all()


def test_window_waits_propagate_along_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """A courier reaching a stop up to ``max_wait`` minutes before its booked window waits for
    it, and every later stop moves by the wait; a window further off, or already open, does not
    hold him up."""
    from features import eta_features as ef

    group = np.array([0, 0, 0, 1, 1, 1], dtype=np.int64)
    seq = np.array([2, 0, 1, 0, 1, 2], dtype=np.int64)  # query 0's targets come out of order
    est = np.array([30.0, 10.0, 20.0, 10.0, 20.0, 30.0])  # arrivals without waits
    start = np.array([np.nan, np.nan, 25.0, 45.0, np.nan, 5.0])
    got = ef.window_waits(ef._sorted_along(group, seq), est, start, max_wait=20.0)
    # query 0: reaches its 2nd stop at 20, 5 min early: waits, so its 3rd moves to 35
    np.testing.assert_allclose(got.seq_win_leg_min, [35.0, 10.0, 25.0, 10.0, 20.0, 30.0])
    np.testing.assert_allclose(got.seq_win_wait_min, [5.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    # query 1: 35 min early is past the wait limit; a window open since 5 does not hold
    np.testing.assert_allclose(
        got.win_gap_min, [np.nan, np.nan, 5.0, 35.0, np.nan, -25.0], equal_nan=True
    )
    longer = ef.window_waits(ef._sorted_along(group, seq), est, start, max_wait=40.0)
    np.testing.assert_allclose(longer.seq_win_leg_min, [35.0, 10.0, 25.0, 45.0, 55.0, 65.0])
    monkeypatch.setattr(ef, "_FEW_QUERIES", 0)  # the training batch's vectorised path
    vectorised = ef.window_waits(ef._sorted_along(group, seq), est, start, max_wait=20.0)
    for a, b in zip(got, vectorised, strict=True):
        np.testing.assert_array_equal(a, b)
    none = ef.window_waits(ef._sorted_along(group, seq), est, np.full(6, np.nan), 20.0)
    np.testing.assert_array_equal(none.seq_win_leg_min, est)
    assert not none.seq_win_wait_min.any() and np.isnan(none.win_gap_min).all()


def test_a_booked_window_in_a_request_holds_up_the_stops_after_it(
    deliveries: pd.DataFrame,
) -> None:
    """The history path carries windows too (the parity tests above: the synthetic stops book
    some); here a request's window opens 8 min after the courier would reach the 3rd stop."""
    import dataclasses
    import datetime as dt

    featurizer = _featurizer().fit(deliveries)
    request = next(r for r in requests_from_deliveries(deliveries) if len(r.stops) >= 5)
    request = dataclasses.replace(
        request,
        stops=[
            dataclasses.replace(st, booked_window_start=None, booked_window_end=None)
            for st in request.stops
        ],
    )
    names = feature_names("ordered")

    def columns(opens_after: float | None) -> pd.DataFrame:
        stops = list(request.stops)
        if opens_after is not None:
            start = request.state.time + dt.timedelta(minutes=est[2] + opens_after)
            stops[2] = dataclasses.replace(
                stops[2], booked_window_start=start, booked_window_end=start + dt.timedelta(hours=2)
            )
        batch = build_batch(
            [dataclasses.replace(request, stops=stops)], featurizer.tz_, ZoneResolver()
        )
        return pd.DataFrame(featurizer.transform(batch, "ordered"), columns=names)

    est = columns(None)["seq_leg_today_min"].to_numpy(np.float64)
    X = columns(8.0)
    n = len(est)
    assert np.isfinite(X["win_start_min"]).tolist() == [i == 2 for i in range(n)]
    np.testing.assert_allclose(X["win_end_min"][2] - X["win_start_min"][2], 120.0, atol=1e-3)
    np.testing.assert_allclose(X["win_gap_min"][2], 8.0, atol=1e-3)
    waited = np.where(np.arange(n) >= 2, 8.0, 0.0)
    np.testing.assert_allclose(X["seq_win_leg_min"], est + waited, atol=1e-3)
    np.testing.assert_allclose(X["seq_win_wait_min"], np.where(np.arange(n) > 2, 8.0, 0.0))
    far = columns(45.0)  # past the 20-min wait limit: delivered early, nothing moves
    np.testing.assert_allclose(far["seq_win_leg_min"], est, atol=1e-3)
