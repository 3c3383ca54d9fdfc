"""Row-level validation of deliveries: bad rows are quarantined with every reason, good rows go on.

A file with a few bad rows is ingested, not rejected; only missing required columns (nothing
can be read) stop an ingest. Each check is vectorised so a file of millions of rows validates
in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import schema as s
from features.coerce import Adapted
from features.geo import haversine_km
from features.issues import BoolArray, Issues, flag_duplicates
from features.zones import h3_cells

# Pinned messages: tests match them exactly, users grep quarantine files for them.
MSG_MISSING = "{column}: missing"
MSG_COORD_RANGE = "lat/lng: out of range"
MSG_COORD_ZERO = "lat/lng: at (0, 0), a missing-GPS placeholder"
MSG_AUX_COORD_RANGE = "{lat}/{lng}: out of range"
MSG_ARRIVAL_BEFORE_READY = "arrival_time: before ready_time"
MSG_ARRIVAL_TOO_LATE = "arrival_time: more than {hours:g} h after dispatch_time"
MSG_DEPARTURE_BEFORE_ARRIVAL = "departure_time: before arrival_time"
MSG_WINDOW_ORDER = "window_end: before window_start"
MSG_PACKAGES = "packages: must be >= 1"
MSG_DUP_EXACT = "stop_id: duplicate (exact copy of a kept row)"
MSG_DUP_CONFLICT = "stop_id: duplicate with conflicting values"
MSG_ROUTE_COURIERS = "route_id: more than one courier_id"
MSG_ROUTE_DISPATCH = "dispatch_time: differs within route"
MSG_SPEED = "arrival_time: impossible speed from the previous stop (> {kmh:g} km/h)"

ZERO_ISLAND_DEG = 1.0  # within 1 degree of (0, 0) there is only sea: a GPS default, not a stop


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the plausibility checks (defaults suit urban couriers)."""

    max_speed_kmh: float = 120.0
    # Timestamps often have minute resolution: a gap below this is read as this long.
    min_gap_minutes: float = 1.0
    # Short hops are not judged: GPS jitter within a building is not a teleport.
    min_jump_km: float = 1.0
    max_route_hours: float = 24.0
    h3_resolution: int = s.DEFAULT_H3_RESOLUTION


@dataclass(frozen=True)
class ValidationResult:
    """Valid rows (contract dtypes, zones filled), quarantined source rows with reasons."""

    deliveries: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict[str, int]
    n_input: int

    @property
    def n_valid(self) -> int:
        return len(self.deliveries)

    @property
    def n_quarantined(self) -> int:
        return len(self.quarantine)


def validate_deliveries(
    adapted: Adapted, config: ValidationConfig | None = None
) -> ValidationResult:
    """Check every row of an adapted source; split it into valid rows and quarantine."""
    config = config or ValidationConfig()
    df = adapted.deliveries.reset_index(drop=True)
    issues = Issues(len(df))
    issues.extend(adapted.issues)
    _check_required(df, issues)
    _check_coordinates(df, issues)
    _check_times(df, issues, config)
    _check_routes(df, issues)
    flag_duplicates(
        df, [s.STOP_ID], issues, exact_message=MSG_DUP_EXACT, conflict_message=MSG_DUP_CONFLICT
    )
    _check_speed(df, issues, config)

    bad = issues.bad
    good = _finish(df.loc[~bad], config)
    quarantine = adapted.source.reset_index(drop=True).loc[bad].copy()
    if s.REASON in quarantine.columns:
        quarantine = quarantine.rename(columns={s.REASON: f"source_{s.REASON}"})
    quarantine[s.REASON] = issues.reasons()[bad].to_numpy()
    return ValidationResult(good, quarantine.reset_index(drop=True), issues.counts(), len(df))


def _check_required(df: pd.DataFrame, issues: Issues) -> None:
    for name in s.REQUIRED_DELIVERY_COLUMNS:
        unreadable = np.zeros(len(df), dtype=bool)
        for message in (f"{name}: unparseable timestamp", f"{name}: not a number"):
            unreadable |= issues.mask(message)
        issues.add(MSG_MISSING.format(column=name), df[name].isna().to_numpy() & ~unreadable)


def _check_coordinates(df: pd.DataFrame, issues: Issues) -> None:
    lat, lng = df[s.LAT], df[s.LNG]
    out = ~(lat.between(-90, 90) & lng.between(-180, 180)) & lat.notna() & lng.notna()
    issues.add(MSG_COORD_RANGE, out)
    issues.add(MSG_COORD_ZERO, (lat.abs() < ZERO_ISLAND_DEG) & (lng.abs() < ZERO_ISLAND_DEG))
    for a, b in ((s.READY_LAT, s.READY_LNG), (s.DEPOT_LAT, s.DEPOT_LNG)):
        la, lo = df[a], df[b]
        bad = (la.notna() & ~la.between(-90, 90)) | (lo.notna() & ~lo.between(-180, 180))
        issues.add(MSG_AUX_COORD_RANGE.format(lat=a, lng=b), bad)


