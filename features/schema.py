"""The data contract: every column doorstep reads or writes, with its dtype and unit.

Every other module imports column names from here; no module spells a column name as a
string literal. Two tables are defined:

* ``DELIVERIES`` -- one row per delivered stop (a route is one courier on one day).
* ``DEMAND`` -- parcel volume per zone and period (hourly or daily).

Units: coordinates in WGS84 decimal degrees, distances in km, durations in minutes,
timestamps time-zone aware (the data's local zone is kept; comparisons are absolute).
Demand ``ts`` is the period start in *local wall-clock* time (naive), because planners
think in local hours and days and a DST-safe local calendar is what they bring.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # imported where frames are built: the service's arbiter needs only names
    import pandas as pd

Kind = Literal["string", "float", "int", "timestamp", "category"]

DEFAULT_TZ = "Asia/Shanghai"
DEFAULT_H3_RESOLUTION = 8  # ~0.7 km^2 hexagons: a few streets, a courier's natural sub-area


@dataclass(frozen=True)
class Column:
    """One column of a table: its name, kind, unit and whether a file must carry it."""

    name: str
    kind: Kind
    required: bool
    unit: str
    description: str


class VehicleType(StrEnum):
    WALK = "walk"
    BIKE = "bike"
    EBIKE = "ebike"
    SCOOTER = "scooter"
    CAR = "car"
    VAN = "van"
    UNKNOWN = "unknown"


class StopType(StrEnum):
    RESIDENTIAL = "residential"
    BUSINESS = "business"
    LOCKER = "locker"
    SHOP = "shop"
    OTHER = "other"
    UNKNOWN = "unknown"


# --- deliveries: column names -------------------------------------------------------------
ROUTE_ID = "route_id"
COURIER_ID = "courier_id"
VEHICLE_TYPE = "vehicle_type"
STOP_ID = "stop_id"
LAT = "lat"
LNG = "lng"
ZONE_ID = "zone_id"
DISPATCH_TIME = "dispatch_time"
READY_TIME = "ready_time"
READY_LAT = "ready_lat"
READY_LNG = "ready_lng"
DEPOT_ID = "depot_id"
DEPOT_LAT = "depot_lat"
DEPOT_LNG = "depot_lng"
AOI_ID = "aoi_id"
PLANNED_SEQ = "planned_seq"
PLANNED_ARRIVAL = "planned_arrival"
ARRIVAL_TIME = "arrival_time"
DEPARTURE_TIME = "departure_time"
PACKAGES = "packages"
STOP_TYPE = "stop_type"
WINDOW_START = "window_start"
WINDOW_END = "window_end"

DELIVERIES: tuple[Column, ...] = (
    Column(ROUTE_ID, "string", True, "-", "courier-day id: one courier's work on one local day"),
    Column(COURIER_ID, "string", True, "-", "courier id, stable across days"),
    Column(VEHICLE_TYPE, "category", False, "-", f"{', '.join(VehicleType)} (lower-cased; default unknown)"),
    Column(STOP_ID, "string", True, "-", "stop / order id, unique in the table"),
    Column(LAT, "float", True, "degree", "stop latitude, WGS84"),
    Column(LNG, "float", True, "degree", "stop longitude, WGS84"),
    Column(ZONE_ID, "string", False, "-", "zone of the stop; H3 cell of (lat, lng) when absent"),
    Column(DISPATCH_TIME, "timestamp", True, "tz-aware", "the route leaves the depot"),
    Column(
        READY_TIME, "timestamp", True, "tz-aware", "parcel in the courier's hands (LaDe: accept)"
    ),
    Column(READY_LAT, "float", False, "degree", "where the parcel was handed over"),
    Column(READY_LNG, "float", False, "degree", "where the parcel was handed over"),
    Column(DEPOT_ID, "string", False, "-", "depot / station id"),
    Column(DEPOT_LAT, "float", False, "degree", "depot / station latitude"),
    Column(DEPOT_LNG, "float", False, "degree", "depot / station longitude"),
    Column(AOI_ID, "string", False, "-", "area of interest or building id"),
    Column(PLANNED_SEQ, "int", False, "-", "position in the planned route, 0-based"),
    Column(PLANNED_ARRIVAL, "timestamp", False, "tz-aware", "routing engine's planned arrival"),
    Column(ARRIVAL_TIME, "timestamp", True, "tz-aware", "actual arrival at the stop: the target"),
    Column(DEPARTURE_TIME, "timestamp", False, "tz-aware", "leaves the stop (arrival + service)"),
    Column(PACKAGES, "int", False, "parcel", "parcels delivered at the stop, >= 1 (default 1)"),
    Column(STOP_TYPE, "category", False, "-", f"stop kind: {', '.join(StopType)}, or the source's own (LaDe: aoi_<type>)"),
    Column(WINDOW_START, "timestamp", False, "tz-aware", "booked window start (ETAs wait for it)"),
    Column(WINDOW_END, "timestamp", False, "tz-aware", "customer time window end"),
)

# --- demand table ---------------------------------------------------------------------------
TS = "ts"
VOLUME = "volume"

DEMAND: tuple[Column, ...] = (
    Column(ZONE_ID, "string", True, "-", "zone id"),
    Column(TS, "timestamp", True, "local wall-clock", "period start, naive local time"),
    Column(VOLUME, "float", True, "parcel", "parcels in the period, >= 0"),
)

Freq = Literal["h", "d"]
FREQ_OFFSETS: dict[str, str] = {"h": "h", "d": "D"}

# --- derived quantities shared by features and reports -------------------------------------
REASON = "reason"  # quarantine: every reason a row was rejected, joined by "; "
SERVICE_MIN = "service_min"  # departure - arrival, minutes
ROUTE_DATE = "route_date"  # local date of dispatch

DELIVERY_COLUMNS: dict[str, Column] = {c.name: c for c in DELIVERIES}
DEMAND_COLUMNS: dict[str, Column] = {c.name: c for c in DEMAND}
REQUIRED_DELIVERY_COLUMNS: tuple[str, ...] = tuple(c.name for c in DELIVERIES if c.required)
TIMESTAMP_COLUMNS: tuple[str, ...] = tuple(c.name for c in DELIVERIES if c.kind == "timestamp")
DATETIME_DTYPE_UNIT: Literal["ns"] = "ns"

_PANDAS_DTYPES: dict[Kind, str] = {
    "string": "string",
    "float": "float64",
    "int": "Int64",
    "category": "string",
    "timestamp": "datetime64[ns]",
}


def pandas_dtype(column: Column, tz: str | None = None) -> str | pd.DatetimeTZDtype:
    """The pandas dtype a column has after ingestion (timestamps carry ``tz``)."""
    import pandas as pd

    if column.kind == "timestamp" and tz is not None:
        return pd.DatetimeTZDtype(unit=DATETIME_DTYPE_UNIT, tz=tz)
    return _PANDAS_DTYPES[column.kind]


def empty_deliveries(tz: str = DEFAULT_TZ) -> pd.DataFrame:
    """A zero-row deliveries frame with every contract column at its final dtype."""
    import pandas as pd

    return pd.DataFrame(
        {c.name: pd.Series(dtype=pandas_dtype(c, tz)) for c in DELIVERIES}  # type: ignore[call-overload]
    )


def contract_markdown(columns: tuple[Column, ...]) -> str:
    """The contract as a Markdown table (the README's table is generated from this)."""
    lines = ["| column | type | required | unit | meaning |", "|---|---|---|---|---|"]
    for c in columns:
        lines.append(
            f"| `{c.name}` | {c.kind} | {'yes' if c.required else 'no'} | {c.unit} | {c.description} |"
        )
    return "\n".join(lines)
