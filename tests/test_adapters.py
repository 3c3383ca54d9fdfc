"""Source adapters: LaDe-D, mapped CSV/Parquet and Changshu orders, on tiny hand-checkable
frames and (where present) the real shared files."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features import schema as s
from features.adapters import changshu as cs
from features.adapters import lade
from features.adapters.tabular import ColumnMapping, load_mapping, read_table
from features.issues import MissingColumnsError

TZ = "Asia/Shanghai"
ROOT = Path(__file__).resolve().parents[1]
STATION = (43.87, 126.56)  # (lat, lng) of a made-up station


def lade_frame(*rows: dict[str, Any]) -> pd.DataFrame:
    """LaDe-D rows: courier 7 on June 1st, accepted at the station at 08:00, delivered at 10:00;
    each dict overrides fields of one row (order ids count from 1)."""
    base: dict[str, Any] = {
        lade.REGION_ID: 31,
        lade.CITY: "Jilin",
        lade.COURIER_ID: 7,
        lade.LNG: 126.50,
        lade.LAT: 43.80,
        lade.AOI_ID: 5,
        lade.AOI_TYPE: 14,
        lade.ACCEPT_TIME: "06-01 08:00:00",
        lade.ACCEPT_GPS_TIME: "06-01 08:00:00",
        lade.ACCEPT_GPS_LNG: STATION[1],
        lade.ACCEPT_GPS_LAT: STATION[0],
        lade.DELIVERY_TIME: "06-01 10:00:00",
        lade.DELIVERY_GPS_TIME: "06-01 10:00:00",
        lade.DELIVERY_GPS_LNG: 126.50,
        lade.DELIVERY_GPS_LAT: 43.80,
        lade.DS: 601,
    }
    records = [{lade.ORDER_ID: i + 1, **base, **row} for i, row in enumerate(rows)]
    return pd.DataFrame(records, columns=list(lade.LADE_COLUMNS))


def local(text: str, tz: str = TZ) -> pd.Timestamp:
    return pd.Timestamp(text, tz=tz)


# --- LaDe-D: mapping to the contract -----------------------------------------------------------


def test_lade_rows_map_to_contract_columns() -> None:
    raw = lade_frame({}, {lade.ACCEPT_GPS_LAT: np.nan, lade.ACCEPT_GPS_LNG: np.nan})
    adapted = lade.lade_frame_to_adapted(raw)
    d = adapted.deliveries
    assert list(d.columns) == [c.name for c in s.DELIVERIES]
    assert d.index.equals(pd.RangeIndex(2)) and adapted.source.index.equals(d.index)
    pd.testing.assert_frame_equal(adapted.source, raw)
    assert d[s.ROUTE_ID].tolist() == ["7-0601", "7-0601"]
    assert d[s.STOP_ID].tolist() == ["1", "2"]
    assert d[s.COURIER_ID].tolist() == ["7", "7"]
    assert d[s.DEPOT_ID].tolist() == ["31", "31"]
    assert d[s.AOI_ID].tolist() == ["5", "5"]
    assert d[s.STOP_TYPE].tolist() == ["aoi_14", "aoi_14"]
    assert d[s.VEHICLE_TYPE].tolist() == [s.VehicleType.UNKNOWN.value] * 2
    assert d[s.PACKAGES].tolist() == [1, 1]
    assert d[s.ZONE_ID].isna().all() and d[s.PLANNED_SEQ].isna().all()
    assert d[s.READY_TIME].tolist() == [local("2021-06-01 08:00")] * 2
    assert d[s.ARRIVAL_TIME].tolist() == [local("2021-06-01 10:00")] * 2
    assert d[s.READY_LAT].iloc[0] == STATION[0] and np.isnan(d[s.READY_LAT].iloc[1])
    assert (d[s.LAT] == 43.80).all() and (d[s.LNG] == 126.50).all()
    assert adapted.issues.counts() == {}


def test_year_and_tz_flags_set_the_timestamps() -> None:
    adapted = lade.lade_frame_to_adapted(lade_frame({}), year=2022, tz="UTC")
    assert adapted.deliveries[s.READY_TIME].iloc[0] == pd.Timestamp("2022-06-01 08:00", tz="UTC")
    assert str(adapted.deliveries[s.ARRIVAL_TIME].dt.tz) == "UTC"


def test_days_beyond_the_shared_range_parse_across_the_new_year() -> None:
    raw = lade_frame(
        {lade.DS: 1231, lade.ACCEPT_TIME: "12-31 20:00:00", lade.DELIVERY_TIME: "01-01 00:30:00"},
        {lade.DS: 101, lade.ACCEPT_TIME: "12-31 23:50:00", lade.DELIVERY_TIME: "01-01 09:00:00"},
    )
    d = lade.lade_frame_to_adapted(raw).deliveries
    assert d[s.ROUTE_ID].tolist() == ["7-1231", "7-0101"]
    assert d[s.READY_TIME].tolist() == [local("2021-12-31 20:00"), local("2020-12-31 23:50")]
    assert d[s.ARRIVAL_TIME].tolist() == [local("2022-01-01 00:30"), local("2021-01-01 09:00")]


def test_unparseable_values_are_recorded_and_the_other_rows_survive() -> None:
    raw = lade_frame(
        {},
        {lade.ACCEPT_TIME: "13-45 99:00:00"},
        {lade.DELIVERY_TIME: "soon"},
        {lade.DS: 9999},
        {lade.LAT: "north"},
        {lade.ACCEPT_GPS_LAT: "n/a"},
    ).astype({lade.LAT: object, lade.ACCEPT_GPS_LAT: object})
    adapted = lade.lade_frame_to_adapted(raw)
    assert adapted.issues.counts() == {
        "arrival_time: unparseable timestamp": 1,
        "lat: not a number": 1,
        "ready_lat: not a number": 1,
        "ready_time: unparseable timestamp": 1,
        lade.MSG_BAD_DS: 1,
    }
    assert adapted.issues.bad.tolist() == [False, True, True, True, True, True]
    d = adapted.deliveries
    assert pd.isna(d[s.READY_TIME].iloc[1]) and pd.isna(d[s.ARRIVAL_TIME].iloc[2])
    assert pd.isna(d[s.ROUTE_ID].iloc[3]) and np.isnan(d[s.LAT].iloc[4])
    assert d[s.DISPATCH_TIME].iloc[0] == local("2021-06-01 08:00")
    assert adapted.source[lade.ACCEPT_TIME].iloc[1] == "13-45 99:00:00"
    assert adapted.source[lade.ACCEPT_GPS_LAT].iloc[5] == "n/a"


def test_missing_lade_columns_raise_naming_them() -> None:
    raw = lade_frame({}).drop(columns=[lade.DS, lade.ACCEPT_TIME, lade.CITY])
    msg = "LaDe frame: missing required column(s): accept_time, ds"
    with pytest.raises(MissingColumnsError, match=re.escape(msg)):
        lade.lade_frame_to_adapted(raw)


def test_csv_gzip_and_parquet_files_adapt_alike(tmp_path: Path) -> None:
    raw = lade_frame({}, {lade.ACCEPT_GPS_LAT: np.nan}, {lade.COURIER_ID: 8, lade.DS: 602})
    raw.to_csv(tmp_path / "city.csv.gz", index=False)
    raw.to_parquet(tmp_path / "city.parquet", index=False)
    from_csv = lade.read_lade(tmp_path / "city.csv.gz")
    from_parquet = lade.read_lade(tmp_path / "city.parquet")
    pd.testing.assert_frame_equal(from_csv.deliveries, from_parquet.deliveries)
    assert from_csv.source[lade.ACCEPT_GPS_LAT].iloc[0] == str(STATION[0])  # CSV stays text
    raw.drop(columns=[lade.ORDER_ID]).to_csv(tmp_path / "x.csv", index=False)
    msg = f"{tmp_path / 'x.csv'}: missing required column(s): order_id"
    with pytest.raises(MissingColumnsError, match=re.escape(msg)):
        lade.read_lade(tmp_path / "x.csv")


def test_visit_order_is_delivery_time_then_numeric_order_id() -> None:
    raw = lade_frame(
        {lade.ORDER_ID: 10, lade.DELIVERY_TIME: "06-01 10:00:00"},
        {lade.ORDER_ID: 9, lade.DELIVERY_TIME: "06-01 10:00:00"},
        {lade.ORDER_ID: 11, lade.DELIVERY_TIME: "06-01 09:00:00"},
        {lade.ORDER_ID: 12, lade.COURIER_ID: 8},
        {lade.ORDER_ID: 13, lade.DELIVERY_TIME: "never"},
    )
    order = lade.visit_order(lade.lade_frame_to_adapted(raw).deliveries)
    assert order.tolist() == [2, 1, 0, 0, pd.NA]


# --- LaDe-D: the dispatch rule -----------------------------------------------------------------


def accepts(*rows: tuple[str, float | None, float | None]) -> pd.DataFrame:
    """One route's accepts as (time 'HH:MM', gps lat, gps lng)."""
    return lade_frame(
        *(
            {
                lade.ACCEPT_TIME: f"06-01 {hhmm}:00",
                lade.ACCEPT_GPS_LAT: np.nan if la is None else la,
                lade.ACCEPT_GPS_LNG: np.nan if lo is None else lo,
                lade.DELIVERY_TIME: "06-01 12:00:00",
            }
            for hhmm, la, lo in rows
        )
    )


