"""The leg feature set ``leg_v1``: travel between two points at a departure time.

A routing solver asks for minutes between many point pairs at once, so the featurizer works in
two steps: per *point* (H3 zone, the zone's fitted speed profile) and then per *pair* (distance,
direction, the two points' profiles broadcast against each other). A 100 x 100 matrix therefore
costs 200 zone lookups, not 10,000.

Profiles (zone pace, zone pace by local hour of week, city pace by hour of week) are
point-in-time (:class:`features.profiles.PointInTimeProfile`): a training leg sees only days
before its own, so no leg's label leaks into its own features. Serving reads dense tables frozen
at the end of the training window; zones the profile never saw read the pooled row.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from features import schema as s
from features.geo import haversine_km
from features.profiles import DAY, KEY, PointInTimeProfile, local_day
from features.zones import cell_of

FEATURE_SET = "leg_v1"
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_T = TypeVar("_T", bound=np.generic)
HOURS_PER_WEEK = 168
KM_PER_DEG_LAT = 110.574  # as features.geo.offset_deg
KM_PER_DEG_LNG_EQUATOR = 111.320

# --- the leg table: one row per pair of consecutive stops of a route ---------------------------
O_STOP_ID = "o_stop_id"
D_STOP_ID = "d_stop_id"
O_LAT = "o_lat"
O_LNG = "o_lng"
D_LAT = "d_lat"
D_LNG = "d_lng"
O_ARRIVAL = "o_arrival_time"  # arrival at the origin stop
DEPART = "depart_time"  # leaves the origin: observed departure, else arrival + estimated service
D_ARRIVAL = "d_arrival_time"  # arrival at the destination stop
GAP_MIN = "gap_min"  # destination arrival - origin arrival
SERVICE_OBSERVED = "service_observed"  # the origin's departure time was in the data
LEG_KM = "leg_km"  # haversine origin -> destination
TRAVEL_MIN = "travel_min"  # the label: destination arrival - departure
LEG_INPUT: tuple[str, ...] = (O_LAT, O_LNG, D_LAT, D_LNG, DEPART)

# learned-statistic names inside the profiles (not columns of any table)
_MIN, _KM = "leg_min", "leg_km"
_UNKNOWN = "?"  # never an H3 cell: its lookup is the pooled statistic


@dataclass(frozen=True)
class LegFeatureSpec:
    """The declaration of a leg feature set; the matrix columns are ``names()``, in order."""

    version: str = FEATURE_SET
    # direction as a unit bearing, not dx/dy: those grow with distance and would let trees cut
    # on length twice; length is dist_km and the reference line the booster corrects
    pair: tuple[str, ...] = ("dist_km", "bearing_sin", "bearing_cos", "same_zone")
    time: tuple[str, ...] = ("hour_of_week", "clock_hour", "how_min_per_km")
    vehicle: tuple[str, ...] = ("vehicle",)
    ends: tuple[str, ...] = ("o", "d")
    zone_stats: tuple[str, ...] = ("min_per_km", "leg_min", "n", "how_min_per_km")
    derived: tuple[str, ...] = ("est_min",)
    categorical: tuple[str, ...] = ("vehicle",)

    def names(self) -> list[str]:
        per_end = [f"{e}_zone_{stat}" for e in self.ends for stat in self.zone_stats]
        return [*self.pair, *self.time, *self.vehicle, *per_end, *self.derived]


SPEC = LegFeatureSpec()


def feature_names() -> list[str]:
    """The columns of ``leg_v1`` (pinned by tests; the booster's feature names must match)."""
    return SPEC.names()


class ZoneStats(NamedTuple):
    """One end's zone profile, broadcastable to the pair shape."""

    min_per_km: FloatArray
    leg_min: FloatArray
    n: FloatArray
    how_min_per_km: FloatArray


@dataclass(frozen=True)
class LocalTime:
    """Departure in the model's zone: hour of week (Monday 0h = 0) and fractional clock hour."""

    hour_of_week: IntArray
    clock_hour: FloatArray


@dataclass(frozen=True)
class PairFeatures:
    """A feature matrix over pairs, the pairs' shape, and where origin and destination coincide."""

    X: npt.NDArray[np.float32]
    shape: tuple[int, ...]
    same_point: npt.NDArray[np.bool_]


def zone_cells(lat: npt.ArrayLike, lng: npt.ArrayLike, resolution: int) -> npt.NDArray[np.str_]:
    """H3 cells of points (cached per coordinate: stops and solver nodes repeat); "" if invalid."""
    la = np.asarray(lat, dtype=np.float64).ravel().tolist()
    lo = np.asarray(lng, dtype=np.float64).ravel().tolist()
    return np.array([cell_of(a, b, resolution) for a, b in zip(la, lo, strict=True)], dtype=str)


def local_time(departure: object, tz: str) -> LocalTime:
    """Local hour of week and clock hour of departures given as tz-aware timestamps or epoch s.

    Epoch seconds are absolute, so they are read as UTC and converted; a naive timestamp is
    refused because its zone would be a guess.
    """
    if isinstance(departure, dt.datetime):
        stamp = pd.Timestamp(departure)
        if stamp.tzinfo is None:
            raise ValueError("departure: a Timestamp must be time-zone aware")
        stamp = stamp.tz_convert(tz)  # one departure for a whole matrix: skip pandas arrays
        hour_of_week = np.asarray(stamp.weekday() * 24 + stamp.hour, dtype=np.int64)
        clock_hour = stamp.hour + stamp.minute / 60.0 + stamp.second / 3600.0
        return LocalTime(hour_of_week, np.asarray(clock_hour, dtype=np.float64))
    if isinstance(departure, pd.Series | pd.DatetimeIndex) and isinstance(
        departure.dtype, pd.DatetimeTZDtype
    ):
        index = pd.DatetimeIndex(departure).tz_convert(tz)
        shape: tuple[int, ...] = (len(index),)
    else:
        seconds = np.asarray(departure)
        if seconds.dtype.kind not in "iuf":
            raise ValueError(
                "departure: pass a tz-aware Timestamp, tz-aware timestamps or epoch seconds"
            )
        shape = seconds.shape
        utc = pd.to_datetime(seconds.astype(np.float64).ravel(), unit="s", utc=True)
        index = pd.DatetimeIndex(utc).tz_convert(tz)
    how = np.asarray(index.weekday * 24 + index.hour, dtype=np.int64)
    clock = np.asarray(index.hour + index.minute / 60.0 + index.second / 3600.0, dtype=np.float64)
    return LocalTime(how.reshape(shape), clock.reshape(shape))


class LegFeaturizer(BaseEstimator):  # type: ignore[misc]
    """Fits the zone and hour-of-week pace profiles of ``leg_v1``; turns pairs into features.

    ``fit`` takes labelled legs (columns ``LEG_INPUT``, ``TRAVEL_MIN``, ``LEG_KM``, optionally
    the vehicle type). The model's time zone is the zone of the legs' departures.
    """

    def __init__(self, h3_resolution: int = s.DEFAULT_H3_RESOLUTION, prior: float = 5.0) -> None:
        self.h3_resolution = h3_resolution
        self.prior = prior

    def fit(self, legs: pd.DataFrame, y: npt.ArrayLike | None = None) -> LegFeaturizer:
        _require(legs, (*LEG_INPUT, LEG_KM) if y is not None else (*LEG_INPUT, LEG_KM, TRAVEL_MIN))
        depart = legs[DEPART]
        if not isinstance(depart.dtype, pd.DatetimeTZDtype):
            raise ValueError(f"{DEPART}: must be time-zone aware")
        self.tz_ = str(depart.dt.tz)
        minutes = np.asarray(y if y is not None else legs[TRAVEL_MIN], dtype=np.float64)
        o_cell = zone_cells(legs[O_LAT], legs[O_LNG], self.h3_resolution)
        d_cell = zone_cells(legs[D_LAT], legs[D_LNG], self.h3_resolution)
        when = local_time(depart, self.tz_)
        day = local_day(depart.dt.tz_convert(self.tz_))
        km = legs[LEG_KM].to_numpy(dtype=np.float64)
        how = when.hour_of_week.astype(str)
        # a leg informs both of its zones; an intra-zone leg counts once
        other = d_cell != o_cell
        zone_key = np.r_[o_cell, d_cell[other]]
        valid = zone_key != ""  # an invalid point has no zone; it must not become one
        zone_key = zone_key[valid]
        both = {_MIN: np.r_[minutes, minutes[other]][valid], _KM: np.r_[km, km[other]][valid]}
        both_day = np.r_[day, day[other]][valid]
        both_how = np.r_[how, how[other]][valid]
        stats = (_MIN, _KM)
        self.zone_ = PointInTimeProfile(stats, self.prior).fit(
            pd.DataFrame({KEY: zone_key, DAY: both_day, **both})
        )
        self.zone_how_ = PointInTimeProfile(stats, self.prior).fit(
            pd.DataFrame({KEY: _join(zone_key, both_how), DAY: both_day, **both})
        )
        self.how_ = PointInTimeProfile(stats, self.prior).fit(
            pd.DataFrame({KEY: how, DAY: day, _MIN: minutes, _KM: km})
        )
        vehicles = _vehicle_values(legs.get(s.VEHICLE_TYPE), len(legs))
        self.vehicles_ = pd.Index(sorted(set(vehicles.tolist())))
        self.zones_ = pd.Index(sorted(set(zone_key.tolist())))
        self.zone_row_ = {z: i for i, z in enumerate(self.zones_)}
        self.vehicle_code_ = {v: i for i, v in enumerate(self.vehicles_)}
        self.reference_ = _reference_line(km, minutes)
        self.as_of_day_ = int(day.max()) + 1  # serving sees every fitted day
        self._freeze_tables()
        self.window_ = (str(depart.min()), str(depart.max()))
        self.feature_set_ = FEATURE_SET
        return self

    def _freeze_tables(self) -> None:
        """Dense serving tables as of the end of the window; the extra last row is 'unknown'."""
        end = self.as_of_day_
        keys = np.r_[self.zones_.to_numpy(dtype=str), [_UNKNOWN]]
        z = self.zone_.lookup(keys, np.full(len(keys), end))
        self.zone_table_ = np.column_stack([z.ratio(_MIN, _KM), z.mean(_MIN), z.n])
        grid_zone = np.repeat(keys, HOURS_PER_WEEK)
        grid_how = np.tile(np.arange(HOURS_PER_WEEK).astype(str), len(keys))
        zh = self.zone_how_.lookup(_join(grid_zone, grid_how), np.full(len(grid_zone), end))
        self.zone_how_table_ = zh.ratio(_MIN, _KM).reshape(len(keys), HOURS_PER_WEEK)
        hw = self.how_.lookup(np.arange(HOURS_PER_WEEK).astype(str), np.full(HOURS_PER_WEEK, end))
        self.how_table_ = hw.ratio(_MIN, _KM)

    # --- serving: arrays of points -------------------------------------------------------
    def zone_rows(self, cells: npt.NDArray[np.str_]) -> IntArray:
        """Row of each cell in the serving tables; unknown cells read the pooled last row."""
        check_is_fitted(self, "zone_table_")
        unknown = len(self.zones_)
        get = self.zone_row_.get
        return np.fromiter((get(c, unknown) for c in cells.tolist()), np.int64, len(cells))

    def vehicle_codes(self, vehicle: object) -> FloatArray:
        """Category codes; None means 'unknown'; a vehicle never seen in training is missing."""
        check_is_fitted(self, "vehicles_")
        if vehicle is None or isinstance(vehicle, str):
            name = s.VehicleType.UNKNOWN.value if vehicle is None else vehicle.lower()
            return np.asarray(float(self.vehicle_code_.get(name, np.nan)))
        values = np.asarray(vehicle, dtype=object)
        names = _vehicle_values(pd.Series(values.ravel(), dtype=object), values.size)
        return _codes(self.vehicles_, names).reshape(values.shape)

    def pairs(
        self,
        o_lat: npt.ArrayLike,
        o_lng: npt.ArrayLike,
        d_lat: npt.ArrayLike,
        d_lng: npt.ArrayLike,
        departure: object,
        vehicle: object = None,
        *,
        matrix: bool = False,
    ) -> PairFeatures:
        """Features of paired points (``matrix=False``) or of every origin x destination.

        Each point's zone and profile row are computed once; pairs are numpy broadcasts. In a
        matrix, a 1-d departure or vehicle array is per origin.
        """
        check_is_fitted(self, "zone_table_")
        o_lat, o_lng, d_lat, d_lng = (
            np.asarray(a, dtype=np.float64).ravel() for a in (o_lat, o_lng, d_lat, d_lng)
        )
        o_cells = zone_cells(o_lat, o_lng, self.h3_resolution)
        d_cells = zone_cells(d_lat, d_lng, self.h3_resolution)
        o_row, d_row = self.zone_rows(o_cells), self.zone_rows(d_cells)
        o_id, d_id = _cell_ids(o_cells, d_cells)
        when = local_time(departure, self.tz_)
        vcode = self.vehicle_codes(vehicle)
        if matrix:
            o_lat, o_lng, o_row = o_lat[:, None], o_lng[:, None], o_row[:, None]
            d_lat, d_lng, d_row = d_lat[None, :], d_lng[None, :], d_row[None, :]
            o_id, d_id = o_id[:, None], d_id[None, :]
            when = LocalTime(_per_origin(when.hour_of_week), _per_origin(when.clock_hour))
            vcode = _per_origin(vcode)
        how = when.hour_of_week
        shape = np.broadcast_shapes(o_lat.shape, d_lat.shape, how.shape, vcode.shape)
        cols = _pair_columns(o_lat, o_lng, d_lat, d_lng)
        cols["same_zone"] = (o_id == d_id).astype(np.float64)
        stats = (self._table_stats(o_row, how), self._table_stats(d_row, how))
        X = _assemble(cols, when, self.how_table_[how], vcode, stats, shape)
        return PairFeatures(X, shape, np.broadcast_to(cols["dist_km"] == 0.0, shape).ravel())

    def _table_stats(self, row: IntArray, how: IntArray) -> ZoneStats:
        t = self.zone_table_
        return ZoneStats(t[row, 0], t[row, 1], t[row, 2], self.zone_how_table_[row, how])

    # --- training: a leg table, point in time ----------------------------------------------
    def transform(
        self, legs: pd.DataFrame, *, point_in_time: bool = False
    ) -> npt.NDArray[np.float32]:
        """Features of a leg table; ``point_in_time`` reads each leg's profiles as of its day.

        Training rows use ``point_in_time=True`` (no leg sees its own day); serving and test
        rows use the frozen tables, which is what the bundle does.
        """
        check_is_fitted(self, "zone_table_")
        _require(legs, LEG_INPUT)
        vehicle = _vehicle_values(legs.get(s.VEHICLE_TYPE), len(legs))
        if not point_in_time:
            return self.pairs(
                legs[O_LAT], legs[O_LNG], legs[D_LAT], legs[D_LNG], legs[DEPART], vehicle
            ).X
        o_lat, o_lng, d_lat, d_lng = (
            legs[c].to_numpy(dtype=np.float64) for c in (O_LAT, O_LNG, D_LAT, D_LNG)
        )
        o_cell = zone_cells(o_lat, o_lng, self.h3_resolution)
        d_cell = zone_cells(d_lat, d_lng, self.h3_resolution)
        when = local_time(legs[DEPART], self.tz_)
        day = local_day(legs[DEPART].dt.tz_convert(self.tz_))
        how = when.hour_of_week
        cols = _pair_columns(o_lat, o_lng, d_lat, d_lng)
        cols["same_zone"] = ((o_cell == d_cell) & (o_cell != "")).astype(np.float64)
        stats = (self._pit_stats(o_cell, how, day), self._pit_stats(d_cell, how, day))
        city = self.how_.lookup(how.astype(str), day).ratio(_MIN, _KM)
        vcode = _codes(self.vehicles_, vehicle)
        return _assemble(cols, when, city, vcode, stats, (len(legs),))

    def _pit_stats(self, cell: npt.NDArray[np.str_], how: IntArray, day: IntArray) -> ZoneStats:
        z = self.zone_.lookup(cell, day)
        zh = self.zone_how_.lookup(_join(cell, how.astype(str)), day)
        return ZoneStats(z.ratio(_MIN, _KM), z.mean(_MIN), z.n, zh.ratio(_MIN, _KM))

    def reference_minutes(self, dist_km: npt.ArrayLike) -> FloatArray:
        """The booster's offset: overhead + pace x km, fitted on all training legs.

        Boosters predict a correction to this line, so pairs longer than any training leg
        extrapolate along it instead of flattening at the longest leaf value.
        """
        check_is_fitted(self, "reference_")
        overhead, pace = self.reference_
        return overhead + pace * np.asarray(dist_km, dtype=np.float64)

    def get_feature_names_out(self, input_features: object = None) -> npt.NDArray[np.object_]:
        return np.asarray(feature_names(), dtype=object)


def _assemble(
    cols: dict[str, FloatArray],
    when: LocalTime,
    city_pace: FloatArray,
    vehicle: FloatArray,
    stats: tuple[ZoneStats, ZoneStats],
    shape: tuple[int, ...],
) -> npt.NDArray[np.float32]:
    cols = dict(cols)
    cols["hour_of_week"] = when.hour_of_week.astype(np.float64)
    cols["clock_hour"] = when.clock_hour
    cols["how_min_per_km"] = city_pace
    cols["vehicle"] = vehicle
    for end, st in zip(SPEC.ends, stats, strict=True):
        for stat in SPEC.zone_stats:
            cols[f"{end}_zone_{stat}"] = getattr(st, stat)
    # trees cannot multiply: hand them distance x the two ends' pace at this hour
    pace = (stats[0].how_min_per_km + stats[1].how_min_per_km) / 2.0
    cols["est_min"] = cols["dist_km"] * pace
    names = feature_names()
    X = np.empty((int(np.prod(shape)), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        X[:, j] = np.broadcast_to(cols[name], shape).ravel()
    return X


def _reference_line(km: FloatArray, minutes: FloatArray, bins: int = 20) -> tuple[float, float]:
    """Overhead and min/km of a line through the medians of distance bins: robust to the long
    breaks that hide inside labels, and cheap. Both are kept >= 0 so the line never decreases."""
    ok = np.isfinite(km) & np.isfinite(minutes)
    km, minutes = km[ok], minutes[ok]
    if len(km) < 2 or np.ptp(km) == 0:
        return (float(np.median(minutes)) if len(minutes) else 0.0, 0.0)
    edges = np.unique(np.quantile(km, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, km, side="right") - 1, 0, len(edges) - 2)
    frame = pd.DataFrame({"b": which, "km": km, "min": minutes}).groupby("b")
    med, n = frame.median(), frame.size()
    if len(med) < 2:
        return (float(np.median(minutes)), 0.0)
    pace, overhead = np.polyfit(med["km"], med["min"], 1, w=np.sqrt(n.to_numpy()))
    pace = max(float(pace), 0.0)
    overhead = max(float(np.median(minutes - pace * km)), 0.0)
    return (overhead, pace)


def _pair_columns(
    o_lat: FloatArray, o_lng: FloatArray, d_lat: FloatArray, d_lng: FloatArray
) -> dict[str, FloatArray]:
    """Straight-line distance and bearing (sin: east, cos: north); the model learns detours."""
    mid = np.radians((o_lat + d_lat) / 2.0)
    dx = (d_lng - o_lng) * KM_PER_DEG_LNG_EQUATOR * np.cos(mid)
    dy = (d_lat - o_lat) * KM_PER_DEG_LAT
    norm = np.hypot(dx, dy)
    with np.errstate(divide="ignore", invalid="ignore"):
        sin, cos = np.where(norm > 0, dx / norm, 0.0), np.where(norm > 0, dy / norm, 0.0)
    return {
        "dist_km": haversine_km(o_lat, o_lng, d_lat, d_lng),
        "bearing_sin": sin,
        "bearing_cos": cos,
    }


def _cell_ids(
    o_cells: npt.NDArray[np.str_], d_cells: npt.NDArray[np.str_]
) -> tuple[IntArray, IntArray]:
    """One integer per distinct cell over origins and destinations, so zones compare by id
    even when the profile has never seen them (two invalid points are not the same zone)."""
    cells = np.r_[o_cells, d_cells]
    ids = pd.factorize(cells)[0].astype(np.int64)
    invalid = cells == ""
    ids[invalid] = -np.arange(1, int(invalid.sum()) + 1)
    return ids[: len(o_cells)], ids[len(o_cells) :]


def _per_origin(values: npt.NDArray[_T]) -> npt.NDArray[_T]:
    """A 1-d per-origin array becomes a column, so it broadcasts across destinations."""
    return values[:, None] if values.ndim == 1 else values


def _join(a: npt.NDArray[np.str_], b: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    return np.char.add(np.char.add(a.astype(str), "|"), b.astype(str))


def _vehicle_values(column: pd.Series | None, n: int) -> npt.NDArray[np.str_]:
    if column is None:
        return np.full(n, s.VehicleType.UNKNOWN.value, dtype=object).astype(str)
    values = pd.Series(column, dtype="string").str.lower().fillna(s.VehicleType.UNKNOWN.value)
    return values.to_numpy(dtype=str)


def _codes(vocab: pd.Index, values: npt.NDArray[np.str_]) -> FloatArray:
    codes = vocab.get_indexer(pd.Index(values)).astype(np.float64)
    codes[codes < 0] = np.nan  # unseen category: LightGBM treats it as missing
    return codes


def _require(frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"legs lack column(s): {', '.join(missing)}")
