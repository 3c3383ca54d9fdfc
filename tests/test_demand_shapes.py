"""The day classes' hour shapes from a low-rank fit over all zones (``low_rank_shapes``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import schema as s
from features.demand_features import (
    DemandFeatureSpec,
    DemandFeaturizer,
    low_rank_counts,
    low_rank_shapes,
    shrunk_shares,
)

HOURS = np.arange(24)
# two city-wide patterns per day type (working day, day off), each summing to 1 over the hours
HOME = np.stack(
    [1.2 + np.cos((HOURS - 20) / 24 * 2 * np.pi), 1.2 + np.cos((HOURS - 14) / 24 * 2 * np.pi)]
)
OFFICE = np.stack(
    [1.1 + np.cos((HOURS - 11) / 24 * 2 * np.pi), 1.1 + 0.3 * np.cos(HOURS / 24 * 2 * np.pi)]
)
HOME, OFFICE = (p / p.sum(axis=1, keepdims=True) for p in (HOME, OFFICE))


def ranked(counts: np.ndarray, rank: int, empty_city: np.ndarray) -> np.ndarray:
    return low_rank_shapes(counts, low_rank_counts(counts, rank), empty_city)


def mixed_counts(zones: int, parcels: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts (Z x 2 x 24) of zones that mix homes and offices, and their true shapes."""
    rng = np.random.default_rng(seed)
    mix = rng.uniform(0.0, 1.0, zones)[:, None, None]
    shape = (1 - mix) * HOME[None] + mix * OFFICE[None]  # Z x 2 x 24, rows sum to 1
    size = rng.lognormal(np.log(parcels), 0.5, zones)[:, None, None]
    return rng.poisson(size * shape).astype(float), shape * 24


def test_a_mix_of_two_patterns_is_recovered_better_than_each_zones_own_shares() -> None:
    """At a few parcels per zone-hour the zones' own shares (shrunk towards the city's) are
    mostly noise; the rank-2 fit reads each zone's mix from all its hours and the patterns
    from every zone."""
    counts, truth = mixed_counts(zones=200, parcels=150.0, seed=3)
    flat_city = np.full(24, 1.0 / 24)
    fitted = ranked(counts, 2, flat_city)
    own = np.stack([shrunk_shares(counts[:, k], flat_city)[1] * 24 for k in (0, 1)], axis=1)
    assert fitted.shape == counts.shape
    np.testing.assert_allclose(fitted.sum(axis=2), 24.0)
    err_ranked = np.abs(np.log(fitted / truth)).mean()
    err_own = np.abs(np.log(own / truth)).mean()
    assert err_ranked < 0.3 * err_own  # measured: 0.067 against 0.306
    # the rank the data has fits best: one pattern cannot mix, three fit noise
    for rank in (1, 3):
        assert np.abs(np.log(ranked(counts, rank, flat_city) / truth)).mean() > err_ranked
    # with plenty of parcels both agree with the truth
    big, truth = mixed_counts(zones=50, parcels=1e6, seed=4)
    rel = np.abs(ranked(big, 2, flat_city) / truth - 1)
    assert rel.mean() < 0.005 and rel.max() < 0.05  # measured 0.001 and 0.027


def test_empty_zones_and_day_types_take_the_city_shape() -> None:
    counts, _ = mixed_counts(zones=6, parcels=500.0, seed=5)
    counts[2] = 0.0  # a zone without any volume in the window
    city_work = counts[:, 0].sum(axis=0) / counts[:, 0].sum()
    out = ranked(counts, 2, np.full(24, 1.0 / 24))
    np.testing.assert_allclose(out[2, 0], city_work * 24)
    assert np.isfinite(out).all()
    # no day off in the window at all: the day-off shape is the fallback's
    no_off = counts.copy()
    no_off[:, 1] = 0.0
    every_day = np.linspace(1.0, 2.0, 24) / np.linspace(1.0, 2.0, 24).sum()
    out = ranked(no_off, 2, every_day)
    np.testing.assert_allclose(out[:, 1], np.tile(every_day * 24, (6, 1)), rtol=1e-9)
    # more patterns asked for than zones hold, and a window without any volume
    one = ranked(counts[:1], 4, every_day)
    np.testing.assert_allclose(one.sum(axis=2), 24.0)
    np.testing.assert_allclose(ranked(np.zeros((3, 2, 24)), 2, every_day)[1, 0], every_day * 24)


def test_the_featurizer_uses_the_rank_of_its_spec() -> None:
    rng = np.random.default_rng(0)
    ts = pd.date_range("2024-03-04", periods=28 * 24, freq="h")
    counts, _ = mixed_counts(zones=12, parcels=20.0, seed=6)
    off = ts.dayofweek >= 5
    rate = np.where(off[None, :], counts[:, 1, ts.hour], counts[:, 0, ts.hour]) / 20 + 0.01
    table = pd.DataFrame(
        {
            s.ZONE_ID: np.repeat([f"z{i:02d}" for i in range(12)], len(ts)),
            s.TS: np.tile(ts, 12),
            s.VOLUME: rng.poisson(rate).ravel().astype(float),
        }
    )
    low = DemandFeaturizer(DemandFeatureSpec.hourly("CN")).fit(table)
    own = DemandFeaturizer(DemandFeatureSpec.hourly("CN", shape_rank=0)).fit(table)
    assert DemandFeatureSpec.hourly().shape_rank == 2
    np.testing.assert_allclose(low.daytype_counts_, own.daytype_counts_)
    fit = low_rank_counts(own.daytype_counts_, 2)
    np.testing.assert_allclose(
        low.daytype_profile_, low_rank_shapes(own.daytype_counts_, fit, own.city_profile_ / 24)
    )
    assert not np.allclose(low.daytype_profile_, own.daytype_profile_)
    # the every-day profile is the same fit's, summed over the day types
    every = fit.sum(axis=1)
    np.testing.assert_allclose(low.zone_profile_, every / every.sum(axis=1, keepdims=True) * 24)
    assert not np.allclose(low.zone_profile_, own.zone_profile_)
    assert DemandFeatureSpec.hourly(day_classes=False).shape_rank == 0
    with pytest.raises(ValueError, match="shape_rank"):
        DemandFeatureSpec.hourly(shape_rank=-1)
    with pytest.raises(ValueError, match="shape_rank"):
        DemandFeatureSpec(freq="h", shape_rank=2)
