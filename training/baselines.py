"""ETA baselines, fitted on the training window and scored on exactly the model's rows.

- ``speed``: the LaDe paper's SPEED -- haversine km to the stop / the courier's speed, where a
  courier's speed is the median over his training courier-days (>= 2 stops, positive elapsed
  time) of km along the visit order / minutes from first to last delivery; unseen couriers
  get the median over all such courier-days.
- ``const_median``: the training median label.
- ``rank_median`` (ordered): the training median label by position among the remaining stops.
- ``speed_path`` (ordered): km along the planned sequence / the courier's speed.
- ``zone_hour``: the training mean label by (stop zone, query hour), falling back to the zone,
  then to the overall mean.
- ``planned``: the routing engine's planned arrival, where the data has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from features import schema as s
from features.eta_features import Mode, _leg_km, _path_along, _sorted_along
from features.eta_queries import QueryBatch
from features.geo import haversine_km

FloatArray = npt.NDArray[np.float64]


def courier_day_speeds(deliveries: pd.DataFrame) -> pd.DataFrame:
    """km/min of each courier-day: km along the visit order over first-to-last minutes."""
    d = deliveries.sort_values([s.ROUTE_ID, s.ARRIVAL_TIME, s.STOP_ID], kind="stable")
    route = d[s.ROUTE_ID].to_numpy()
    first = np.r_[True, route[1:] != route[:-1]]
    lat, lng = d[s.LAT].to_numpy(float), d[s.LNG].to_numpy(float)
    km = haversine_km(np.r_[np.nan, lat[:-1]], np.r_[np.nan, lng[:-1]], lat, lng)
    km[first] = 0.0
    t = d[s.ARRIVAL_TIME].astype("int64").to_numpy() / 6e10
    g = pd.DataFrame({"route": route, "courier": d[s.COURIER_ID].to_numpy(), "km": km, "t": t})
    agg = g.groupby("route", sort=False).agg(
        courier=("courier", "first"),
        km=("km", "sum"),
        t0=("t", "min"),
        t1=("t", "max"),
        n=("t", "size"),
    )
    agg["minutes"] = agg["t1"] - agg["t0"]
    agg = agg[(agg["n"] >= 2) & (agg["minutes"] > 0)]
    agg["speed"] = agg["km"] / agg["minutes"]
    return agg[["courier", "speed"]]


@dataclass(frozen=True)
class Baselines:
    courier_speed: dict[str, float]
    global_speed: float
    const_median: float
    rank_median: FloatArray
    zone_hour: dict[tuple[str, int], float]
    zone_mean: dict[str, float]
    overall_mean: float

    def speed_of(self, couriers: npt.NDArray[np.object_]) -> FloatArray:
        return np.array([self.courier_speed.get(str(c), self.global_speed) for c in couriers])

    def predict(self, batch: QueryBatch, mode: Mode) -> dict[str, FloatArray]:
        """Each applicable baseline's minutes for every target row of ``batch``."""
        q = batch.t_query
        speed = self.speed_of(batch.q_courier)[q]
        dist = haversine_km(batch.q_lat[q], batch.q_lng[q], batch.t_lat, batch.t_lng)
        hour = (batch.q_clock_min // 60).astype(int)[q]
        zone_hour = np.array(
            [
                self.zone_hour.get((z, h), self.zone_mean.get(z, self.overall_mean))
                for z, h in zip(batch.t_zone, hour, strict=True)
            ]
        )
        out = {
            "speed": np.nan_to_num(dist / speed, nan=self.const_median),
            "const_median": np.full(batch.n_targets, self.const_median),
            "zone_hour": zone_hour,
        }
        if mode == "ordered":
            pos = np.minimum(batch.t_seq, len(self.rank_median) - 1)
            out["rank_median"] = self.rank_median[pos]
            along = _sorted_along(q, batch.t_seq)
            path = _path_along(along, _leg_km(along, batch))
            out["speed_path"] = np.nan_to_num(path / speed, nan=self.const_median)
        if np.isfinite(batch.t_planned_min).all() and batch.n_targets:
            out["planned"] = batch.t_planned_min
        return out


def fit_baselines(history: pd.DataFrame, train: QueryBatch) -> Baselines:
    """Fit every baseline on the training window only."""
    speeds = courier_day_speeds(history)
    per_courier = speeds.groupby("courier")["speed"].median()
    y = train.t_label_min
    ranks = pd.Series(y).groupby(train.t_seq).median().sort_index()
    rank_median = np.asarray(ranks.reindex(range(int(ranks.index.max()) + 1)).ffill(), np.float64)
    hour = (train.q_clock_min // 60).astype(int)[train.t_query]
    frame = pd.DataFrame({"zone": train.t_zone, "hour": hour, "y": y})
    zh = frame.groupby(["zone", "hour"])["y"].mean()
    return Baselines(
        courier_speed={str(k): float(v) for k, v in per_courier.items()},
        global_speed=float(speeds["speed"].median()),
        const_median=float(np.median(y)),
        rank_median=rank_median,
        zone_hour={
            (str(z), int(h)): float(v)
            for z, h, v in zip(
                zh.index.get_level_values(0), zh.index.get_level_values(1), zh, strict=True
            )
        },
        zone_mean={str(k): float(v) for k, v in frame.groupby("zone")["y"].mean().items()},
        overall_mean=float(np.mean(y)),
    )
