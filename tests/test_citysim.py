"""The synthetic city: API, determinism, the contract, and that each modelled effect shows.

Statistical checks use small seeded cities and thresholds with a wide margin; they pin effects,
never exact outputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from citysim import CityConfig, SimResult, simulate, simulate_to_parquet
from citysim.city import BUSINESS_SHARE
from citysim.days import build_calendar
from doorstep.config import load_yaml
from features import schema as s
from features import validate as v
from features.coerce import coerce_deliveries
from features.demand import validate_demand
from features.geo import haversine_km
from features.ingest import ingest_frame
from features.issues import Issues
from features.zones import h3_cells

ROOT = Path(__file__).resolve().parents[1]
# Five weeks around Labour Day (2021-05-01..05): weekdays, weekends, a holiday break.
MAIN = CityConfig(days=35, couriers=40, seed=3, start_date="2021-04-19")
TINY = CityConfig(days=3, couriers=12, seed=5)


def without_odd(cfg: CityConfig) -> CityConfig:
    return dataclasses.replace(cfg, odd=dataclasses.replace(cfg.odd, share=0.0))


@pytest.fixture(scope="module")
def city() -> SimResult:
    return simulate(MAIN)


@pytest.fixture(scope="module")
def clean() -> SimResult:
    """The same city without the odd records (they are drawn last, so all else is equal)."""
    return simulate(without_odd(MAIN))


def minutes(delta: pd.Series) -> pd.Series:
    return delta.dt.total_seconds() / 60.0


def legs(d: pd.DataFrame) -> pd.DataFrame:
    """Consecutive stops of a route in driven order: km, minutes, start hour, same building."""
    a = d.sort_values([s.ROUTE_ID, s.ARRIVAL_TIME], kind="stable").reset_index(drop=True)
    prev = a.shift(1)
    same_route = (a[s.ROUTE_ID] == prev[s.ROUTE_ID]).fillna(False).to_numpy(dtype=bool)
    # A second-wave stop after a first-wave one starts at the hub, not at the previous stop.
    same_wave = (a[s.READY_TIME] == prev[s.READY_TIME]).fillna(False).to_numpy(dtype=bool)
    out = pd.DataFrame(
        {
            "courier": a[s.COURIER_ID],
            "vehicle": a[s.VEHICLE_TYPE],
            "day": a[s.DISPATCH_TIME].dt.tz_localize(None).dt.normalize(),
            "km": haversine_km(prev[s.LAT], prev[s.LNG], a[s.LAT], a[s.LNG]),
            "min": minutes(a[s.ARRIVAL_TIME] - prev[s.DEPARTURE_TIME]),
            "start_hour": prev[s.DEPARTURE_TIME].dt.hour + prev[s.DEPARTURE_TIME].dt.minute / 60,
            "same_aoi": (a[s.AOI_ID] == prev[s.AOI_ID]).fillna(False).to_numpy(dtype=bool),
            "window": a[s.WINDOW_START].notna().to_numpy(),
        }
    )
    return out[same_route & same_wave]


# --- API, configuration, determinism ---------------------------------------------------------


def test_yaml_spells_out_the_defaults() -> None:
    assert load_yaml(CityConfig, ROOT / "configs" / "simulate.yaml") == CityConfig()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"days": 0}, "days: must be >= 1, got 0"),
        ({"couriers": 0}, "couriers: must be in 1..99999, got 0"),
        ({"start_date": "12/04/2021"}, "start_date: expected YYYY-MM-DD, got '12/04/2021'"),
    ],
)
def test_bad_config_is_rejected(change: dict[str, Any], message: str) -> None:
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(CityConfig(), **change)


def test_same_seed_same_city_other_seed_other_city() -> None:
    a, b = simulate(TINY), simulate(TINY)
    pd.testing.assert_frame_equal(a.deliveries, b.deliveries)
    pd.testing.assert_frame_equal(a.demand, b.demand)
    c = simulate(dataclasses.replace(TINY, seed=TINY.seed + 1))
    assert not a.deliveries[s.LAT].equals(c.deliveries[s.LAT])
    assert not a.demand[s.VOLUME].equals(c.demand[s.VOLUME])


def test_a_day_does_not_depend_on_how_many_days_follow() -> None:
    short = simulate(dataclasses.replace(TINY, days=2)).deliveries
    long = simulate(TINY).deliveries
    pd.testing.assert_frame_equal(short, long.iloc[: len(short)])


@pytest.mark.parametrize("partition", [True, False])
def test_streaming_to_parquet_writes_the_same_city(tmp_path: Path, partition: bool) -> None:
    seen: list[tuple[int, int]] = []
    summary = simulate_to_parquet(
        TINY, tmp_path, partition_by_date=partition, progress=lambda d, n: seen.append((d, n))
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    mem = simulate(TINY)
    disk = pd.read_parquet(summary.deliveries)
    if partition:
        assert sorted(p.parent.name for p in Path(summary.deliveries).rglob("*.parquet")) == [
            f"{s.ROUTE_DATE}=2021-04-1{d}" for d in (2, 3, 4)
        ]
        disk = disk.drop(columns=s.ROUTE_DATE)
    pd.testing.assert_frame_equal(disk, mem.deliveries)
    pd.testing.assert_frame_equal(pd.read_parquet(summary.demand), mem.demand)
    assert summary.stops == len(mem.deliveries)
    assert summary.demand_rows == len(mem.demand)
    assert summary.parcels == simulate(without_odd(TINY)).deliveries[s.PACKAGES].sum()


# --- the data contract -------------------------------------------------------------------------


def test_deliveries_have_exactly_the_contract_columns_and_dtypes(city: SimResult) -> None:
    d = city.deliveries
    assert list(d.columns) == [c.name for c in s.DELIVERIES]
    for col in s.DELIVERIES:
        assert d[col.name].dtype == s.pandas_dtype(col, MAIN.tz), col.name
    recoerced = coerce_deliveries(d, MAIN.tz, Issues(len(d)))
    pd.testing.assert_frame_equal(recoerced, d)
    for name in s.REQUIRED_DELIVERY_COLUMNS:
        assert d[name].notna().all(), name


def test_demand_table_is_a_full_hourly_grid(city: SimResult) -> None:
    dem = city.demand
    assert list(dem.columns) == [c.name for c in s.DEMAND]
    assert dem[s.ZONE_ID].dtype == "string" and dem[s.TS].dtype == "datetime64[ns]"
    assert len(dem) == len(city.city.zones) * MAIN.days * 24
    assert (dem[s.TS].dt.floor("h") == dem[s.TS]).all() and (dem[s.VOLUME] >= 0).all()
    assert validate_demand(dem, "h").quarantine.empty


def test_ids_zones_sequences_and_labels(clean: SimResult) -> None:
    d = clean.deliveries
    assert d[s.STOP_ID].is_unique
    assert (h3_cells(d[s.LAT], d[s.LNG], MAIN.h3_resolution) == d[s.ZONE_ID]).all()
    assert set(d[s.ZONE_ID]) <= set(clean.city.zones[s.ZONE_ID])
    by_route = d.groupby(s.ROUTE_ID)
    assert (by_route[s.COURIER_ID].nunique() == 1).all()
    assert (by_route[s.DISPATCH_TIME].nunique() == 1).all()
    seq = d[s.PLANNED_SEQ].astype(int)
    assert (
        by_route[s.PLANNED_SEQ].transform("max").astype(int) + 1
        == by_route[s.STOP_ID].transform("size")
    ).all()
    assert (seq.groupby(d[s.ROUTE_ID]).nunique() == by_route.size()).all()
    assert set(d[s.VEHICLE_TYPE]) <= {t.value for t in s.VehicleType}
    assert set(d[s.STOP_TYPE]) <= {t.value for t in s.StopType}
    assert (d[s.PACKAGES] >= 1).all()
    assert (d[s.ARRIVAL_TIME] >= d[s.READY_TIME]).all()
    assert (d[s.DEPARTURE_TIME] > d[s.ARRIVAL_TIME]).all()
    assert (d[s.AOI_ID].value_counts() > 1).mean() > 0.5  # buildings take several parcels


def test_clean_city_passes_validation_entirely(clean: SimResult) -> None:
    """Realistic oddities (long service, afternoon routes, waits) are valid: no false alarms."""
    result = ingest_frame(clean.deliveries, MAIN.tz)
    assert result.counts == {}
    d = clean.deliveries
    assert (minutes(d[s.DEPARTURE_TIME] - d[s.ARRIVAL_TIME]) > 20).sum() > 0
    assert d.drop_duplicates(s.ROUTE_ID)[s.DISPATCH_TIME].dt.hour.ge(13).sum() > 0


def test_odd_records_are_caught_by_validation_at_the_configured_share(
    city: SimResult, clean: SimResult
) -> None:
    result = ingest_frame(city.deliveries, MAIN.tz)
    for message in (
        v.MSG_COORD_ZERO,
        v.MSG_ARRIVAL_BEFORE_READY,
        v.MSG_DUP_EXACT,
        v.MSG_DUP_CONFLICT,
        v.MSG_SPEED.format(kmh=v.ValidationConfig().max_speed_kmh),
    ):
        assert result.counts.get(message, 0) > 0, message
    n_clean = len(clean.deliveries)
    extra_rows = len(city.deliveries) - n_clean  # the duplicates
    odd_rows = result.n_quarantined - extra_rows // 2  # a re-scan quarantines its original too
    assert 0.5 * MAIN.odd.share < odd_rows / n_clean < 2.0 * MAIN.odd.share
    assert result.n_valid >= n_clean * (1 - 3 * MAIN.odd.share)


# --- demand --------------------------------------------------------------------------------------


def daily_volume(dem: pd.DataFrame) -> pd.Series:
    return dem.groupby(dem[s.TS].dt.normalize())[s.VOLUME].sum()


def test_daily_and_weekly_seasonality_and_holidays(city: SimResult) -> None:
    dem = city.demand
    hourly = dem.groupby(dem[s.TS].dt.hour)[s.VOLUME].sum()
    assert hourly[[10, 11]].mean() > 5 * hourly[[2, 3, 4]].mean()

    cal = build_calendar(MAIN)
    kind = pd.Series(
        np.where(cal.holiday, "holiday", np.where(cal.weekend_like, "weekend", "workday")),
        index=pd.to_datetime(list(cal.dates)),
    )
    zones = city.city.zones.set_index(s.ZONE_ID)[BUSINESS_SHARE]
    business, homes = zones[zones >= 0.5].index, zones[zones < 0.05].index
    assert len(business) > 10 and len(homes) > 10

    def daily(sel: pd.Index) -> pd.Series:
        return daily_volume(dem[dem[s.ZONE_ID].isin(sel)])

    def per_kind(series: pd.Series) -> pd.Series:
        return series.groupby(kind.reindex(series.index)).mean()

    biz, everyone = per_kind(daily(business)), per_kind(daily(zones.index))
    assert biz["workday"] > 1.3 * biz["weekend"]  # offices are quiet at weekends
    # Households shop at weekends: relative to offices (the city-wide day shock cancels).
    home_vs_biz = per_kind(daily(homes) / daily(business))
    assert home_vs_biz["weekend"] > 1.5 * home_vs_biz["workday"]
    assert everyone["holiday"] < 0.7 * everyone["workday"]


def test_demand_shock_persists_across_days() -> None:
    """Log daily totals, less calendar effects, are autocorrelated (the AR(1) shock)."""
    cfg = CityConfig(days=150, couriers=15, seed=5, start_date="2021-03-01")
    res = simulate(cfg)
    daily = daily_volume(res.demand)
    cal = build_calendar(cfg)
    i = slice(1, None)  # the calendar's first day is the eve
    x = pd.get_dummies(pd.Series(cal.dow[i]).astype(str), dtype=float)
    x["holiday"], x["rebound"] = cal.holiday[i].astype(float), cal.rebound[i].astype(float)
    x["promo"], x["t"] = np.log(cal.promo[i]), np.arange(cfg.days) / cfg.days
    y = np.log(daily.to_numpy())
    beta, *_ = np.linalg.lstsq(x.to_numpy(), y, rcond=None)
    resid = y - x.to_numpy() @ beta
    assert np.corrcoef(resid[:-1], resid[1:])[0, 1] > 0.3


def test_deliveries_come_from_the_same_orders_as_demand(clean: SimResult) -> None:
    """Parcels delivered on day d = orders placed from d-1 at the cutoff to d at the cutoff."""
    d, dem = clean.deliveries, clean.demand
    cutoff = pd.Timedelta(hours=MAIN.routes.cutoff_hour)
    delivery_day = (dem[s.TS] + (pd.Timedelta(days=1) - cutoff)).dt.normalize()
    orders = dem.groupby(delivery_day)[s.VOLUME].sum()
    parcels = d.groupby(d[s.DISPATCH_TIME].dt.tz_localize(None).dt.normalize())[s.PACKAGES].sum()
    days = parcels.index[1:]  # day 0 also delivers the eve's orders, outside the table
    np.testing.assert_array_equal(parcels[days].to_numpy(), orders[days].to_numpy())
    stops_per_route = d.groupby(d[s.DISPATCH_TIME].dt.tz_localize(None).dt.normalize()).apply(
        lambda g: len(g) / g[s.ROUTE_ID].nunique()
    )
    assert np.corrcoef(orders[days], stops_per_route[days])[0, 1] > 0.7  # busy days, long routes


# --- routes and times ----------------------------------------------------------------------------


def test_route_scale_is_realistic(clean: SimResult) -> None:
    d = clean.deliveries
    sizes = d.groupby(s.ROUTE_ID).size()
    assert 20 <= sizes.median() <= 45
    service = minutes(d[s.DEPARTURE_TIME] - d[s.ARRIVAL_TIME])
    assert 2 <= service.median() <= 6
    eta = minutes(d[s.ARRIVAL_TIME] - d[s.READY_TIME])
    assert 30 <= eta.median() <= 150 and eta.quantile(0.99) < 6 * 60
    lg = legs(d)
    assert lg["same_aoi"].mean() > 0.15  # apartment blocks: consecutive stops in one building
    assert lg.loc[lg["same_aoi"], "min"].median() < 1.5
    assert 1 <= lg.loc[~lg["same_aoi"], "min"].median() <= 8
    second = d[s.READY_TIME] > d[s.DISPATCH_TIME]
    assert 0.15 < second.mean() < 0.45  # the noon wave
    assert (d.loc[second, s.READY_LAT] != d.loc[second, s.DEPOT_LAT]).all()


def test_rush_hour_legs_are_slower_per_km(clean: SimResult) -> None:
    cal = build_calendar(MAIN)
    offday = pd.Series(cal.weekend_like, index=pd.to_datetime(list(cal.dates)))
    lg = legs(clean.deliveries)
    lg = lg[(lg["km"] > 0.4) & (lg["km"] < 2.5) & ~lg["same_aoi"] & ~lg["window"]]
    lg = lg[~offday.reindex(lg["day"]).to_numpy()]
    lg = lg.assign(pace=lg["min"] / lg["km"])
    # Paired by courier: slow couriers are still out at eleven, fast ones are not.
    rush = lg[(lg["start_hour"] >= 7.5) & (lg["start_hour"] < 9)].groupby("courier")["pace"]
    calm = lg[(lg["start_hour"] >= 10) & (lg["start_hour"] < 11.5)].groupby("courier")["pace"]
    assert (rush.median() / calm.median()).median() > 1.1


def test_service_grows_with_parcels(clean: SimResult) -> None:
    d = clean.deliveries
    service = minutes(d[s.DEPARTURE_TIME] - d[s.ARRIVAL_TIME])
    for kind in (s.StopType.RESIDENTIAL, s.StopType.BUSINESS):
        one = service[(d[s.STOP_TYPE] == kind) & (d[s.PACKAGES] == 1)].median()
        more = service[(d[s.STOP_TYPE] == kind) & (d[s.PACKAGES] >= 2)].median()
        assert more > one + 0.3, kind


def test_courier_pace_persists_across_days(clean: SimResult) -> None:
    lg = legs(clean.deliveries)
    lg = lg[(lg["km"] > 0.3) & ~lg["same_aoi"] & ~lg["window"]].copy()
    lg["rel"] = (
        lg["min"]
        / lg["km"]
        / lg.groupby("vehicle")["min"].transform("sum")
        * lg.groupby("vehicle")["km"].transform("sum")
    )
    half = lg["day"] < lg["day"].min() + pd.Timedelta(days=MAIN.days // 2)
    first = lg[half].groupby("courier")["rel"].median()
    second = lg[~half].groupby("courier")["rel"].median()
    both = pd.concat([first, second], axis=1, join="inner")
    assert both.corr(method="spearman").iloc[0, 1] > 0.5


def test_planned_arrival_is_a_beatable_baseline(clean: SimResult) -> None:
    """Scaling the plan by each courier's own past ratio already beats the plan clearly."""
    d = clean.deliveries
    eta = minutes(d[s.ARRIVAL_TIME] - d[s.READY_TIME])
    plan = minutes(d[s.PLANNED_ARRIVAL] - d[s.READY_TIME]).clip(lower=1.0)
    day = d[s.DISPATCH_TIME].dt.tz_localize(None).dt.normalize()
    past = day < day.min() + pd.Timedelta(days=MAIN.days // 2)
    ratio = (
        eta[past].groupby(d[s.COURIER_ID][past]).sum()
        / plan[past].groupby(d[s.COURIER_ID][past]).sum()
    )
    informed = plan[~past] * d[s.COURIER_ID][~past].map(ratio).astype(float).fillna(ratio.median())
    plan_mae = (plan[~past] - eta[~past]).abs().mean()
    informed_mae = (informed - eta[~past]).abs().mean()
    assert informed_mae < 0.8 * plan_mae
    assert plan_mae > 5  # the plan is naive, not the truth


def test_customer_windows_are_sometimes_waited_for(clean: SimResult) -> None:
    d = clean.deliveries
    has = d[s.WINDOW_START].notna()
    assert 0.05 < has.mean() < 0.2
    assert (d.loc[has, s.WINDOW_END] > d.loc[has, s.WINDOW_START]).all()
    waited = (d[s.ARRIVAL_TIME] == d[s.WINDOW_START]) & has
    assert waited.sum() > 10
    assert (d.loc[has, s.ARRIVAL_TIME] >= d.loc[has, s.WINDOW_START]).mean() > 0.5


def test_intensity_factors_are_what_the_demand_table_is_drawn_from(city: SimResult) -> None:
    """``zone_hour_intensity`` (what benchmarks/demand_floor.py reads) is the rate the table's
    counts come from: the same day's stream continued by a Poisson draw gives the table."""
    from citysim.day import Context, day_rng
    from citysim.demand import zone_hour_intensity

    ctx = Context.create(MAIN, city.city)
    day = 12  # 2021-05-01, inside the Labour Day break
    rng = day_rng(MAIN, day)
    parts = zone_hour_intensity(MAIN, ctx.model, ctx.cal, day, rng)
    counts = rng.poisson(parts.lam)
    date = pd.Timestamp(str(ctx.cal.dates[ctx.cal.index(day)]))
    dem = city.demand[city.demand[s.TS].dt.normalize() == date]
    zones = city.city.zones[s.ZONE_ID].astype(str)
    table = dem.assign(z=dem[s.ZONE_ID].astype(str), h=dem[s.TS].dt.hour).pivot(
        index="z", columns="h", values=s.VOLUME
    )
    np.testing.assert_array_equal(table.reindex(zones).to_numpy(), counts)
    assert ctx.cal.holiday[ctx.cal.index(day)]
    assert parts.lam.shape == (len(zones), 24) and (parts.noise > 0).all()
    np.testing.assert_allclose(parts.gamma.mean(), 1.0, atol=0.05)  # the mixing has mean 1
