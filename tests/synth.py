"""A tiny seeded deliveries generator for unit tests (the real simulator is ``citysim``).

Routes of a few couriers over a few weeks: stops around a depot, visited mostly in planned
order, travel time from distance and a courier pace, service time per stop, noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import schema as s

TZ = "Asia/Shanghai"


def make_deliveries(
    days: int = 30, couriers: int = 4, stops: int = 8, seed: int = 0
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    booked = np.random.default_rng(seed + 10_000)  # its own stream: the routes stay as they were
    rows = []
    pace = rng.uniform(0.7, 1.3, couriers)
    aois = [f"b{i}" for i in range(12)]
    aoi_pos = rng.normal(0, 0.01, (12, 2))
    start = pd.Timestamp("2021-06-01 08:00", tz=TZ)
    for day in range(days):
        for c in range(couriers):
            route = f"c{c}-{day:03d}"
            dispatch = start + pd.Timedelta(days=day, minutes=float(rng.integers(0, 40)))
            t = dispatch
            pos = np.array([43.84, 126.55])
            idx = rng.choice(12, size=stops, replace=True)
            order = np.argsort(aoi_pos[idx, 0] + rng.normal(0, 0.003, stops))
            for seq, j in enumerate(idx[order]):
                target = np.array([43.84, 126.55]) + aoi_pos[j] + rng.normal(0, 0.0005, 2)
                km = float(np.hypot(*(target - pos)) * 111)
                travel = km * 4.0 * pace[c] * rng.lognormal(0, 0.2) + 1.0
                t = t + pd.Timedelta(minutes=travel)
                service = 2.0 + rng.exponential(2.0)
                # one stop in five books a 2-h window near its arrival (recorded, not waited for)
                slot = (t + pd.Timedelta(minutes=float(booked.normal(0, 30)))).floor("2h")
                window = booked.random() < 0.2
                rows.append(
                    {
                        s.ROUTE_ID: route,
                        s.COURIER_ID: f"c{c}",
                        s.VEHICLE_TYPE: "ebike" if c % 2 else "bike",
                        s.STOP_ID: f"{route}-{seq}",
                        s.LAT: target[0],
                        s.LNG: target[1],
                        s.DISPATCH_TIME: dispatch,
                        s.READY_TIME: dispatch,
                        s.DEPOT_LAT: 43.84,
                        s.DEPOT_LNG: 126.55,
                        s.AOI_ID: aois[j],
                        s.PLANNED_SEQ: seq,
                        s.ARRIVAL_TIME: t,
                        s.DEPARTURE_TIME: t + pd.Timedelta(minutes=service),
                        s.PACKAGES: int(rng.integers(1, 3)),
                        s.STOP_TYPE: "residential" if j % 3 else "business",
                        s.WINDOW_START: slot if window else pd.NaT,
                        s.WINDOW_END: slot + pd.Timedelta(hours=2) if window else pd.NaT,
                    }
                )
                t = t + pd.Timedelta(minutes=service)
                pos = target
    from features.ingest import ingest_frame

    return ingest_frame(pd.DataFrame(rows), TZ).deliveries
