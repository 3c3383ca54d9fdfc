"""The main job: get deliveries (simulate a city or ingest the user's file), validate, build
demand tables. Later stages (train, register, serve) hook in here so the README's first
command always runs the whole product end to end."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from features import schema as s
from features.demand import daily_from_hourly, demand_from_deliveries, validate_demand
from features.ingest import IngestOptions, ingest, write_ingest

Report = Callable[[str], None]


@dataclass(frozen=True)
class MainOptions:
    out: Path = Path("data")
    data: Path | None = None  # the user's deliveries; None simulates a city
    fmt: str = "parquet"
    mapping: Path | None = None
    tz: str = s.DEFAULT_TZ
    days: int = 60
    couriers: int = 60
    seed: int = 7
    train: bool = True
    eta_config: Path | None = Path("configs/eta_demo.yaml")
    demand_config: Path | None = Path("configs/demand_demo.yaml")


@dataclass(frozen=True)
class MainResult:
    deliveries: Path
    quarantine: Path
    demand_hourly: Path
    demand_daily: Path
    n_input: int
    n_valid: int
    quarantine_counts: dict[str, int]
    n_routes: int
    n_zones: int
    eta: Any = None  # training.pipeline_eta.TrainEtaOutcome when trained
    demand: Any = None  # training.pipeline_demand.TrainDemandOutcome when trained


def run_main(options: MainOptions, report: Report = print) -> MainResult:
    """Simulate or load deliveries, validate them, write the demand tables."""
    options.out.mkdir(parents=True, exist_ok=True)
    planner_demand: pd.DataFrame | None = None
    if options.data is None:
        from citysim import CityConfig, simulate_to_parquet

        raw_dir = options.out / "sim"
        cfg = dataclasses.replace(
            CityConfig(), days=options.days, couriers=options.couriers, seed=options.seed
        )
        report(
            f"simulating {cfg.days} days x {cfg.couriers} couriers (seed {cfg.seed}) -> {raw_dir}"
        )
        simulate_to_parquet(cfg, raw_dir, partition_by_date=False)
        source, ingest_options = (
            raw_dir / "deliveries.parquet",
            IngestOptions(fmt="parquet", tz=cfg.tz),
        )
        planner_demand = pd.read_parquet(raw_dir / "demand.parquet")
    else:
        source = options.data
        ingest_options = IngestOptions(fmt=options.fmt, mapping=options.mapping, tz=options.tz)  # type: ignore[arg-type]
    report(f"ingesting {source}")
    result = ingest(source, ingest_options)
    paths = write_ingest(result, options.out / "ingested")
    report(f"{result.n_valid:,} valid stops, {result.n_quarantined:,} quarantined")

    if planner_demand is not None:
        hourly = validate_demand(planner_demand, "h", where="simulated demand").table
    else:
        hourly = demand_from_deliveries(result.deliveries, "h")
    daily = daily_from_hourly(hourly)
    hourly_path, daily_path = (
        options.out / "demand_hourly.parquet",
        options.out / "demand_daily.parquet",
    )
    hourly.to_parquet(hourly_path, index=False)
    daily.to_parquet(daily_path, index=False)
    eta = demand = None
    if options.train:
        from doorstep.config import load_yaml
        from training.eta import EtaConfig
        from training.pipeline_eta import train_and_register_eta

        path = options.eta_config if options.eta_config and options.eta_config.exists() else None
        report("training the ETA and leg models, logging to MLflow, registering doorstep-eta")
        eta = train_and_register_eta(
            result.deliveries, load_yaml(EtaConfig, path), data_source=str(source)
        )
        verdict = "champion" if eta.decision is not None and eta.decision.promoted else "challenger"
        report(f"doorstep-eta version {eta.version} -> {verdict}")
        demand = _train_demand(options, hourly, daily, str(source), report)
    return MainResult(
        deliveries=paths.deliveries,
        quarantine=paths.quarantine,
        demand_hourly=hourly_path,
        demand_daily=daily_path,
        n_input=result.n_input,
        n_valid=result.n_valid,
        quarantine_counts=result.counts,
        n_routes=int(result.deliveries[s.ROUTE_ID].nunique()),
        n_zones=int(result.deliveries[s.ZONE_ID].nunique()),
        eta=eta,
        demand=demand,
    )


def _train_demand(
    options: MainOptions, hourly: pd.DataFrame, daily: pd.DataFrame, source: str, report: Report
) -> Any:
    """Train and register doorstep-demand (hourly + daily) from the tables just written. A
    history too short for the configured windows is reported and skipped: the ETA model is
    already registered and stays useful."""
    from training.pipeline_demand import load_demand_config, train_and_register_demand

    path = options.demand_config
    config = load_demand_config(path if path and path.exists() else None)
    report("training the demand models, logging to MLflow, registering doorstep-demand")
    try:
        demand = train_and_register_demand(hourly, daily, config, data_source=source)
    except ValueError as exc:
        report(f"demand model not trained: {exc}")
        return None
    verdict = (
        "champion" if demand.decision is not None and demand.decision.promoted else "challenger"
    )
    report(f"doorstep-demand version {demand.version} -> {verdict}")
    return demand
