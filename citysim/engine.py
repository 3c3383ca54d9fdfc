"""Public entry points: simulate a city in memory, or stream it day by day to Parquet."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from citysim.city import City
from citysim.config import CityConfig
from citysim.day import Context, DayOutput, eve_orders, run_day
from citysim.fleet import build_city
from citysim.frames import (
    arrow_schema,
    concat,
    deliveries_frame,
    demand_frame,
    to_arrow,
)
from features import schema as s

Progress = Callable[[int, int], None]
DELIVERIES_FILE = "deliveries.parquet"
DELIVERIES_DIR = "deliveries"
DEMAND_FILE = "demand.parquet"
PART_FILE = "part-0.parquet"


@dataclass(frozen=True, eq=False)
class SimResult:
    """A simulated city: one row per stop, orders per zone-hour, and the city itself."""

    deliveries: pd.DataFrame
    demand: pd.DataFrame
    city: City


@dataclass(frozen=True)
class SimSummary:
    """What :func:`simulate_to_parquet` wrote."""

    deliveries: str
    demand: str
    days: int
    couriers: int
    zones: int
    routes: int
    stops: int
    parcels: int
    demand_rows: int
    odd_rows: int


def iter_days(cfg: CityConfig, city: City | None = None) -> Iterator[DayOutput]:
    """The days of ``cfg`` in order; each is independent of how many are consumed."""
    ctx = Context.create(cfg, city if city is not None else build_city(cfg))
    carry = eve_orders(ctx)
    for day in range(cfg.days):
        out, carry = run_day(ctx, day, carry)
        yield out


def simulate(cfg: CityConfig | None = None) -> SimResult:
    """Simulate the whole city in memory (fine up to a few million stops)."""
    cfg = cfg or CityConfig()
    city = build_city(cfg)
    days = list(iter_days(cfg, city))
    deliveries = deliveries_frame(concat([d.deliveries for d in days], s.DELIVERIES), cfg.tz)
    demand = demand_frame(concat([d.demand for d in days], s.DEMAND))
    return SimResult(deliveries, demand, city)


def simulate_to_parquet(
    cfg: CityConfig,
    out_dir: str | Path,
    partition_by_date: bool = True,
    progress: Progress | None = None,
) -> SimSummary:
    """Stream the city to Parquet one day at a time; memory stays that of one day.

    Deliveries go to ``out_dir/deliveries/route_date=YYYY-MM-DD/part-0.parquet`` (partitioned)
    or ``out_dir/deliveries.parquet`` (one row group per day); demand always to
    ``out_dir/demand.parquet`` (one row group per day). Earlier outputs there are replaced.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    part_dir, single = out / DELIVERIES_DIR, out / DELIVERIES_FILE
    if part_dir.exists():
        shutil.rmtree(part_dir)
    single.unlink(missing_ok=True)
    city = build_city(cfg)
    writer: pq.ParquetWriter | None = None
    demand_writer: pq.ParquetWriter | None = None
    totals = dict.fromkeys(("routes", "stops", "parcels", "demand_rows", "odd_rows"), 0)
    try:
        for k, day in enumerate(iter_days(cfg, city)):
            frame = deliveries_frame(day.deliveries, cfg.tz)
            demand = demand_frame(day.demand)
            if demand_writer is None:
                demand_schema = arrow_schema(demand)
                demand_writer = pq.ParquetWriter(out / DEMAND_FILE, demand_schema)
                schema = arrow_schema(frame)
            demand_writer.write_table(to_arrow(demand, demand_schema))
            if partition_by_date:
                path = part_dir / f"{s.ROUTE_DATE}={day.date.isoformat()}" / PART_FILE
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(to_arrow(frame, schema), path)
            else:
                if writer is None:
                    writer = pq.ParquetWriter(single, schema)
                writer.write_table(to_arrow(frame, schema))
            _add(totals, day, len(frame), len(demand))
            if progress is not None:
                progress(k + 1, cfg.days)
    finally:
        for w in (writer, demand_writer):
            if w is not None:
                w.close()
    return SimSummary(
        deliveries=str(part_dir if partition_by_date else single),
        demand=str(out / DEMAND_FILE),
        days=cfg.days,
        couriers=len(city.couriers),
        zones=len(city.zones),
        **totals,
    )


def _add(totals: dict[str, int], day: DayOutput, stops: int, demand_rows: int) -> None:
    totals["routes"] += day.routes
    totals["stops"] += stops
    totals["parcels"] += day.parcels
    totals["demand_rows"] += demand_rows
    totals["odd_rows"] += sum(day.odd.values())
