"""LaDe-D (Cainiao last-mile deliveries, any city file) to the deliveries contract.

LaDe-D has one row per delivered package. A route is one courier on one day (``courier_id``,
``ds``); the package is taken at the station (``accept_*``) and delivered (``delivery_*``).
Timestamps are local ``'MM-DD HH:MM:SS'`` strings without a year, so the year is a parameter.
LaDe carries no dispatch event: the route's dispatch time and depot position are derived
from the first hour of accepts, by the same rule the ETA benchmark queries with
(:func:`dispatch_points`), so training rows and benchmark queries agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from features import schema as s
from features.adapters.tabular import read_csv_text
from features.coerce import Adapted, coerce_deliveries, to_timestamp
from features.issues import Issues, MissingColumnsError

# LaDe-D's own column names: the source's vocabulary, mapped to the contract below.
ORDER_ID = "order_id"
REGION_ID = "region_id"
CITY = "city"
COURIER_ID = "courier_id"
LNG = "lng"
LAT = "lat"
AOI_ID = "aoi_id"
AOI_TYPE = "aoi_type"
ACCEPT_TIME = "accept_time"
ACCEPT_GPS_TIME = "accept_gps_time"
ACCEPT_GPS_LNG = "accept_gps_lng"
ACCEPT_GPS_LAT = "accept_gps_lat"
DELIVERY_TIME = "delivery_time"
DELIVERY_GPS_TIME = "delivery_gps_time"
DELIVERY_GPS_LNG = "delivery_gps_lng"
DELIVERY_GPS_LAT = "delivery_gps_lat"
DS = "ds"

LADE_COLUMNS: tuple[str, ...] = (
    ORDER_ID, REGION_ID, CITY, COURIER_ID, LNG, LAT, AOI_ID, AOI_TYPE,
    ACCEPT_TIME, ACCEPT_GPS_TIME, ACCEPT_GPS_LNG, ACCEPT_GPS_LAT,
    DELIVERY_TIME, DELIVERY_GPS_TIME, DELIVERY_GPS_LNG, DELIVERY_GPS_LAT, DS,
)  # fmt: skip
# The columns the conversion reads; the others (city, GPS times, delivery GPS) ride along in
# ``source`` when present but are not needed.
LADE_REQUIRED: tuple[str, ...] = (
    ORDER_ID, REGION_ID, COURIER_ID, LNG, LAT, AOI_ID, AOI_TYPE,
    ACCEPT_TIME, ACCEPT_GPS_LNG, ACCEPT_GPS_LAT, DELIVERY_TIME, DS,
)  # fmt: skip

DEFAULT_YEAR = 2021  # LaDe-D was collected in 2021
DISPATCH_WINDOW = pd.Timedelta(minutes=60)
ZERO_ISLAND_DEG = 1.0  # as features.validate: near (0, 0) there is only sea, so a GPS default
LADE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # after the year is prefixed to 'MM-DD HH:MM:SS'
STAMP_DTYPE = np.dtype(f"datetime64[{s.DATETIME_DTYPE_UNIT}]")
NAT = np.datetime64("NaT")
MSG_BAD_DS = "route_id: unparseable ds"
AOI_STOP_PREFIX = "aoi_"
PARQUET_SUFFIXES = (".parquet", ".pq")


def read_lade(path: str | Path, *, year: int = DEFAULT_YEAR, tz: str = s.DEFAULT_TZ) -> Adapted:
    """Read a LaDe-D city file (CSV, gzip CSV or Parquet) into contract columns.

    CSV is read as text so a garbage value reaches quarantine exactly as it was written.
    """
    path = Path(path)
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        raw = pd.read_parquet(path).reset_index(drop=True)
    else:
        raw = read_csv_text(path)
    return lade_frame_to_adapted(raw, year=year, tz=tz, where=str(path))


def lade_frame_to_adapted(
    df: pd.DataFrame, *, year: int = DEFAULT_YEAR, tz: str = s.DEFAULT_TZ, where: str = "LaDe frame"
) -> Adapted:
    """Convert LaDe-D rows (as read, any dtypes) to contract columns, row for row.

    Row ``i`` of ``deliveries`` is row ``i`` of ``source``, in the order the rows came; use
    :func:`visit_order` for the courier's sequence. Unreadable values become null and are
    recorded in ``issues``; only missing columns raise.
    """
    missing = [c for c in LADE_REQUIRED if c not in df.columns]
    if missing:
        raise MissingColumnsError(missing, where=where)
    source = df.reset_index(drop=True)
    issues = Issues(len(source))

    ds_date = _ds_dates(source[DS], year)
    issues.add(MSG_BAD_DS, _present(source[DS]) & ds_date.isna().to_numpy())
    courier = _id_text(source[COURIER_ID])
    route = _route_ids(courier, ds_date)

    ready = _parse_recorded(source[ACCEPT_TIME], ds_date, year, tz, s.READY_TIME, issues)
    arrival = _parse_recorded(source[DELIVERY_TIME], ds_date, year, tz, s.ARRIVAL_TIME, issues)
    ready_lat, ready_lng = _ready_position(source[ACCEPT_GPS_LAT], source[ACCEPT_GPS_LNG])
    aoi_type = _id_text(source[AOI_TYPE])

    frame = pd.DataFrame(
        {
            s.ROUTE_ID: route,
            s.COURIER_ID: courier,
            s.VEHICLE_TYPE: s.VehicleType.UNKNOWN.value,
            s.STOP_ID: _id_text(source[ORDER_ID]),
            s.LAT: source[LAT],
            s.LNG: source[LNG],
            s.READY_TIME: ready,
            s.READY_LAT: ready_lat,
            s.READY_LNG: ready_lng,
            s.DEPOT_ID: _id_text(source[REGION_ID]),
            s.AOI_ID: _id_text(source[AOI_ID]),
            s.ARRIVAL_TIME: arrival,
            s.PACKAGES: 1,
            s.STOP_TYPE: AOI_STOP_PREFIX + aoi_type,
        },
        index=source.index,
    )
    deliveries = coerce_deliveries(frame, tz, issues)
    points = dispatch_points(deliveries).reindex(deliveries[s.ROUTE_ID])
    for name in (s.DISPATCH_TIME, s.DEPOT_LAT, s.DEPOT_LNG):
        deliveries[name] = points[name].array  # positional: points follow the rows
    return Adapted(deliveries, source, issues)


def dispatch_points(
    frame: pd.DataFrame,
    *,
    route: str = s.ROUTE_ID,
    time: str = s.READY_TIME,
    lat: str = s.READY_LAT,
    lng: str = s.READY_LNG,
    window: pd.Timedelta = DISPATCH_WINDOW,
) -> pd.DataFrame:
    """Per route: when it leaves the depot and where the depot is, from the parcels' accepts.

    The ETA benchmark's dispatch query: the courier loads the first batch during the hour
    after the day's first accept, so dispatch is the latest accept within ``window``
    (inclusive) of the first. The depot is the mean accept GPS of that batch; GPS that is
    missing or within 1 degree of (0, 0) does not count. Without any valid GPS in the batch
    the whole day's valid accept GPS is averaged; without any at all the position is null
    (the dispatch time is still set). Rows without a route are ignored.

    Returns a frame indexed by route id with ``dispatch_time``, ``depot_lat``, ``depot_lng``.
    """
    missing = [c for c in (route, time, lat, lng) if c not in frame.columns]
    if missing:
        raise MissingColumnsError(missing, where="dispatch_points")
    keys = frame[route]
    t = frame[time]
    first = t.groupby(keys, sort=True).transform("min")
    batch = (t <= first + window).to_numpy()  # NaT compares false: an unread time is no accept
    la = pd.Series(_floats(frame[lat]), index=frame.index)
    lo = pd.Series(_floats(frame[lng]), index=frame.index)
    gps = valid_gps(la.to_numpy(), lo.to_numpy())

    def mean_position(rows: npt.NDArray[np.bool_]) -> pd.DataFrame:
        both = pd.DataFrame({s.DEPOT_LAT: la.where(rows), s.DEPOT_LNG: lo.where(rows)})
        return both.groupby(keys, sort=True).mean()

    # Lat and lng are masked together, so a route's two means are both set or both null.
    depot = mean_position(batch & gps).fillna(mean_position(gps))
    out = depot.copy()
    out.insert(0, s.DISPATCH_TIME, t.where(batch).groupby(keys, sort=True).max())
    out.index.name = route
    return out


def valid_gps(
    lat: pd.Series | npt.ArrayLike, lng: pd.Series | npt.ArrayLike
) -> npt.NDArray[np.bool_]:
    """True where a position is a real fix: both numbers present, not the (0, 0) default."""
    la, lo = _floats(lat), _floats(lng)
    finite = np.isfinite(la) & np.isfinite(lo)
    zero = (np.abs(la) < ZERO_ISLAND_DEG) & (np.abs(lo) < ZERO_ISLAND_DEG)
    return np.asarray(finite & ~zero)


def parse_lade_time(
    values: pd.Series,
    ds_date: pd.Series | None = None,
    *,
    year: int = DEFAULT_YEAR,
    tz: str = s.DEFAULT_TZ,
) -> pd.Series:
    """LaDe's year-less local ``'MM-DD HH:MM:SS'`` as tz-aware timestamps; unreadable -> NaT.

    A timestamp takes ``year``, or the year before or after when its month is more than six
    months from its route day's (``ds_date``): a parcel of route 1231 delivered on '01-01'
    lands in the next year. Values already stored as datetimes are read as local time.
    """
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return to_timestamp(values, tz)
    # Minute resolution repeats each text thousands of times: parse every distinct one once.
    codes, uniques = pd.factorize(values.astype("string").str.strip())
    text = pd.Series(uniques, dtype="string")
    month_of = pd.to_numeric(text.str.slice(0, 2), errors="coerce")
    month = _take(month_of.to_numpy("float64", na_value=np.nan), codes, np.nan)
    shift = np.zeros(len(codes), dtype="int64")
    if ds_date is not None:
        gap = month - ds_date.dt.month.to_numpy("float64", na_value=np.nan)
        shift = np.where(gap > 6, -1, np.where(gap < -6, 1, 0))
    stamps: npt.NDArray[np.datetime64] = np.full(len(codes), NAT, dtype=STAMP_DTYPE)
    for k in np.unique(shift):
        parsed = pd.to_datetime(f"{year + k}-" + text, format=LADE_TIME_FORMAT, errors="coerce")
        rows = shift == k
        stamps[rows] = _take(parsed.to_numpy(STAMP_DTYPE), codes[rows], NAT)
    naive = pd.Series(stamps, index=values.index)
    return naive.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")


def visit_order(deliveries: pd.DataFrame) -> pd.Series:
    """0-based position of each stop in its route's visit sequence, row-aligned.

    LaDe records no sequence; the visits are ordered by delivery time, ties (minute
    resolution) broken by the order id as a number, so ``"9"`` comes before ``"10"``.
    Rows without a route or an arrival time get <NA>.
    """
    routes, _ = pd.factorize(deliveries[s.ROUTE_ID])
    arrival = deliveries[s.ARRIVAL_TIME]
    rows = np.flatnonzero((routes >= 0) & arrival.notna().to_numpy())
    when = pd.to_datetime(arrival.iloc[rows], utc=True).dt.tz_localize(None)
    stop = deliveries[s.STOP_ID].iloc[rows]
    text_rank, _ = pd.factorize(stop, sort=True)
    keys = (text_rank, _floats(stop), when.to_numpy(STAMP_DTYPE), routes[rows])
    order = rows[np.lexsort(keys)]  # lexsort's last key is the primary one
    route_sorted = routes[order]
    starts = np.r_[True, route_sorted[1:] != route_sorted[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    out = pd.Series(pd.NA, index=deliveries.index, dtype="Int64")
    out.iloc[order] = np.arange(len(order)) - first
    return out


def _take(per_unique: npt.NDArray[Any], codes: npt.NDArray[np.intp], fill: Any) -> npt.NDArray[Any]:
    """Row values from one result per distinct value; code -1 (a null input) gets ``fill``."""
    return np.concatenate([per_unique, np.array([fill], dtype=per_unique.dtype)])[codes]


def _parse_recorded(
    values: pd.Series, ds_date: pd.Series, year: int, tz: str, column: str, issues: Issues
) -> pd.Series:
    parsed = parse_lade_time(values, ds_date, year=year, tz=tz)
    issues.add(f"{column}: unparseable timestamp", _present(values) & parsed.isna().to_numpy())
    return parsed


def _ds_dates(ds: pd.Series, year: int) -> pd.Series:
    """The route day from ``ds`` (MMDD as int or text); not a real date in ``year`` -> NaT."""
    codes, uniques = pd.factorize(ds)
    num = _floats(pd.Series(uniques, dtype=ds.dtype))
    whole = np.isfinite(num) & (num % 1 == 0) & (num >= 101) & (num <= 1231)
    text = pd.Series(np.where(whole, year * 10000 + num, np.nan)).astype("Int64").astype("string")
    dates = pd.to_datetime(text, format="%Y%m%d", errors="coerce").to_numpy(STAMP_DTYPE)
    return pd.Series(_take(dates, codes, NAT), index=ds.index)


def _route_ids(courier: pd.Series, ds_date: pd.Series) -> pd.Series:
    """``f"{courier_id}-{ds:04d}"`` (a year's MMDD is unique); null when either part is."""
    codes, days = pd.factorize(ds_date)
    mmdd = pd.DatetimeIndex(days).strftime("%m%d").to_numpy(dtype=object)
    day = pd.Series(_take(mmdd, codes, None), index=courier.index, dtype="string")
    return courier + "-" + day


def _ready_position(lat: pd.Series, lng: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Accept GPS where it is a real fix, else null; garbage text is kept for coercion to report."""
    la, lo = _floats(lat), _floats(lng)
    good = valid_gps(la, lo)
    garbage_lat, garbage_lng = np.isnan(la) & _present(lat), np.isnan(lo) & _present(lng)
    if garbage_lat.any() or garbage_lng.any():
        return lat.where(good | garbage_lat), lng.where(good | garbage_lng)
    # Clean numbers (the usual case) go on as floats: no second text-to-number pass.
    return (
        pd.Series(np.where(good, la, np.nan), index=lat.index),
        pd.Series(np.where(good, lo, np.nan), index=lng.index),
    )


def _floats(values: pd.Series | npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Numbers as a float array; anything unreadable is NaN."""
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    num = pd.to_numeric(series, errors="coerce")
    return np.asarray(num.to_numpy(dtype="float64", na_value=np.nan))


def _present(values: pd.Series) -> npt.NDArray[np.bool_]:
    """A value was given (not null, not blank text)."""
    present = values.notna().to_numpy().copy()
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        present &= values.astype("string").str.strip().fillna("").ne("").to_numpy()
    return present


def _id_text(values: pd.Series) -> pd.Series:
    """Ids as text: whole numbers without a trailing '.0' (Parquet may store ids as floats)."""
    if pd.api.types.is_float_dtype(values.dtype):
        whole = values.dropna()
        if (whole % 1 == 0).all():
            values = values.astype("Int64")
    text = values.astype("string").str.strip()
    return text.mask(text == "")