def dispatch_of(raw: pd.DataFrame) -> tuple[pd.Timestamp, float, float]:
    d = lade.lade_frame_to_adapted(raw).deliveries
    cols = [s.DISPATCH_TIME, s.DEPOT_LAT, s.DEPOT_LNG]
    assert (d[cols].nunique(dropna=False) == 1).all(), "one dispatch per route"
    t, la, lo = d[cols].iloc[0]
    return t, la, lo


def test_dispatch_is_the_last_accept_within_the_first_hour_inclusive() -> None:
    t, la, lo = dispatch_of(
        accepts(("08:00", 40.0, 120.0), ("09:00", 42.0, 122.0), ("09:01", 50.0, 130.0))
    )
    assert t == local("2021-06-01 09:00")
    assert (la, lo) == (41.0, 121.0)


def test_dispatch_position_ignores_missing_and_zero_gps() -> None:
    raw = accepts(
        ("08:00", 0.0, 0.0), ("08:10", None, None), ("08:20", 0.5, -0.5), ("08:30", 42.0, 122.0)
    )
    t, la, lo = dispatch_of(raw)
    assert t == local("2021-06-01 08:30")
    assert (la, lo) == (42.0, 122.0)
    ready = lade.lade_frame_to_adapted(raw).deliveries[s.READY_LAT]
    assert ready.isna().tolist() == [True, True, True, False]


