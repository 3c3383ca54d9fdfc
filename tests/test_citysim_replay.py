"""citysim.replay: a day rebuilt from its stream is the simulated day, driving it again with the
day's own noise gives back its times from any realised state, and fresh noise varies only the
noise (none left when the noise is switched off)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from citysim import CityConfig, simulate
from citysim.day import Context
from citysim.fleet import build_city
from citysim.replay import FreshNoise, OwnNoise, ReplayDay, drive_from, replay_day
from features import schema as s

CFG = CityConfig(days=3, couriers=12, seed=5, odd=dataclasses.replace(CityConfig().odd, share=0.0))


def _quiet(cfg: CityConfig) -> CityConfig:
    r, sv = cfg.routes, cfg.service
    return dataclasses.replace(
        cfg,
        routes=dataclasses.replace(
            r, detour_sd=0.0, leg_noise_sd=0.0, delay_prob=0.0, intra_building_min=(0.5, 0.5)
        ),
        service=dataclasses.replace(sv, noise_sd=0.0, long_share=0.0),
    )


@pytest.fixture(scope="module")
def ctx() -> Context:
    return Context.create(CFG, build_city(CFG))


@pytest.fixture(scope="module")
def day2(ctx: Context) -> ReplayDay:
    return replay_day(ctx, 2)


def _realised(rd: ReplayDay) -> tuple[np.ndarray, np.ndarray]:
    valid = rd.plan.driven >= 0
    return valid, rd.actual.arrival


def test_a_replayed_day_is_the_simulated_day(day2: ReplayDay) -> None:
    d = simulate(CFG).deliveries
    d = d[d[s.ROUTE_ID].isin(set(rd_ids := day2.route_ids))]
    assert len(d) == len(day2.stop_ids) and set(d[s.ROUTE_ID]) == set(rd_ids)
    table = (d.set_index(s.STOP_ID)[s.ARRIVAL_TIME].astype("int64") - day2.midnight_ns) / 6e10
    route, pos = day2.plan.door.route, day2.position
    replayed = pd.Series(day2.actual.arrival[route, pos], index=day2.stop_ids)
    # the table stores whole seconds
    np.testing.assert_allclose(table[replayed.index], replayed, atol=0.5 / 60 + 1e-9)


def test_own_noise_gives_back_the_day_from_dispatch_and_from_any_stop(
    ctx: Context, day2: ReplayDay
) -> None:
    valid, arrival = _realised(day2)
    n = len(day2.route_ids)
    routes = day2.plan.routes
    again = drive_from(ctx, day2, np.arange(n), np.full(n, -1), routes.dispatch, OwnNoise(day2))
    np.testing.assert_allclose(again[valid], arrival[valid], rtol=0, atol=1e-9)
    assert np.isnan(again[~valid]).all()
    # from the arrival at positions 0, 3, 9 and 20 (second-wave relays included)
    r = np.repeat(np.arange(n), 4)
    k = np.tile([0, 3, 9, 20], n)
    keep = valid[r, k]
    r, k = r[keep], k[keep]
    again = drive_from(ctx, day2, r, k, arrival[r, k], OwnNoise(day2))
    ahead = (np.arange(arrival.shape[1])[None, :] > k[:, None]) & valid[r]
    np.testing.assert_allclose(again[ahead], arrival[r][ahead], rtol=0, atol=1e-9)
    assert np.isnan(again[~ahead]).all()
    assert (day2.plan.door.wave == 1).any()  # the relay at the hub was driven


def test_fresh_noise_varies_the_rest_and_nothing_without_noise(
    ctx: Context, day2: ReplayDay
) -> None:
    valid, arrival = _realised(day2)
    n = len(day2.route_ids)
    start = np.full(n, 5)
    ok = valid[np.arange(n), 5]
    r = np.repeat(np.arange(n)[ok], 200)
    fresh = drive_from(
        ctx, day2, r, start[r], arrival[r, 5], FreshNoise(ctx, day2, np.random.default_rng(0))
    )
    last = valid.sum(axis=1)[r] - 1
    end = fresh[np.arange(len(r)), last].reshape(-1, 200)
    realised = arrival[np.arange(n)[ok], last[::200]]
    assert (end.std(axis=1) > 1.0).all()  # minutes of spread by the end of the route
    pit = (end < realised[:, None]).mean(axis=1)
    assert 0.0 < pit.mean() < 1.0 and (pit > 0.0).any() and (pit < 1.0).any()

    quiet = _quiet(CFG)
    qctx = Context.create(quiet, build_city(quiet))
    qday = replay_day(qctx, 1)
    qvalid, qarrival = _realised(qday)
    m = len(qday.route_ids)
    noise = FreshNoise(qctx, qday, np.random.default_rng(1))
    fresh = drive_from(qctx, qday, np.arange(m), np.full(m, -1), qday.plan.routes.dispatch, noise)
    np.testing.assert_allclose(fresh[qvalid], qarrival[qvalid], rtol=0, atol=1e-9)
