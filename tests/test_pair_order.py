"""The unordered mode's learned visit order (``features.pair_order``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from features.eta_features import EtaFeaturizer, feature_names
from features.eta_queries import queries_from_deliveries
from features.pair_order import PairOrder, query_pairs
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