def test_dispatch_position_falls_back_to_the_whole_day() -> None:
    t, la, lo = dispatch_of(
        accepts(
            ("08:00", None, None),
            ("08:30", 0.0, 0.0),
            ("11:00", 42.0, 122.0),
            ("11:30", 44.0, 124.0),
        )
    )
    assert t == local("2021-06-01 08:30")
    assert (la, lo) == (43.0, 123.0)


def test_dispatch_without_any_gps_keeps_the_time_and_no_position() -> None:
    t, la, lo = dispatch_of(accepts(("08:00", None, None), ("08:45", 0.0, 0.0)))
    assert t == local("2021-06-01 08:45")
    assert np.isnan(la) and np.isnan(lo)


def test_dispatch_points_on_contract_columns_per_route() -> None:
    frame = pd.DataFrame(
        {
            s.ROUTE_ID: ["a", "a", "b", None],
            s.READY_TIME: [local(f"2021-06-01 {h}") for h in ("08:00", "08:30", "07:00", "06:00")],
            s.READY_LAT: [40.0, 42.0, np.nan, 10.0],
            s.READY_LNG: [120.0, 122.0, np.nan, 10.0],
        }
    )
    points = lade.dispatch_points(frame)
    assert points.index.tolist() == ["a", "b"]
    assert points[s.DISPATCH_TIME].tolist() == [
        local("2021-06-01 08:30"),
        local("2021-06-01 07:00"),
    ]
    assert points[s.DEPOT_LAT].tolist()[0] == 41.0 and np.isnan(points[s.DEPOT_LAT].iloc[1])


# --- LaDe-D: the real shared file --------------------------------------------------------------


def test_real_lade_jilin_adapts(lade_jilin_path: Path) -> None:
    adapted = lade.read_lade(lade_jilin_path)
    d, src = adapted.deliveries, adapted.source
    assert len(d) == len(src) == 26_711
    assert d[s.ROUTE_ID].nunique() == len(src[[lade.COURIER_ID, lade.DS]].drop_duplicates())
    assert adapted.issues.bad.mean() < 0.01
    for name in (s.READY_TIME, s.ARRIVAL_TIME, s.DISPATCH_TIME):
        stamps = d[name].dropna()
        assert str(stamps.dt.tz) == TZ
        assert (stamps.dt.year == 2021).all()
        wall = stamps.dt.tz_localize(None)
        assert (
            (wall - stamps.dt.tz_convert("UTC").dt.tz_localize(None))
            .eq(pd.Timedelta(hours=8))
            .all()
        )
    assert (d[s.ARRIVAL_TIME] >= d[s.READY_TIME]).mean() > 0.99
    assert d[s.DISPATCH_TIME].notna().all()
    assert d.groupby(s.ROUTE_ID)[s.DISPATCH_TIME].nunique().eq(1).all()
    assert d[s.DEPOT_LAT].notna().mean() > 0.9


