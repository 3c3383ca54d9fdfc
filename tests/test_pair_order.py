"""The unordered mode's learned visit order (``features.pair_order``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from features.eta_features import EtaFeaturizer, feature_names
from features.eta_queries import queries_from_deliveries
from features.pair_order import (
    PairColumns,
    PairOrder,
    group_rank_frac,
    query_context,
    query_pairs,
    window_pairs,
)
from tests.synth import make_deliveries


@pytest.fixture(scope="module")
def deliveries() -> pd.DataFrame:
    return make_deliveries(days=21, couriers=3, stops=6, seed=1)


def _order() -> PairOrder:
    return PairOrder(refresh_days=5, min_days=5, rounds=10, min_child_samples=20, max_targets=10)


def test_query_pairs_are_every_ordered_pair_within_a_query() -> None:
    group = np.array([0, 0, 0, 1, 2, 2])
    i, j = query_pairs(group)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [
        (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (4, 5), (5, 4),
    ]  # fmt: skip
    key = np.array([0.9, 0.1, 0.5, 0.3, 0.2, 0.4])
    i, j = query_pairs(group, key, max_targets=2)  # query 0 keeps its two smallest keys
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(1, 2), (2, 1), (4, 5), (5, 4)]


def test_group_rank_frac_ranks_within_groups_with_shared_ties_and_nan_left_out() -> None:
    group = np.array([0, 0, 0, 0, 1, 1, 2])
    value = np.array([3.0, 1.0, 3.0, np.nan, 5.0, 2.0, 7.0])
    r = group_rank_frac(group, value)
    # group 0 ranks 1.0 < 3.0 = 3.0 among its three known values: 0, then (1 + 2) / 2 of 2
    np.testing.assert_allclose(r[:3], [0.75, 0.0, 0.75])
    assert np.isnan(r[3])
    np.testing.assert_allclose(r[4:], [1.0, 0.0, 0.0])  # a group of one ranks 0
    assert np.isnan(group_rank_frac(group, np.full(7, np.nan))).all()


def test_query_context_adds_deviations_from_the_query_mean_and_ranks() -> None:
    group = np.array([0, 0, 0, 1, 1])
    X = np.array([[1.0, 9.0], [2.0, 9.0], [6.0, 9.0], [np.nan, 1.0], [4.0, 3.0]], np.float32)
    C = query_context(group, X, PairColumns(keep=(), context=(0, 1), ranked=(0,)))
    assert C.shape == (5, 2 + 2 + 1)
    np.testing.assert_array_equal(C[:, :2], X)
    np.testing.assert_allclose(C[:3, 2], [-2.0, -1.0, 3.0])  # query 0's mean is 3
    assert np.isnan(C[3, 2]) and C[4, 2] == 0.0  # the mean is over known values
    np.testing.assert_allclose(C[:, 3], [0.0, 0.0, 0.0, -1.0, 1.0])
    np.testing.assert_allclose(C[:3, 4], [0.0, 0.5, 1.0])


def test_window_pairs_join_each_target_to_the_next_ones_in_score_order() -> None:
    group = np.array([0, 0, 0, 0, 1, 1])
    score = np.array([0.4, 0.1, 0.3, 0.2, 0.9, 0.5])  # query 0's order: 1, 3, 2, 0
    i, j = window_pairs(group, score, 2)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [
        (1, 2), (1, 3), (2, 0), (3, 0), (3, 2), (5, 4),
    ]  # fmt: skip
    i, j = window_pairs(group, score, 10)  # a window past the query's size: every pair once
    assert len(i) == 4 * 3 // 2 + 1


def test_the_learned_order_follows_the_visit_order(deliveries: pd.DataFrame) -> None:
    featurizer = EtaFeaturizer(pair_order=_order()).fit(deliveries)
    batch = queries_from_deliveries(deliveries)
    X = pd.DataFrame(featurizer.transform(batch, "unordered"), columns=feature_names("unordered"))
    filled = np.isfinite(X["pw_ahead"].to_numpy())
    assert 0.5 < filled.mean() < 1.0  # days before the first cut have no model yet
    ours, by_distance = [], []
    for q in np.unique(batch.t_query[filled]):
        m = batch.t_query == q
        if m.sum() >= 3:
            ours.append(spearmanr(X["pw_ahead"][m], batch.t_seq[m]).correlation)
            by_distance.append(spearmanr(X["dist_km"][m], batch.t_seq[m]).correlation)
    assert len(ours) > 50
    assert np.nanmean(ours) > 0.8
    assert np.nanmean(ours) > np.nanmean(by_distance) + 0.3
    # the ranker's order with the close pairs' probabilities: n(n-1)/2 stops ahead in all
    per_query = pd.Series(X["pw_ahead"][filled].to_numpy()).groupby(batch.t_query[filled])
    size = per_query.size().to_numpy()
    np.testing.assert_allclose(per_query.sum().to_numpy(), size * (size - 1) / 2, atol=1e-9)
    # the order that follows from it ranks each query's stops 0..n-1
    seq = X["pw_seq"].to_numpy()[filled]
    for q in np.unique(batch.t_query[filled])[:20]:
        m = batch.t_query[filled] == q
        assert sorted(seq[m].tolist()) == list(range(int(m.sum())))


def test_each_day_is_ranked_by_a_model_of_earlier_days_only(deliveries: pd.DataFrame) -> None:
    """Day d uses the model of the last cut <= d, trained on days before that cut: refitting
    on those days alone gives the same columns for day d."""
    full = EtaFeaturizer(pair_order=_order()).fit(deliveries)
    cuts = full.pair_order_.cuts_
    assert cuts == sorted(cuts) and len(cuts) >= 3
    batch = queries_from_deliveries(deliveries)
    day = cuts[1] + 2  # between the second and the third cut
    one_day = batch.take_queries(batch.q_route_day == day)
    from features import schema as s
    from features.profiles import local_day

    upto = deliveries[local_day(deliveries[s.DISPATCH_TIME]) <= day]
    short = EtaFeaturizer(pair_order=_order()).fit(upto)
    assert short.pair_order_.cuts_[:2] == cuts[:2]
    names = feature_names("unordered")
    pw = [names.index(n) for n in names if n.startswith("pw_")]
    np.testing.assert_array_equal(
        full.transform(one_day, "unordered")[:, pw], short.transform(one_day, "unordered")[:, pw]
    )


def test_without_a_pair_order_its_columns_are_empty(deliveries: pd.DataFrame) -> None:
    featurizer = EtaFeaturizer().fit(deliveries)
    batch = queries_from_deliveries(deliveries)
    X = pd.DataFrame(featurizer.transform(batch, "unordered"), columns=feature_names("unordered"))
    pw = [n for n in X.columns if n.startswith("pw_")]
    assert len(pw) == 6 and X[pw].isna().all().all()
    with pytest.raises(ValueError, match="pair_order: this featurizer was built without one"):
        featurizer.fit_pair_order(batch)
