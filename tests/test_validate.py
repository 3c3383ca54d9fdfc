"""Validation keeps good rows, quarantines bad ones with every reason, and pins its messages."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from features import schema as s
from features import validate as v
from features.ingest import ingest_frame
from features.issues import MissingColumnsError

TZ = "Asia/Shanghai"


def route(
    n: int = 5, route_id: str = "r1", courier: str = "c1", start: str = "2021-06-01 09:00"
) -> pd.DataFrame:
    """A plausible route: stops ~300 m apart, 6 minutes apart, all ready at dispatch."""
    t0 = pd.Timestamp(start, tz=TZ)
    arrivals = [t0 + pd.Timedelta(minutes=10 + 6 * i) for i in range(n)]
    return pd.DataFrame(
        {
            s.ROUTE_ID: route_id,
            s.COURIER_ID: courier,
            s.STOP_ID: [f"{route_id}-s{i}" for i in range(n)],
            s.LAT: 43.80 + 0.0027 * np.arange(n),
            s.LNG: 126.50 + np.zeros(n),
            s.DISPATCH_TIME: t0,
            s.READY_TIME: t0,
            s.ARRIVAL_TIME: arrivals,
            s.PACKAGES: 1,
        }
    )


def test_clean_routes_pass_untouched() -> None:
    frame = pd.concat([route(), route(route_id="r2", courier="c2")], ignore_index=True)
    result = ingest_frame(frame, TZ)
    assert result.n_valid == 10
    assert result.n_quarantined == 0
    assert result.counts == {}
    assert result.deliveries[s.ZONE_ID].notna().all()
    assert list(result.deliveries.columns) == [c.name for c in s.DELIVERIES]


def test_missing_required_columns_is_an_error_naming_them() -> None:
    frame = route().drop(columns=[s.ARRIVAL_TIME, s.LAT])
    msg = "deliveries frame: missing required column(s): arrival_time, lat"
    with pytest.raises(MissingColumnsError, match=re.escape(msg)):
        ingest_frame(frame, TZ)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (s.LAT, 95.0, v.MSG_COORD_RANGE),
        (s.LNG, -200.0, v.MSG_COORD_RANGE),
        (s.LAT, np.nan, v.MSG_MISSING.format(column=s.LAT)),
        (s.ARRIVAL_TIME, pd.NaT, v.MSG_MISSING.format(column=s.ARRIVAL_TIME)),
        (s.PACKAGES, 0, v.MSG_PACKAGES),
    ],
)
def test_single_bad_value_is_quarantined_with_pinned_reason(
    column: str, value: object, message: str
) -> None:
    frame = route()
    frame[column] = frame[column].astype(object)
    frame.loc[2, column] = value
    result = ingest_frame(frame, TZ)
    assert result.n_valid == 4
    assert result.quarantine[s.REASON].tolist() == [message]
    assert result.quarantine[s.STOP_ID].tolist() == ["r1-s2"]


def test_zero_island_coordinates() -> None:
    frame = route()
    frame.loc[1, [s.LAT, s.LNG]] = [0.0, 0.0]
    result = ingest_frame(frame, TZ)
    assert result.quarantine[s.REASON].tolist() == ["lat/lng: at (0, 0), a missing-GPS placeholder"]
    assert result.n_valid == 4


def test_arrival_before_ready() -> None:
    frame = route()
    frame.loc[3, s.READY_TIME] = frame.loc[3, s.ARRIVAL_TIME] + pd.Timedelta(minutes=5)
    result = ingest_frame(frame, TZ)
    assert result.quarantine[s.REASON].tolist() == ["arrival_time: before ready_time"]


def test_every_reason_is_reported_not_only_the_first() -> None:
    frame = route()
    frame[s.PACKAGES] = frame[s.PACKAGES].astype(object)
    frame.loc[0, s.READY_TIME] = frame.loc[0, s.ARRIVAL_TIME] + pd.Timedelta(minutes=5)
    frame.loc[0, s.PACKAGES] = -1
    frame.loc[0, s.LAT] = 91.0
    result = ingest_frame(frame, TZ)
    reasons = set(result.quarantine[s.REASON].iloc[0].split("; "))
    assert reasons == {v.MSG_COORD_RANGE, v.MSG_ARRIVAL_BEFORE_READY, v.MSG_PACKAGES}
    assert result.counts == {v.MSG_ARRIVAL_BEFORE_READY: 1, v.MSG_COORD_RANGE: 1, v.MSG_PACKAGES: 1}


def test_unparseable_values_keep_the_row_verbatim_in_quarantine() -> None:
    frame = route().astype({s.ARRIVAL_TIME: object, s.LAT: object})
    frame.loc[1, s.ARRIVAL_TIME] = "yesterday-ish"
    frame.loc[2, s.LAT] = "north"
    result = ingest_frame(frame, TZ)
    q = result.quarantine.set_index(s.STOP_ID)
    assert q.loc["r1-s1", s.REASON] == "arrival_time: unparseable timestamp"
    assert q.loc["r1-s1", s.ARRIVAL_TIME] == "yesterday-ish"
    assert q.loc["r1-s2", s.REASON] == "lat: not a number"
    assert q.loc["r1-s2", s.LAT] == "north"
    assert result.n_valid == 3


def test_exact_duplicates_keep_one_copy() -> None:
    frame = route()
    frame = pd.concat([frame, frame.iloc[[2, 2]]], ignore_index=True)
    result = ingest_frame(frame, TZ)
    assert result.n_valid == 5
    assert result.quarantine[s.REASON].tolist() == [v.MSG_DUP_EXACT] * 2
    assert result.deliveries[s.STOP_ID].is_unique


def test_conflicting_duplicates_are_all_quarantined() -> None:
    frame = route()
    twin = frame.iloc[[2]].copy()
    twin[s.PACKAGES] = 3
    frame = pd.concat([frame, twin, frame.iloc[[2]]], ignore_index=True)
    result = ingest_frame(frame, TZ)
    assert result.n_valid == 4
    assert result.quarantine[s.REASON].tolist() == [v.MSG_DUP_CONFLICT] * 3
    assert "r1-s2" not in set(result.deliveries[s.STOP_ID])


def test_gps_teleport_flags_only_the_outlier() -> None:
    frame = route(7)
    frame.loc[3, s.LAT] = 44.5  # ~75 km away, 6 minutes after and before its neighbours
    result = ingest_frame(frame, TZ)
    message = v.MSG_SPEED.format(kmh=120)
    assert message == "arrival_time: impossible speed from the previous stop (> 120 km/h)"
    assert result.quarantine[s.STOP_ID].tolist() == ["r1-s3"]
    assert result.quarantine[s.REASON].tolist() == [message]


def test_route_with_two_couriers_is_quarantined() -> None:
    frame = route()
    frame.loc[4, s.COURIER_ID] = "c9"
    result = ingest_frame(frame, TZ)
    assert result.n_valid == 0
    assert set(result.quarantine[s.REASON]) == {v.MSG_ROUTE_COURIERS}


def test_one_percent_bad_rows_are_ingested_not_rejected() -> None:
    frames = [route(20, route_id=f"r{i}", courier=f"c{i % 7}") for i in range(50)]
    frame = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(0)
    bad = rng.choice(len(frame), size=10, replace=False)
    frame.loc[bad, s.LAT] = 123.0
    result = ingest_frame(frame, TZ)
    assert result.n_input == 1000
    assert result.n_quarantined == 10
    assert result.n_valid == 990
    assert result.counts == {v.MSG_COORD_RANGE: 10}


def test_timestamps_are_tz_aware_in_the_data_zone() -> None:
    frame = route().astype({s.ARRIVAL_TIME: str, s.READY_TIME: str, s.DISPATCH_TIME: str})
    frame[s.ARRIVAL_TIME] = frame[s.ARRIVAL_TIME].str.replace("+08:00", "", regex=False)
    result = ingest_frame(frame, TZ)
    arrival = result.deliveries[s.ARRIVAL_TIME]
    assert str(arrival.dt.tz) == TZ
    assert arrival.iloc[0] == pd.Timestamp("2021-06-01 09:10", tz=TZ)
