"""The demand table contract: validation with quarantine, zero periods inside a zone's span."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from features import schema as s
from features.demand import (
    complete_demand,
    demand_from_deliveries,
    validate_demand,
)
from features.issues import MissingColumnsError


def raw(rows: list[tuple[object, object, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[s.ZONE_ID, s.TS, s.VOLUME], dtype=object)


def test_missing_period_inside_span_is_zero_but_not_outside() -> None:
    table = raw([("a", "2024-01-01", "3"), ("a", "2024-01-04", "1"), ("b", "2024-01-03", "2")])
    read = validate_demand(table, "d")
    a = read.table[read.table[s.ZONE_ID] == "a"]
    assert a[s.VOLUME].tolist() == [3.0, 0.0, 0.0, 1.0]
    b = read.table[read.table[s.ZONE_ID] == "b"]
    assert b[s.TS].tolist() == [pd.Timestamp("2024-01-03")]  # b starts late: no zeros before it
    assert read.quarantine.empty


def test_hourly_completion() -> None:
    table = pd.DataFrame(
        {
            s.ZONE_ID: ["z", "z"],
            s.TS: pd.to_datetime(["2024-01-01 08:00", "2024-01-01 11:00"]),
            s.VOLUME: [1.0, 2.0],
        }
    )
    full = complete_demand(table, "h")
    assert full[s.TS].dt.hour.tolist() == [8, 9, 10, 11]
    assert full[s.VOLUME].tolist() == [1.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ((None, "2024-01-02", "1"), "zone_id: missing"),
        (("a", "soon", "1"), "ts: unparseable timestamp"),
        (("a", "2024-01-02 13:00", "1"), "ts: not the start of a day"),
        (("a", "2024-01-02", "lots"), "volume: not a number"),
        (("a", "2024-01-02", "-4"), "volume: negative"),
    ],
)
def test_bad_rows_are_quarantined_with_pinned_reason(
    row: tuple[object, object, object], reason: str
) -> None:
    table = raw([("a", "2024-01-01", "3"), row, ("a", "2024-01-03", "2")])
    read = validate_demand(table, "d")
    assert read.quarantine[s.REASON].tolist() == [reason]
    assert read.quarantine.iloc[0][s.TS] == row[1]  # kept as it came
    assert read.table[s.VOLUME].sum() == 5.0


def test_duplicates_exact_kept_once_conflicting_all_quarantined() -> None:
    table = raw(
        [
            ("a", "2024-01-01", "3"),
            ("a", "2024-01-01", "3"),
            ("b", "2024-01-01", "1"),
            ("b", "2024-01-01", "2"),
        ]
    )
    read = validate_demand(table, "d")
    assert read.counts == {
        "zone_id/ts: duplicate with conflicting volume": 2,
        "zone_id/ts: duplicate (exact copy of a kept row)": 1,
    }
    assert read.table[s.ZONE_ID].tolist() == ["a"]
    assert read.table[s.VOLUME].tolist() == [3.0]


def test_missing_columns_named() -> None:
    msg = "plan.csv: missing required column(s): volume"
    with pytest.raises(MissingColumnsError, match=re.escape(msg)):
        validate_demand(
            raw([("a", "2024-01-01", 1)]).drop(columns=[s.VOLUME]), "d", where="plan.csv"
        )


def test_bad_freq() -> None:
    with pytest.raises(
        ValueError, match=re.escape("freq: must be 'h' (hourly) or 'd' (daily), got 'w'")
    ):
        validate_demand(raw([("a", "2024-01-01", 1)]), "w")


def test_offset_timestamps_keep_local_wall_time() -> None:
    read = validate_demand(raw([("a", "2024-01-01T09:00:00+08:00", "1")]), "h")
    assert read.table[s.TS].tolist() == [pd.Timestamp("2024-01-01 09:00")]


def test_demand_from_deliveries_sums_packages_by_local_period() -> None:
    tz = "Asia/Shanghai"
    deliveries = pd.DataFrame(
        {
            s.ZONE_ID: ["a", "a", "b", "a"],
            s.READY_TIME: pd.to_datetime(
                ["2021-06-01 08:10", "2021-06-01 08:50", "2021-06-01 09:05", "2021-06-01 10:30"]
            ).tz_localize(tz),
            s.PACKAGES: pd.array([1, 2, 1, 1], dtype="Int64"),
        }
    )
    hourly = demand_from_deliveries(deliveries, "h")
    a = hourly[hourly[s.ZONE_ID] == "a"]
    assert a[s.TS].dt.hour.tolist() == [8, 9, 10]
    assert a[s.VOLUME].tolist() == [3.0, 0.0, 1.0]
    daily = demand_from_deliveries(deliveries, "d")
    assert daily.set_index(s.ZONE_ID)[s.VOLUME].to_dict() == {"a": 4.0, "b": 1.0}
