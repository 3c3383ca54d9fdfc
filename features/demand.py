"""The demand table: parcel volume per zone and period (``zone_id, ts, volume``).

``ts`` is the period start in local wall-clock time (naive). A period missing inside a zone's
active span (its first to its last period) means zero volume; outside it the zone did not
exist yet or had closed, which is not the same as zero demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features import schema as s
from features.issues import Issues, MissingColumnsError, flag_duplicates

MSG_ZONE_MISSING = "zone_id: missing"
MSG_TS_UNPARSEABLE = "ts: unparseable timestamp"
MSG_TS_MISSING = "ts: missing"
MSG_TS_NOT_PERIOD_START = "ts: not the start of {period}"
MSG_VOLUME_NAN = "volume: not a number"
MSG_VOLUME_NEGATIVE = "volume: negative"
MSG_DUP_EXACT = "zone_id/ts: duplicate (exact copy of a kept row)"
MSG_DUP_CONFLICT = "zone_id/ts: duplicate with conflicting volume"

PERIOD_NAMES = {"h": "an hour", "d": "a day"}


@dataclass(frozen=True)
class DemandRead:
    """A validated demand table (zero periods filled) and the rows that were rejected."""

    table: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict[str, int]
    n_input: int


def check_freq(freq: str) -> s.Freq:
    if freq not in s.FREQ_OFFSETS:
        raise ValueError(f"freq: must be 'h' (hourly) or 'd' (daily), got {freq!r}")
    return freq  # type: ignore[return-value]


def read_demand_file(path: str | Path) -> pd.DataFrame:
    """A planner's CSV (any column as text, so garbage survives into quarantine) or Parquet."""
    path = Path(path)
    if path.suffix == ".parquet" or path.is_dir():
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=True)


def validate_demand(raw: pd.DataFrame, freq: str, *, where: str = "demand table") -> DemandRead:
    """Check every row of a demand table, keep the good ones, fill zero periods."""
    freq = check_freq(freq)
    missing = [c.name for c in s.DEMAND if c.name not in raw.columns]
    if missing:
        raise MissingColumnsError(missing, where=where)
    src = raw.reset_index(drop=True)
    issues = Issues(len(src))
    zone = src[s.ZONE_ID].astype("string").str.strip()
    zone = zone.mask(zone == "")  # a blank zone is a missing one
    issues.add(MSG_ZONE_MISSING, zone.isna())
    ts = _local_naive(src[s.TS])
    issues.add(MSG_TS_MISSING, src[s.TS].isna())
    issues.add(MSG_TS_UNPARSEABLE, src[s.TS].notna() & ts.isna())
    aligned = ts.dt.floor(s.FREQ_OFFSETS[freq]) == ts
    issues.add(MSG_TS_NOT_PERIOD_START.format(period=PERIOD_NAMES[freq]), ts.notna() & ~aligned)
    volume = pd.to_numeric(src[s.VOLUME], errors="coerce").astype("float64")
    issues.add(MSG_VOLUME_NAN, ~np.isfinite(volume.to_numpy(na_value=np.nan)))
    issues.add(MSG_VOLUME_NEGATIVE, volume < 0)

    tidy = pd.DataFrame({s.ZONE_ID: zone, s.TS: ts, s.VOLUME: volume})
    flag_duplicates(
        tidy,
        [s.ZONE_ID, s.TS],
        issues,
        exact_message=MSG_DUP_EXACT,
        conflict_message=MSG_DUP_CONFLICT,
    )
    bad = issues.bad
    quarantine = src.loc[bad].copy()
    quarantine[s.REASON] = issues.reasons()[bad].to_numpy()
    table = complete_demand(tidy.loc[~bad], freq)
    return DemandRead(table, quarantine.reset_index(drop=True), issues.counts(), len(src))


def _local_naive(values: pd.Series) -> pd.Series:
    """Period starts as naive local wall time; an offset in the input is dropped, not applied."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_localize(None).astype("datetime64[ns]")
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.astype("datetime64[ns]")
    text = values.astype("string").str.strip()
    text = text.str.replace(r"(?:Z|[+-]\d\d:?\d\d)$", "", regex=True)
    return pd.to_datetime(text, errors="coerce", format="ISO8601").astype("datetime64[ns]")


def complete_demand(table: pd.DataFrame, freq: str) -> pd.DataFrame:
    """Sum duplicates, then add zero rows for periods missing inside each zone's active span."""
    freq = check_freq(freq)
    step = pd.Timedelta(f"1{s.FREQ_OFFSETS[freq].lower()}")
    summed = table.groupby([s.ZONE_ID, s.TS], as_index=False, sort=True)[[s.VOLUME]].sum()
    if summed.empty:
        return summed.astype({s.ZONE_ID: "string", s.TS: "datetime64[ns]", s.VOLUME: "float64"})
    span = summed.groupby(s.ZONE_ID, sort=True)[s.TS].agg(["min", "max"])
    width = (span["max"] - span["min"]).to_numpy()
    n = (width // step.to_timedelta64()).astype(np.int64) + 1
    zones = np.repeat(span.index.to_numpy(), n)
    offsets = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    starts = np.repeat(span["min"].to_numpy(), n)
    grid = pd.DataFrame({s.ZONE_ID: zones, s.TS: starts + offsets * step.to_timedelta64()})
    full = grid.merge(summed, on=[s.ZONE_ID, s.TS], how="left")
    full[s.VOLUME] = full[s.VOLUME].fillna(0.0)
    return full.astype({s.ZONE_ID: "string", s.TS: "datetime64[ns]", s.VOLUME: "float64"})


def daily_from_hourly(hourly: pd.DataFrame) -> pd.DataFrame:
    """A complete hourly demand table summed per zone and local day (complete too: a zone's
    hours cover every day of its span)."""
    day = hourly.assign(**{s.TS: hourly[s.TS].dt.floor("D")})
    return day.groupby([s.ZONE_ID, s.TS], as_index=False, sort=True)[[s.VOLUME]].sum()


def demand_from_deliveries(
    deliveries: pd.DataFrame, freq: str, *, time_column: str = s.READY_TIME
) -> pd.DataFrame:
    """Parcels per zone and period from stops, timed by when parcels become ready (local)."""
    freq = check_freq(freq)
    when = deliveries[time_column]
    if isinstance(when.dtype, pd.DatetimeTZDtype):
        when = when.dt.tz_localize(None)  # local wall time of the data's own zone
    table = pd.DataFrame(
        {
            s.ZONE_ID: deliveries[s.ZONE_ID].astype("string"),
            s.TS: when.dt.floor(s.FREQ_OFFSETS[freq]),
            s.VOLUME: deliveries[s.PACKAGES].fillna(1).astype("float64"),
        }
    ).dropna(subset=[s.ZONE_ID, s.TS])
    return complete_demand(table, freq)