# --- mapped CSV / Parquet ----------------------------------------------------------------------

PARTNER_CSV = """\
tour,driver,shipment,latitude,longitude,start,loaded,delivered,note
t1,anna,p1,52.52,13.40,2024-03-04 08:00,2024-03-04 07:30,2024-03-04 08:40,ok
t1,anna,p2,north,13.41,2024-03-04 08:00,2024-03-04 07:30,yesterday,broken
t1,anna,p3,52.53,13.42,2024-03-04 08:00,2024-03-04 07:30,2024-03-04T09:10+00:00,
"""

PARTNER_MAPPING = """\
columns:
  route_id: tour
  courier_id: driver
  stop_id: shipment
  lat: latitude
  lng: longitude
  dispatch_time: start
  ready_time: loaded
  arrival_time: delivered
constants:
  vehicle_type: bike
timezone: Europe/Berlin
"""


@pytest.fixture()
def partner(tmp_path: Path) -> tuple[Path, ColumnMapping]:
    (tmp_path / "mapping.yaml").write_text(PARTNER_MAPPING, encoding="utf-8")
    (tmp_path / "partner.csv").write_text(PARTNER_CSV, encoding="utf-8")
    return tmp_path / "partner.csv", load_mapping(tmp_path / "mapping.yaml")


def test_mapped_csv_renames_adds_constants_and_keeps_garbage_verbatim(
    partner: tuple[Path, ColumnMapping],
) -> None:
    path, mapping = partner
    adapted = read_table(path, fmt="csv", mapping=mapping, tz=TZ)
    d = adapted.deliveries
    assert list(d.columns) == [c.name for c in s.DELIVERIES]
    assert d[s.STOP_ID].tolist() == ["p1", "p2", "p3"]
    assert d[s.VEHICLE_TYPE].tolist() == ["bike"] * 3
    berlin = "Europe/Berlin"  # the mapping's zone wins over tz=
    assert d[s.ARRIVAL_TIME].iloc[0] == pd.Timestamp("2024-03-04 08:40", tz=berlin)
    assert d[s.ARRIVAL_TIME].iloc[2] == pd.Timestamp("2024-03-04 10:10", tz=berlin)
    assert adapted.issues.counts() == {
        "arrival_time: unparseable timestamp": 1,
        "lat: not a number": 1,
    }
    assert adapted.issues.bad.tolist() == [False, True, False]
    assert adapted.source.iloc[1].tolist() == [
        "t1", "anna", "p2", "north", "13.41", "2024-03-04 08:00", "2024-03-04 07:30", "yesterday",
        "broken",
    ]  # fmt: skip
    assert pd.isna(adapted.source["note"].iloc[2])  # an empty cell is null, not ""


def test_gzip_csv_is_recognised_by_content(partner: tuple[Path, ColumnMapping]) -> None:
    path, mapping = partner
    packed = path.with_name("packed.csv")  # no .gz suffix: sniffed from the bytes
    packed.write_bytes(gzip.compress(path.read_bytes()))
    plain = read_table(path, fmt="csv", mapping=mapping, tz=TZ)
    pd.testing.assert_frame_equal(
        read_table(packed, fmt="csv", mapping=mapping, tz=TZ).deliveries, plain.deliveries
    )


def test_parquet_is_read_as_stored_with_contract_names(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            s.ROUTE_ID: ["r1"],
            s.COURIER_ID: ["c1"],
            s.STOP_ID: ["s1"],
            s.LAT: [43.8],
            s.LNG: [126.5],
            s.DISPATCH_TIME: [pd.Timestamp("2021-06-01 08:00")],
            s.READY_TIME: [pd.Timestamp("2021-06-01 08:00")],
            s.ARRIVAL_TIME: [pd.Timestamp("2021-06-01 00:30", tz="UTC")],
        }
    )
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    d = read_table(tmp_path / "d.parquet", fmt="parquet", tz=TZ).deliveries
    assert d[s.DISPATCH_TIME].iloc[0] == local("2021-06-01 08:00")  # naive: local time in tz
    assert d[s.ARRIVAL_TIME].iloc[0] == local("2021-06-01 08:30")  # aware: converted


