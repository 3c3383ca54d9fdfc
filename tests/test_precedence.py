"""A courier's habitual order between areas (features.precedence): counts, point in time, ranks."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from features import schema as s
from features.eta_features import EtaFeaturizer, feature_names
from features.eta_queries import queries_from_deliveries
from features.precedence import PairPrecedence, precedence_rank, route_pairs
from tests.synth import TZ, make_deliveries

DAY0 = (pd.Timestamp("2021-06-01") - pd.Timestamp("1970-01-01")).days  # local day of day 0


def _visits(routes: list[tuple[str, str, int, list[str]]]) -> pd.DataFrame:
    """Deliveries in visit order: (route, courier, day, areas in the order reached)."""
    rows = []
    for route, courier, day, areas in routes:
        start = pd.Timestamp("2021-06-01 08:00", tz=TZ) + pd.Timedelta(days=day)
        for k, area in enumerate(areas):
            t = start + pd.Timedelta(minutes=10 * (k + 1))
            rows.append(
                {
                    s.ROUTE_ID: route,
                    s.COURIER_ID: courier,
                    s.AOI_ID: area,
                    s.STOP_ID: f"{route}-{k}",
                    s.DISPATCH_TIME: start,
                    s.ARRIVAL_TIME: t,
                }
            )
    return pd.DataFrame(rows)


def test_route_pairs_count_first_visits_once_per_pair() -> None:
    d = _visits([("r1", "c", 0, ["x", "y", "x", "z"]), ("r2", "c", 1, ["z", "x"])])
    pairs = route_pairs(d, np.array([0] * 4 + [1] * 2))
    got = {(r.a, r.b, r.day): (r.n, r.before) for r in pairs.itertuples()}
    # r1 reaches x first, then y, then z; the second visit of x does not count
    assert got == {
        ("x", "y", 0): (1.0, 1.0),
        ("x", "z", 0): (1.0, 1.0),
        ("y", "z", 0): (1.0, 1.0),
        ("x", "z", 1): (1.0, 0.0),  # r2 reached z before x
    }


def test_p_before_sees_only_earlier_days_and_shrinks_toward_one_half() -> None:
    d = _visits(
        [("r1", "c", 0, ["x", "y"]), ("r2", "c", 1, ["x", "y"]), ("r3", "c", 2, ["y", "x"])]
    )
    model = PairPrecedence(prior=1.0).fit(d)
    x, y = model.area_codes(np.array(["x", "y"], dtype=object))
    c = model.courier_codes(np.array(["c"], dtype=object))[0]
    days = DAY0 + np.array([0, 1, 2, 3])
    courier = np.full(4, c)
    p_xy, n = model.p_before(courier, np.full(4, x), np.full(4, y), days)
    # as of day 0 nothing is known; then 1, 2 and 3 routes, x first in the first two
    assert n.tolist() == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(p_xy, [0.5, 1.5 / 2, 2.5 / 3, 2.5 / 4])
    p_yx, _ = model.p_before(courier, np.full(4, y), np.full(4, x), days)
    np.testing.assert_allclose(p_xy + p_yx, 1.0)
    # an unknown courier or area knows nothing
    p, n = model.p_before(
        np.array([-1, c]), np.array([x, -1]), np.array([y, y]), DAY0 + np.array([3, 3])
    )
    assert p.tolist() == [0.5, 0.5] and n.tolist() == [0.0, 0.0]


def test_precedence_rank_counts_the_areas_usually_reached_first() -> None:
    # the courier always goes a -> b -> c
    d = _visits([(f"r{i}", "c", i, ["a", "b", "c"]) for i in range(5)])
    model = PairPrecedence(prior=1.0).fit(d)
    areas = model.area_codes(np.array(["c", "a", "b", "a", "zz"], dtype=object))
    group = np.array([0, 0, 0, 0, 1])  # query 0: four targets in three areas; query 1: unknown
    prec = precedence_rank(
        model,
        group,
        areas,
        model.courier_codes(np.array(["c", "c"], dtype=object)),
        DAY0 + np.array([9, 9]),
    )
    p = 5.5 / 6  # five routes and the prior's half
    np.testing.assert_allclose(prec.before[:4], [2 * p, 2 * (1 - p), p + (1 - p), 2 * (1 - p)])
    assert prec.others[:4].tolist() == [2.0] * 4 and prec.known[:4].tolist() == [1.0] * 4
    assert np.isnan(prec.before[4]) and np.isnan(prec.known[4])


def test_unordered_features_follow_the_habit_and_ordered_ones_do_not_change() -> None:
    deliveries = make_deliveries(days=21, couriers=3, stops=6, seed=1)
    featurizer = EtaFeaturizer().fit(deliveries)
    batch = queries_from_deliveries(deliveries)
    names = feature_names("unordered")
    X = pd.DataFrame(featurizer.transform(batch, "unordered"), columns=names)
    late = batch.q_day[batch.t_query] >= batch.q_day.min() + 10
    # with ten days of history the habit's order tracks the true one
    rho = pd.Series(X["prec_seq"][late].to_numpy()).corr(
        pd.Series(batch.t_seq[late].astype(float)), method="spearman"
    )
    assert rho > 0.5
    assert ((X["prec_frac"] >= 0) & (X["prec_frac"] <= 1)).all()
    # nothing is known on the first day; most of today's pairs are after ten days
    first_day = batch.q_day[batch.t_query] == batch.q_day.min()
    assert (X["prec_known"][first_day].fillna(0.0) == 0.0).all()
    assert X["prec_known"][late].mean() > 0.5
    # the leg sums along the habit's order grow along it, per query
    order = np.lexsort((X["prec_seq"].to_numpy(), batch.t_query))
    legs, q = X["prec_leg_sum_min"].to_numpy()[order], batch.t_query[order]
    same = q[1:] == q[:-1]
    assert (np.diff(legs)[same] >= -1e-9).all()
    # the ordered mode does not compute them
    assert not {n for n in names if n.startswith("prec_")} & set(feature_names("ordered"))
    assert sum(n.startswith("prec_") for n in names) == 9


def test_too_many_areas_to_code_is_a_clear_error() -> None:
    # 1.7M couriers x 1.7M areas squared exceeds 2**62 pair codes
    n = 1_700_000
    huge = pd.DataFrame(
        {
            "courier": [f"c{i}" for i in range(n)],
            "a": [f"a{i}" for i in range(n)],
            "b": "b",
            "day": 0,
            "n": 1.0,
            "before": 1.0,
        }
    )
    with pytest.raises(ValueError, match=r"aoi_id: .* too many to code area pairs"):
        PairPrecedence().fit_daily(huge)


def test_small_and_large_code_paths_agree_and_the_cache_is_not_pickled() -> None:
    d = _visits([("r1", "c", 0, ["x", "y"]), ("r2", "k", 1, ["y", "z"])])
    model = PairPrecedence().fit(d)
    areas = np.array(["z", "nope", "x", ""] * 600, dtype=object)  # over the dict path's limit
    np.testing.assert_array_equal(model.area_codes(areas[:4]), model.area_codes(areas)[:4])
    assert model.area_codes(areas[:4])[1:].tolist()[0] == -1
    assert model.courier_codes(np.array(["k", "c", "?"], dtype=object)).tolist()[2] == -1
    assert "_code_of" in model.__dict__
    restored = pickle.loads(pickle.dumps(model))
    assert "_code_of" not in restored.__dict__
    np.testing.assert_array_equal(restored.area_codes(areas[:4]), model.area_codes(areas[:4]))