def _check_times(df: pd.DataFrame, issues: Issues, config: ValidationConfig) -> None:
    issues.add(MSG_ARRIVAL_BEFORE_READY, df[s.ARRIVAL_TIME] < df[s.READY_TIME])
    too_late = df[s.ARRIVAL_TIME] - df[s.DISPATCH_TIME] > pd.Timedelta(hours=config.max_route_hours)
    issues.add(MSG_ARRIVAL_TOO_LATE.format(hours=config.max_route_hours), too_late)
    issues.add(MSG_DEPARTURE_BEFORE_ARRIVAL, df[s.DEPARTURE_TIME] < df[s.ARRIVAL_TIME])
    issues.add(MSG_WINDOW_ORDER, df[s.WINDOW_END] < df[s.WINDOW_START])
    issues.add(MSG_PACKAGES, df[s.PACKAGES] < 1)


def _check_routes(df: pd.DataFrame, issues: Issues) -> None:
    """A route is one courier dispatched once; rows that contradict that cannot be trusted."""
    has_route = df[s.ROUTE_ID].notna()
    grouped = df[has_route].groupby(s.ROUTE_ID, sort=False)
    couriers = grouped[s.COURIER_ID].transform("nunique")
    dispatches = grouped[s.DISPATCH_TIME].transform("nunique")
    issues.add(MSG_ROUTE_COURIERS, _expand(has_route, (couriers > 1).to_numpy()))
    issues.add(MSG_ROUTE_DISPATCH, _expand(has_route, (dispatches > 1).to_numpy()))


def _check_speed(df: pd.DataFrame, issues: Issues, config: ValidationConfig) -> None:
    """Flag stops reached implausibly fast from the previous stop of the same route.

    A lone GPS outlier makes both the leg in and the leg out impossible; it is flagged first
    and the speeds recomputed without it, so its honest neighbour is not blamed too.
    """
    candidates = ~issues.bad & df[s.ARRIVAL_TIME].notna().to_numpy()
    outliers = _impossible(df, candidates, config, both_sides=True)
    flagged = outliers | _impossible(df, candidates & ~outliers, config, both_sides=False)
    issues.add(MSG_SPEED.format(kmh=config.max_speed_kmh), flagged)


def _impossible(
    df: pd.DataFrame, rows: BoolArray, config: ValidationConfig, *, both_sides: bool
) -> BoolArray:
    sub = df.loc[rows, [s.ROUTE_ID, s.LAT, s.LNG, s.ARRIVAL_TIME]]
    sub = sub.sort_values([s.ROUTE_ID, s.ARRIVAL_TIME], kind="stable")
    same_prev = (sub[s.ROUTE_ID] == sub[s.ROUTE_ID].shift(1)).fillna(False).to_numpy(dtype=bool)
    km = haversine_km(sub[s.LAT].shift(1), sub[s.LNG].shift(1), sub[s.LAT], sub[s.LNG])
    gap = (sub[s.ARRIVAL_TIME] - sub[s.ARRIVAL_TIME].shift(1)).dt.total_seconds().to_numpy() / 60
    gap = np.maximum(np.nan_to_num(gap, nan=np.inf), config.min_gap_minutes)
    fast_in = same_prev & (km > config.min_jump_km) & (km / (gap / 60) > config.max_speed_kmh)
    flag = fast_in
    if both_sides:
        fast_out = np.append(fast_in[1:], False)
        flag = fast_in & fast_out
    out = np.zeros(len(df), dtype=bool)
    out[sub.index.to_numpy()[flag]] = True
    return out


def _expand(where: BoolArray | pd.Series, values: BoolArray) -> BoolArray:
    out = np.zeros(len(where), dtype=bool)
    out[np.asarray(where, dtype=bool)] = values
    return out


def _finish(df: pd.DataFrame, config: ValidationConfig) -> pd.DataFrame:
    """Defaults for optional fields, zones where the data has none, a stable row order."""
    out = df.copy()
    out[s.PACKAGES] = out[s.PACKAGES].fillna(1)
    out[s.VEHICLE_TYPE] = out[s.VEHICLE_TYPE].str.lower().fillna(s.VehicleType.UNKNOWN.value)
    out[s.STOP_TYPE] = out[s.STOP_TYPE].fillna(s.StopType.UNKNOWN.value)
    no_zone = out[s.ZONE_ID].isna()
    if no_zone.any():
        out.loc[no_zone, s.ZONE_ID] = h3_cells(
            out.loc[no_zone, s.LAT], out.loc[no_zone, s.LNG], config.h3_resolution
        )
    out = out.sort_values([s.ROUTE_ID, s.ARRIVAL_TIME, s.STOP_ID], kind="stable")
    return out.reset_index(drop=True)