def test_missing_contract_columns_name_the_source_columns_looked_for(
    partner: tuple[Path, ColumnMapping],
) -> None:
    path, _ = partner
    mapping = ColumnMapping(
        columns={s.ROUTE_ID: "tour", s.COURIER_ID: "driver", s.STOP_ID: "shipment",
                 s.LAT: "latitude", s.LNG: "longitude", s.DISPATCH_TIME: "start",
                 s.ARRIVAL_TIME: "arrived", s.DEPOT_ID: "hub"}
    )  # fmt: skip
    msg = (
        f"{path}: missing required column(s): arrival_time (source column 'arrived'), "
        "depot_id (source column 'hub'), ready_time"
    )
    with pytest.raises(MissingColumnsError, match=re.escape(msg)):
        read_table(path, fmt="csv", mapping=mapping, tz=TZ)


def test_unknown_names_in_a_mapping_are_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=re.escape("mapping: unknown contract column(s): eta, speed")
    ):
        ColumnMapping(columns={"eta": "x", s.LAT: "y"}, constants={"speed": 3})
    (tmp_path / "m.yaml").write_text("colums:\n  lat: y\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape("mapping: unknown key(s) colums")):
        load_mapping(tmp_path / "m.yaml")
    with pytest.raises(ValueError, match=re.escape("mapping: unknown timezone 'Mars/Base'")):
        ColumnMapping(timezone="Mars/Base")


def test_example_mapping_loads() -> None:
    mapping = load_mapping(ROOT / "configs" / "mappings" / "example.yaml")
    assert set(s.REQUIRED_DELIVERY_COLUMNS) <= set(mapping.columns)
    assert mapping.constants == {s.VEHICLE_TYPE: s.VehicleType.BIKE.value}


# --- Changshu orders ---------------------------------------------------------------------------

CHANGSHU_CSV = """\
user_id,grid_x,grid_y,date,is_redelivered
u1,0,3,2024-08-30,0
u2,0,3,2024-08-30,1
u3,0,3,2024-08-31,0
u4,2,1,2024-08-30,0
u5,2,1,2024-09-01,0
u6,,1,2024-08-30,0
u7,2,x,2024-08-30,0
u8,2,1,30/08/2024,0
"""


def test_changshu_counts_orders_per_cell_and_day(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(CHANGSHU_CSV, encoding="utf-8")
    read = cs.read_changshu(path)
    expected = pd.DataFrame(
        {
            s.ZONE_ID: pd.array(["g0_3", "g0_3", "g2_1"], dtype="string"),
            s.TS: pd.to_datetime(["2024-08-30", "2024-08-31", "2024-08-30"]).astype(
                "datetime64[ns]"
            ),
            s.VOLUME: [2.0, 1.0, 1.0],
        }
    )
    pd.testing.assert_frame_equal(read.demand, expected)
    assert read.rejected["user_id"].tolist() == ["u6", "u7", "u8"]
    assert read.rejected[s.REASON].tolist() == [
        "grid_x: missing",
        "grid_y: not a non-negative integer",
        "date: unparseable date",
    ]
    assert read.rejected["date"].iloc[2] == "30/08/2024"  # as it came
    assert (read.n_rows, read.n_after_last_date) == (8, 1)
    assert read.n_rows == read.demand[s.VOLUME].sum() + len(read.rejected) + read.n_after_last_date


def test_changshu_missing_columns_raise(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("user_id,grid_x\nu1,0\n", encoding="utf-8")
    msg = f"{path}: missing required column(s): date, grid_y"
    with pytest.raises(MissingColumnsError, match=re.escape(msg)):
        cs.read_changshu(path)


def test_real_changshu_daily_demand(changshu_path: Path) -> None:
    read = cs.read_changshu(changshu_path)
    demand = read.demand
    dates = pd.read_csv(changshu_path, usecols=[cs.DATE])[cs.DATE]
    assert read.n_rows == len(dates)
    assert demand[s.ZONE_ID].nunique() <= 52
    assert demand[s.TS].max() <= pd.Timestamp("2024-08-31")
    assert demand[s.VOLUME].sum() == (dates <= "2024-08-31").sum()
    assert len(read.rejected) == 0
    assert not demand.duplicated([s.ZONE_ID, s.TS]).any()
    assert (demand[s.TS] == demand[s.TS].dt.normalize()).all()
