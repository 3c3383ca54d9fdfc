"""ETA queries: a courier's state and the stops still in hand, as arrays.

Training examples mirror real queries: for every route, one query at dispatch (position = the
depot) and one right after each completed stop (position = that stop); the targets of a query
are the stops already in the courier's hands and not yet delivered (ready <= t < arrival),
labelled with the minutes until their arrival, kept in (0, max_label_min].

The service builds the same ``QueryBatch`` from a request, so both paths share one feature code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from features import schema as s
from features.geo import haversine_km

if TYPE_CHECKING:  # pandas and the profiles build training queries; a request needs neither
    import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ObjArray = npt.NDArray[np.object_]

MAX_LABEL_MIN = 240.0
MIN_ROUTE_STOPS = 3


@dataclass(frozen=True)
class QueryBatch:
    """Queries (``q_*``, one per courier state) and their targets (``t_*``, sorted by query)."""

    q_route: ObjArray
    q_courier: ObjArray
    q_vehicle: ObjArray
    q_time: FloatArray  # epoch seconds
    q_day: IntArray  # local day number of the query moment
    q_route_day: IntArray  # local day of the route's dispatch: the split key of backtests
    q_clock_min: FloatArray  # local minutes since midnight
    q_weekday: IntArray  # 0 = Monday
    q_lat: FloatArray
    q_lng: FloatArray
    q_depot_lat: FloatArray
    q_depot_lng: FloatArray
    q_elapsed_min: FloatArray  # since dispatch; NaN when unknown
    q_n_done: FloatArray  # stops delivered so far on this route
    q_km_done: FloatArray  # km along the stops delivered so far
    q_last_aoi: ObjArray  # area/building of the last delivered stop ("" when none)
    t_query: IntArray
    t_stop_id: ObjArray
    t_lat: FloatArray
    t_lng: FloatArray
    t_zone: ObjArray
    t_aoi: ObjArray
    t_stop_type: ObjArray
    t_packages: FloatArray
    t_ready_min: FloatArray  # minutes the parcel has been in hand at query time
    t_seq: IntArray  # position in the planned order among the query's targets (0 = next)
    t_aoi_done: FloatArray  # stops in the same area already delivered on this route
    t_label_min: FloatArray  # minutes to arrival; NaN when unknown (serving)
    t_planned_min: FloatArray  # routing engine's planned arrival, minutes from query; NaN if none
    t_window_start_min: FloatArray  # the customer's booked window, minutes from query; NaN if none
    t_window_end_min: FloatArray

    @property
    def n_queries(self) -> int:
        return len(self.q_time)

    @property
    def n_targets(self) -> int:
        return len(self.t_query)

    def take_queries(self, keep: npt.NDArray[np.bool_]) -> QueryBatch:
        """The batch restricted to some queries (their targets follow, indices renumbered)."""
        new_index = np.cumsum(keep) - 1
        t_keep = keep[self.t_query]
        values = {}
        for f in fields(self):
            arr = getattr(self, f.name)
            values[f.name] = arr[keep] if f.name.startswith("q_") else arr[t_keep]
        values["t_query"] = new_index[self.t_query[t_keep]]
        return QueryBatch(**values)


def concat_batches(batches: list[QueryBatch]) -> QueryBatch:
    """One batch of several (queries in the given order, target indices renumbered)."""
    if not batches:
        raise ValueError("batches: need at least one query batch")
    offsets = np.cumsum([0, *(b.n_queries for b in batches[:-1])])
    values = {
        f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(QueryBatch)
    }
    values["t_query"] = np.concatenate(
        [b.t_query + o for b, o in zip(batches, offsets, strict=True)]
    )
    return QueryBatch(**values)


def _str(values: pd.Series) -> ObjArray:
    return values.astype("string").fillna("").to_numpy(dtype=object)


def queries_from_deliveries(
    deliveries: pd.DataFrame, *, max_label_min: float = MAX_LABEL_MIN
) -> QueryBatch:
    """Every training query of every route with at least ``MIN_ROUTE_STOPS`` stops.

    The visit order is (arrival_time, stop_id); the ordered mode's sequence is that order.
    """
    import pandas as pd

    from features.profiles import local_clock_min, local_day

    d = deliveries.sort_values([s.ROUTE_ID, s.ARRIVAL_TIME, s.STOP_ID], kind="stable")
    d = d[d.groupby(s.ROUTE_ID, sort=False)[s.STOP_ID].transform("size") >= MIN_ROUTE_STOPS]
    d = d.reset_index(drop=True)
    route_codes, route_names = pd.factorize(d[s.ROUTE_ID], sort=False)
    n_stops = np.bincount(route_codes)
    route_start = np.r_[0, np.cumsum(n_stops)[:-1]]
    pos_in_route = np.arange(len(d)) - route_start[route_codes]

    arrival = d[s.ARRIVAL_TIME].astype("int64").to_numpy() / 1e9
    ready = d[s.READY_TIME].astype("int64").to_numpy() / 1e9
    dispatch = d[s.DISPATCH_TIME].astype("int64").to_numpy() / 1e9
    lat, lng = d[s.LAT].to_numpy(float), d[s.LNG].to_numpy(float)
    leg_km = haversine_km(np.r_[np.nan, lat[:-1]], np.r_[np.nan, lng[:-1]], lat, lng)
    leg_km[pos_in_route == 0] = 0.0
    km_along = np.cumsum(leg_km)
    km_along -= km_along[route_start[route_codes]]
    depot_lat = d[s.DEPOT_LAT].to_numpy(float)
    depot_lng = d[s.DEPOT_LNG].to_numpy(float)
    first_leg = haversine_km(depot_lat, depot_lng, lat, lng)[route_start]

    # Queries: k = -1 (dispatch) and k = 0..n-1 (after stop k) for every route.
    q_route_code = np.repeat(np.arange(len(n_stops)), n_stops + 1)
    q_k = (
        np.arange(len(q_route_code))
        - np.repeat(route_start + np.arange(len(n_stops)), n_stops + 1)
        - 1
    )
    row_of_k = route_start[q_route_code] + np.maximum(q_k, 0)
    at_dispatch = q_k < 0
    q_time = np.where(at_dispatch, dispatch[row_of_k], arrival[row_of_k])
    q_lat = np.where(at_dispatch, depot_lat[row_of_k], lat[row_of_k])
    q_lng = np.where(at_dispatch, depot_lng[row_of_k], lng[row_of_k])
    q_km = np.where(at_dispatch, 0.0, km_along[row_of_k] + np.nan_to_num(first_leg[q_route_code]))

    # Candidate pairs: each query with every stop after it in visit order, then filter.
    n_after = n_stops[q_route_code] - (q_k + 1)
    pair_q = np.repeat(np.arange(len(q_route_code)), n_after)
    offset = np.arange(len(pair_q)) - np.repeat(np.cumsum(n_after) - n_after, n_after)
    pair_row = route_start[q_route_code[pair_q]] + q_k[pair_q] + 1 + offset
    label = (arrival[pair_row] - q_time[pair_q]) / 60.0
    keep = (ready[pair_row] <= q_time[pair_q]) & (label > 0) & (label <= max_label_min)
    pair_q, pair_row, label = pair_q[keep], pair_row[keep], label[keep]
    q_keep = np.bincount(pair_q, minlength=len(q_route_code)) > 0
    q_keep &= np.isfinite(q_lat) & np.isfinite(q_lng)  # no known depot: no dispatch query
    if not q_keep.any():
        raise ValueError("no ETA queries: no route has stops in hand after a query moment")

    times = pd.Series(pd.to_datetime(q_time, unit="s", utc=True)).dt.tz_convert(
        d[s.ARRIVAL_TIME].dt.tz
    )
    aoi = _str(d[s.AOI_ID])
    aoi_done = _aoi_done(aoi, route_codes, pos_in_route, q_k, pair_q, pair_row)
    planned, w_start, w_end = (
        _epoch_or_nan(d, c) for c in (s.PLANNED_ARRIVAL, s.WINDOW_START, s.WINDOW_END)
    )
    # Ordered mode trains on the order the stops were visited: a plan that was followed (the
    # LaDe protocol's definition); a routing engine's plan is served as the order it will be.
    order_key = pos_in_route[pair_row]
    batch = QueryBatch(
        q_route=route_names.to_numpy(dtype=object)[q_route_code],
        q_courier=_str(d[s.COURIER_ID])[row_of_k],
        q_vehicle=_str(d[s.VEHICLE_TYPE])[row_of_k],
        q_time=q_time,
        q_day=local_day(times),
        q_route_day=local_day(d[s.DISPATCH_TIME])[row_of_k],
        q_clock_min=local_clock_min(times),
        q_weekday=np.asarray(times.dt.weekday, dtype=np.int64),
        q_lat=q_lat,
        q_lng=q_lng,
        q_depot_lat=depot_lat[row_of_k],
        q_depot_lng=depot_lng[row_of_k],
        q_elapsed_min=(q_time - dispatch[row_of_k]) / 60.0,
        q_n_done=(q_k + 1).astype(np.float64),
        q_km_done=q_km,
        q_last_aoi=np.where(at_dispatch, "", aoi[row_of_k]).astype(object),
        t_query=pair_q.astype(np.int64),
        t_stop_id=_str(d[s.STOP_ID])[pair_row],
        t_lat=lat[pair_row],
        t_lng=lng[pair_row],
        t_zone=_str(d[s.ZONE_ID])[pair_row],
        t_aoi=aoi[pair_row],
        t_stop_type=_str(d[s.STOP_TYPE])[pair_row],
        t_packages=d[s.PACKAGES].astype("float64").fillna(1.0).to_numpy()[pair_row],
        t_ready_min=(q_time[pair_q] - ready[pair_row]) / 60.0,
        t_seq=segment_rank(pair_q, order_key.astype(np.float64)),
        t_aoi_done=aoi_done,
        t_label_min=label,
        t_planned_min=(planned[pair_row] - q_time[pair_q]) / 60.0,
        t_window_start_min=(w_start[pair_row] - q_time[pair_q]) / 60.0,
        t_window_end_min=(w_end[pair_row] - q_time[pair_q]) / 60.0,
    )
    return batch.take_queries(q_keep)


def _epoch_or_nan(d: pd.DataFrame, column: str) -> FloatArray:
    """An optional timestamp column as epoch seconds, NaN where missing (or no such column)."""
    if column not in d:
        return np.full(len(d), np.nan)
    values = d[column]
    return np.where(values.isna().to_numpy(), np.nan, values.astype("int64").to_numpy() / 1e9)


def _aoi_done(
    aoi: ObjArray,
    route_codes: IntArray,
    pos_in_route: IntArray,
    q_k: IntArray,
    pair_q: IntArray,
    pair_row: IntArray,
) -> FloatArray:
    """For each pair, stops of the target's area already delivered on the route by the query."""
    import pandas as pd

    key = pd.factorize(pd.Series(route_codes.astype(str)) + "|" + pd.Series(aoi.astype(str)))[0]
    span = int(pos_in_route.max()) + 2
    composite = np.sort(key.astype(np.int64) * span + pos_in_route)
    target_key = key[pair_row].astype(np.int64) * span
    done_upto = target_key + q_k[pair_q]  # positions 0..k are done (k = -1 at dispatch)
    count = np.searchsorted(composite, done_upto, side="right") - np.searchsorted(
        composite, target_key, side="left"
    )
    return np.where(aoi[pair_row] == "", np.nan, count.astype(np.float64))


def segment_rank(group: IntArray, value: FloatArray) -> IntArray:
    """0-based rank of ``value`` within each group (groups contiguous or not; ties by order)."""
    order = np.lexsort((np.arange(len(group)), value, group))
    sorted_group = group[order]
    starts = np.concatenate(([0], np.flatnonzero(sorted_group[1:] != sorted_group[:-1]) + 1))
    group_start = np.repeat(starts, np.diff(np.append(starts, len(group))))
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - group_start
    return rank
