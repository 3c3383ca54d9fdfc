"""Build the example requests in ``serving/examples/`` from a deliveries table.

The committed examples come from the main job's seeded synthetic city (``./dev.sh demo``), so
the README's ``curl`` lines work as written against the service it starts:

    python -m serving.example_requests data/ingested/deliveries.parquet \
        data/demand_hourly.parquet serving/examples
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from features import schema as s

ROUTE_STOPS = 50


def _iso(ts: pd.Timestamp) -> str:
    return ts.isoformat()


def _stop(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stop_id": str(row[s.STOP_ID]),
        "lat": round(float(row[s.LAT]), 6),
        "lng": round(float(row[s.LNG]), 6),
    }
    if pd.notna(row[s.AOI_ID]):
        out["aoi_id"] = str(row[s.AOI_ID])
    if pd.notna(row[s.STOP_TYPE]):
        out["stop_type"] = str(row[s.STOP_TYPE])
    out["packages"] = int(row[s.PACKAGES])
    if pd.notna(row.get(s.WINDOW_START)):
        out["booked_window_start"] = _iso(row[s.WINDOW_START])
        if pd.notna(row.get(s.WINDOW_END)):
            out["booked_window_end"] = _iso(row[s.WINDOW_END])
    return out


def route_request(route: pd.DataFrame, n_stops: int | None = None) -> dict[str, Any]:
    """An ordered ``/v1/eta`` request at dispatch for one route of a deliveries table: the
    courier at the depot, the stops (the first ``n_stops``, all by default) in planned order."""
    route = route.sort_values(s.PLANNED_SEQ)
    first = route.iloc[0]
    courier = {
        "time": _iso(first[s.DISPATCH_TIME]),
        "lat": round(float(first[s.DEPOT_LAT]), 6),
        "lng": round(float(first[s.DEPOT_LNG]), 6),
        "courier_id": str(first[s.COURIER_ID]),
        "vehicle_type": str(first[s.VEHICLE_TYPE]),
        "route_started_at": _iso(first[s.DISPATCH_TIME]),
        "stops_done": 0,
        "km_done": 0.0,
        "depot_lat": round(float(first[s.DEPOT_LAT]), 6),
        "depot_lng": round(float(first[s.DEPOT_LNG]), 6),
    }
    rows = route if n_stops is None else route.head(n_stops)
    return {"mode": "ordered", "courier": courier, "stops": [_stop(r) for _, r in rows.iterrows()]}


def eta_examples(deliveries: pd.DataFrame, n_stops: int = ROUTE_STOPS) -> dict[str, Any]:
    """An ordered request at dispatch for the last day's longest route (its first ``n_stops``
    stops in planned order), the same stops as an unordered set, and a matrix request."""
    last_day = deliveries[s.DISPATCH_TIME].max().normalize()
    day = deliveries[deliveries[s.DISPATCH_TIME] >= last_day]
    sizes = day.groupby(s.ROUTE_ID).size()
    if sizes.max() < n_stops:
        raise ValueError(f"deliveries: no route of the last day has {n_stops} stops")
    route = day[day[s.ROUTE_ID] == sizes.idxmax()]
    ordered = route_request(route, n_stops)
    courier = ordered["courier"]
    stops = ordered["stops"]
    unordered = {
        "mode": "unordered",
        "courier": courier,
        "stops": sorted(stops[:20], key=lambda x: x["stop_id"]),
    }
    points = [{"lat": x["lat"], "lng": x["lng"]} for x in stops[:10]]
    matrix = {
        "origins": [{"lat": courier["lat"], "lng": courier["lng"]}, *points[:4]],
        "destinations": points,
        "departure_time": courier["time"],
        "vehicle_type": courier["vehicle_type"],
    }
    return {"eta.json": ordered, "eta_unordered.json": unordered, "eta_matrix.json": matrix}


def demand_example(hourly: pd.DataFrame, n_zones: int = 3) -> dict[str, Any]:
    """The day after the demand store ends, for its busiest zones, re-planned at 12:00 from
    the morning's volume (here: the same hours a week earlier, standing in for today's)."""
    last = pd.Timestamp(hourly[s.TS].max())
    date = (last + pd.Timedelta(hours=1)).normalize()
    busiest = hourly.groupby(s.ZONE_ID)[s.VOLUME].sum().nlargest(n_zones).index.astype(str)
    week_ago = hourly[
        (hourly[s.TS] >= date - pd.Timedelta(days=7))
        & (hourly[s.TS] < date - pd.Timedelta(days=7) + pd.Timedelta(hours=12))
        & (hourly[s.VOLUME] > 0)
    ]
    observed = [
        {"zone_id": str(r[s.ZONE_ID]), "hour": int(r[s.TS].hour), "volume": float(r[s.VOLUME])}
        for _, r in week_ago.sort_values([s.ZONE_ID, s.TS]).iterrows()
    ]
    return {
        "date": date.date().isoformat(),
        "zones": list(busiest),
        "observed": observed,
        "cutoff_hour": 12,
        "days": 7,
    }


def write_examples(deliveries: pd.DataFrame, hourly: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {**eta_examples(deliveries), "demand.json": demand_example(hourly)}
    paths = []
    for name, body in files.items():
        path = out / name
        path.write_text(json.dumps(body, indent=1) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str]) -> None:
    deliveries, hourly, out = argv
    for p in write_examples(pd.read_parquet(deliveries), pd.read_parquet(hourly), Path(out)):
        print(p)


if __name__ == "__main__":
    main(sys.argv[1:])
