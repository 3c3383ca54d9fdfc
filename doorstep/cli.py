"""The ``doorstep`` command line: thin commands over importable functions.

``simulate``, ``ingest``, ``demand-table`` and the ``benchmark`` commands are contracts that
other tools script against: their flags and outputs stay stable (see the README).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from features import schema as s
from features.issues import MissingColumnsError

app = typer.Typer(
    name="doorstep",
    help="ETAs and demand forecasts for last-mile delivery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err = Console(stderr=True)

EXIT_BAD_INPUT = 2


# the engine options of `train eta` and `train demand`
EngineOption = Annotated[
    str, typer.Option(help="pandas (this process) | dask (features and boosters on Dask)")
]
SchedulerOption = Annotated[
    str | None, typer.Option(help="Dask scheduler address (default: a local cluster)")
]
WorkersOption = Annotated[int, typer.Option(help="Local Dask cluster workers")]


def _engine_config(engine: str, scheduler: str | None, workers: int) -> Any:
    """The ``training.engine.EngineConfig`` of the engine options (a clear error otherwise)."""
    from training.engine import EngineConfig

    if engine not in ("pandas", "dask"):
        raise ValueError(f"--engine: must be pandas or dask, got {engine!r}")
    return EngineConfig(engine=engine, scheduler=scheduler, n_workers=workers)  # type: ignore[arg-type]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(EXIT_BAD_INPUT)


def _counts_table(title: str, counts: dict[str, int]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    for reason, n in counts.items():
        table.add_row(reason, f"{n:,}")
    return table


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output directory")] = Path("data/sim"),
    days: Annotated[int | None, typer.Option(help="Days to simulate")] = None,
    couriers: Annotated[int | None, typer.Option(help="Number of couriers")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed")] = None,
    config: Annotated[Path | None, typer.Option(help="City config YAML")] = None,
    partitioned: Annotated[
        bool, typer.Option(help="Stream day chunks to partitioned Parquet (large cities)")
    ] = False,
) -> None:
    """Simulate a city: writes OUT/deliveries.parquet and OUT/demand.parquet."""
    from citysim import CityConfig, simulate_to_parquet
    from doorstep.config import load_yaml

    cfg = load_yaml(CityConfig, config)
    overrides: dict[str, Any] = {
        k: v for k, v in (("days", days), ("couriers", couriers), ("seed", seed)) if v is not None
    }
    cfg = dataclasses.replace(cfg, **overrides)
    start = time.perf_counter()
    with console.status(f"simulating {cfg.days} days x {cfg.couriers} couriers") as status:
        summary = simulate_to_parquet(
            cfg,
            out,
            partition_by_date=partitioned,
            progress=lambda done, total: status.update(f"simulating day {done}/{total}"),
        )
    elapsed = time.perf_counter() - start
    table = Table(title=f"simulated city -> {out}", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in dataclasses.asdict(summary).items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    table.add_row("seconds", f"{elapsed:.1f}")
    console.print(table)


@app.command()
def ingest(
    path: Annotated[
        str,
        typer.Argument(
            help="Deliveries file (CSV, Parquet or LaDe), or with --format sql a database URL "
            "(sqlite:///deliveries.db, postgresql+psycopg://user@host/db)"
        ),
    ],
    format: Annotated[str, typer.Option("--format", help="lade | csv | parquet | sql")] = "parquet",
    out: Annotated[Path, typer.Option(help="Output directory")] = Path("data/ingested"),
    mapping: Annotated[
        Path | None, typer.Option(help="Column mapping YAML (csv/parquet/sql)")
    ] = None,
    query: Annotated[
        str | None,
        typer.Option(help="--format sql: a table name, or a SELECT statement to run"),
    ] = None,
    tz: Annotated[str, typer.Option(help="Time zone of naive timestamps")] = s.DEFAULT_TZ,
    year: Annotated[int, typer.Option(help="Year of LaDe's year-less dates")] = 2021,
    h3_resolution: Annotated[
        int, typer.Option(help="H3 resolution for zones")
    ] = s.DEFAULT_H3_RESOLUTION,
) -> None:
    """Validate deliveries: OUT/deliveries.parquet (valid) and OUT/quarantine.parquet."""
    from features.adapters.sql import redact
    from features.ingest import FORMATS, IngestOptions, write_ingest
    from features.ingest import ingest as run_ingest
    from features.validate import ValidationConfig

    if format not in FORMATS:
        raise _fail(f"--format: must be one of {', '.join(FORMATS)}, got {format!r}")
    options = IngestOptions(
        fmt=format,  # type: ignore[arg-type]
        # MLflow passes an absent parameter as "" (a Path of ".")
        mapping=mapping if mapping is not None and str(mapping) not in ("", ".") else None,
        tz=tz,
        year=year,
        validation=ValidationConfig(h3_resolution=h3_resolution),
        query=query or None,
    )
    shown = redact(path) if format == "sql" else path  # never print a database password
    try:
        with console.status(f"reading and validating {shown}"):
            result = run_ingest(path, options)
    except (MissingColumnsError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    paths = write_ingest(result, out)
    if result.counts:
        console.print(_counts_table("quarantined rows by reason", result.counts))
    console.print(
        f"{result.n_input:,} rows read, {result.n_valid:,} valid -> {paths.deliveries}, "
        f"{result.n_quarantined:,} quarantined -> {paths.quarantine}"
    )
    if result.n_valid == 0:
        raise _fail(f"{shown}: no valid rows (see {paths.quarantine})")


@app.command("demand-table")
def demand_table(
    path: Annotated[
        Path, typer.Argument(help="Changshu orders, deliveries Parquet, or a planner's table")
    ],
    format: Annotated[
        str, typer.Option("--format", help="changshu | deliveries | table")
    ] = "deliveries",
    freq: Annotated[str, typer.Option(help="h (hourly) | d (daily)")] = "d",
    out: Annotated[Path, typer.Option(help="Output Parquet or CSV file")] = Path(
        "data/demand.parquet"
    ),
) -> None:
    """Build a demand table (zone_id, ts, volume) with zero periods filled."""
    from features.demand import check_freq, complete_demand, demand_from_deliveries
    from features.ingest import read_deliveries

    try:
        freq = check_freq(freq)
        if format == "changshu":
            if freq != "d":
                raise ValueError("--freq: Changshu orders carry dates only, use --freq d")
            from features.adapters.changshu import read_changshu

            orders = read_changshu(path)
            table = complete_demand(orders.demand, freq)
            if len(orders.rejected):
                console.print(
                    _counts_table(
                        "rejected order rows",
                        {
                            str(k): int(v)
                            for k, v in orders.rejected[s.REASON].value_counts().items()
                        },
                    )
                )
        elif format == "deliveries":
            table = demand_from_deliveries(read_deliveries(path), freq)
        elif format == "table":
            from features.demand import read_demand_file, validate_demand

            read = validate_demand(read_demand_file(path), freq, where=str(path))
            table = read.table
            if len(read.quarantine):
                qpath = out.with_name(out.stem + "_quarantine.parquet")
                qpath.parent.mkdir(parents=True, exist_ok=True)
                read.quarantine.astype("string").to_parquet(qpath, index=False)
                console.print(_counts_table(f"quarantined rows -> {qpath}", read.counts))
        else:
            raise ValueError(f"--format: must be changshu, deliveries or table, got {format!r}")
    except (MissingColumnsError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table.to_csv(out, index=False)
    else:
        table.to_parquet(out, index=False)
    console.print(
        f"{len(table):,} rows, {table[s.ZONE_ID].nunique():,} zones, "
        f"{table[s.TS].min()} .. {table[s.TS].max()}, total volume {table[s.VOLUME].sum():,.0f} -> {out}"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working directory for tables and models")] = Path(
        "data"
    ),
    data: Annotated[
        Path | None, typer.Option(help="Your deliveries file (default: simulate)")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="lade | csv | parquet")] = "parquet",
    mapping: Annotated[Path | None, typer.Option(help="Column mapping YAML")] = None,
    tz: Annotated[str, typer.Option(help="Time zone of naive timestamps")] = s.DEFAULT_TZ,
    days: Annotated[int, typer.Option(help="Simulated days")] = 60,
    couriers: Annotated[int, typer.Option(help="Simulated couriers")] = 60,
    seed: Annotated[int, typer.Option(help="Simulation seed")] = 7,
    train: Annotated[bool, typer.Option(help="Train and register the models")] = True,
    serve: Annotated[bool, typer.Option(help="Then serve the champions over HTTP")] = True,
    port: Annotated[int, typer.Option(help="HTTP port of the service")] = 3000,
) -> None:
    """The main job end to end: simulate (or ingest your data), validate, build demand tables,
    train the models, log them to MLflow, register them, and serve them."""
    from doorstep.pipeline import MainOptions, run_main

    options = MainOptions(out, data, format, mapping, tz, days, couriers, seed, train)
    start = time.perf_counter()
    try:
        result = run_main(options, report=lambda msg: console.print(f"[cyan]>[/] {msg}"))
    except (MissingColumnsError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    table = Table(title="doorstep main job", title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows read / valid", f"{result.n_input:,} / {result.n_valid:,}")
    table.add_row("routes / zones", f"{result.n_routes:,} / {result.n_zones:,}")
    for reason, n in result.quarantine_counts.items():
        table.add_row(f"quarantined: {reason}", f"{n:,}")
    table.add_row("deliveries", str(result.deliveries))
    table.add_row("demand (hourly, daily)", f"{result.demand_hourly}, {result.demand_daily}")
    if result.eta is not None:
        for mode, m in result.eta.metrics.items():
            best = m["best_baseline"]
            table.add_row(
                f"ETA {mode}: MAE / best baseline ({best})",
                f"{m['model']['mae_min']:.2f} / {m['baselines'][best]['mae_min']:.2f} min",
            )
            table.add_row(f"ETA {mode}: P10-P90 coverage", f"{m['model']['coverage_p10_p90']:.3f}")
        table.add_row("doorstep-eta version", str(result.eta.version))
    if result.demand is not None:
        from training.benchmark_demand import fmt

        for seg, p in result.demand.metrics.items():
            m = p["model"]
            table.add_row(
                f"demand {seg}: WAPE / MASE / coverage",
                f"{fmt(m['wape'])} / {fmt(m['mase'])} / {fmt(m['coverage_p10_p90'])}",
            )
        table.add_row("doorstep-demand version", str(result.demand.version))
    table.add_row("seconds", f"{time.perf_counter() - start:.1f}")
    console.print(table)
    if train:
        from doorstep.fast_trees import available

        if available():
            n = compile_champion(lambda m: console.print(f"[cyan]>[/] {m}"))
            console.print(f"[cyan]>[/] {n} booster(s) compiled (the others were cached)")
    if serve and train:
        import os

        os.environ.setdefault("DOORSTEP_DEMAND_STORE", str(result.demand_hourly))
        _serve(None, "127.0.0.1", port, None)


benchmark_app = typer.Typer(
    help="Reproducible benchmarks (their interfaces are contracts).", no_args_is_help=True
)
app.add_typer(benchmark_app, name="benchmark")


@benchmark_app.command("eta")
def benchmark_eta(
    data: Annotated[Path, typer.Option(help="Deliveries: a LaDe-D file or a contract Parquet")],
    test_from: Annotated[
        str, typer.Option(help="First test day, YYYY-MM-DD (split by courier-day date)")
    ],
    out: Annotated[Path, typer.Option(help="results.json")] = Path("results.json"),
    format: Annotated[str, typer.Option("--format", help="lade | parquet")] = "parquet",
    config: Annotated[Path | None, typer.Option(help="ETA config YAML")] = None,
    year: Annotated[int, typer.Option(help="Year of LaDe's year-less dates")] = 2021,
    tz: Annotated[str, typer.Option(help="Local time zone of the data")] = s.DEFAULT_TZ,
) -> None:
    """Train before --test-from, evaluate both protocols and every baseline on the rest."""
    from doorstep.config import load_yaml
    from training.benchmark_eta import load_for_benchmark, run_eta_benchmark
    from training.eta import EtaConfig

    try:
        cfg = load_yaml(EtaConfig, config)
        with console.status(f"loading {data}"):
            deliveries, info = load_for_benchmark(data, format, year=year, tz=tz)
        with console.status("building queries, training, calibrating, evaluating"):
            bench = run_eta_benchmark(deliveries, test_from, cfg, info)
    except (MissingColumnsError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    write_json(out, bench.results)
    table = Table(title=f"ETA benchmark, test from {test_from} -> {out}", title_justify="left")
    for col in (
        "protocol",
        "rows",
        "MAE",
        "ACC@20",
        "cover",
        "width",
        "xSPEED",
        "best baseline",
        "x best",
    ):
        table.add_column(col, justify="right")
    for mode, p in bench.results["protocols"].items():
        m = p["model"]
        table.add_row(
            mode, f"{p['n_rows']:,}", f"{m['mae_min']:.2f}", f"{m['acc20']:.3f}", f"{m['coverage_p10_p90']:.3f}",
            f"{m['width_min']:.1f}", f"{p['mae_ratio_to_speed']:.3f}", p["best_baseline"],
            f"{p['mae_ratio_to_best_baseline']:.3f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"fit_seconds {bench.results['fit_seconds']:.1f}")


@benchmark_app.command("demand")
def benchmark_demand(
    history: Annotated[
        Path, typer.Option(help="Demand table: CSV or Parquet with zone_id, ts, volume")
    ],
    freq: Annotated[str, typer.Option(help="h (hourly) | d (daily)")],
    test_from: Annotated[str, typer.Option(help="First test day, YYYY-MM-DD")],
    out: Annotated[Path, typer.Option(help="results.json")] = Path("results.json"),
    holidays: Annotated[str | None, typer.Option(help="Holiday country code, e.g. CN")] = None,
) -> None:
    """Train before --test-from; score every protocol and baseline on every later day."""
    from training.benchmark_demand import load_demand_history, run_demand_benchmark, summary_rows

    try:
        with console.status(f"loading {history}"):
            table = load_demand_history(history, freq)
        with console.status("training, calibrating, scoring the protocols"):
            results = run_demand_benchmark(table, freq, test_from, holidays)
    except (MissingColumnsError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    write_json(out, results)
    table_out = Table(
        title=f"demand benchmark ({freq}), test from {test_from} -> {out}", title_justify="left"
    )
    for col in ("protocol", "points", "WAPE", "MASE", "cover", "best baseline WAPE", "x best"):
        table_out.add_column(col, justify="right")
    for row in summary_rows(results):
        table_out.add_row(*row)
    console.print(table_out)
    console.print(f"fit_seconds {results['fit_seconds']:.1f}")


train_app = typer.Typer(
    help="Train, evaluate, log to MLflow, register, gate.", no_args_is_help=True
)
app.add_typer(train_app, name="train")
models_app = typer.Typer(
    help="The MLflow model registry: aliases and rollback.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
MODEL_NAMES = {"eta": "doorstep-eta", "demand": "doorstep-demand"}


def _load_training_data(
    data: Path | None, format: str, days: int, couriers: int, seed: int
) -> tuple[Any, str]:
    """Deliveries to train on: the user's file (validated) or a freshly simulated city."""
    from features.ingest import IngestOptions, ingest, read_deliveries

    if data is None or str(data) in ("", "."):  # MLflow passes an empty parameter as ""
        from citysim import CityConfig, simulate

        cfg = dataclasses.replace(CityConfig(), days=days, couriers=couriers, seed=seed)
        with console.status(f"simulating {days} days x {couriers} couriers"):
            frame = simulate(cfg).deliveries
        from features.ingest import ingest_frame

        return ingest_frame(
            frame, str(frame[s.ARRIVAL_TIME].dt.tz)
        ).deliveries, f"citysim:days={days},couriers={couriers},seed={seed}"
    if format == "contract":
        return read_deliveries(data), str(data)
    result = ingest(data, IngestOptions(fmt=format))  # type: ignore[arg-type]
    if result.counts:
        console.print(_counts_table("left out by validation", result.counts))
    return result.deliveries, str(data)


@train_app.command("eta")
def train_eta_cmd(
    data: Annotated[Path | None, typer.Option(help="Deliveries (default: simulate a city)")] = None,
    format: Annotated[
        str, typer.Option("--format", help="contract | lade | csv | parquet")
    ] = "contract",
    config: Annotated[Path | None, typer.Option(help="ETA config YAML")] = Path("configs/eta.yaml"),
    holdout_days: Annotated[int, typer.Option(help="Most recent days held out for the gate")] = 7,
    days: Annotated[int, typer.Option(help="Simulated days (no --data)")] = 60,
    couriers: Annotated[int, typer.Option(help="Simulated couriers (no --data)")] = 60,
    seed: Annotated[int, typer.Option(help="Simulation seed")] = 7,
    engine: EngineOption = "pandas",
    scheduler: SchedulerOption = None,
    workers: WorkersOption = 2,
) -> None:
    """Train the ETA model, log it to MLflow, register doorstep-eta, promote if it wins."""
    from doorstep.config import load_yaml
    from training.eta import EtaConfig
    from training.pipeline_eta import train_and_register_eta

    try:
        eng = _engine_config(engine, scheduler, workers)
        cfg = load_yaml(EtaConfig, config if config and config.exists() else None)
        deliveries, source = _load_training_data(data, format, days, couriers, seed)
        with console.status(f"training ETA and leg models ({engine}), evaluating, logging"):
            outcome = train_and_register_eta(
                deliveries, cfg, data_source=source, holdout_days=holdout_days, engine=eng
            )
    except (MissingColumnsError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    table = Table(
        title=f"doorstep-eta v{outcome.version} (hold-out from {outcome.holdout_from})",
        title_justify="left",
    )
    for col in ("mode", "MAE", "best baseline", "x best", "ACC@20", "cover", "width"):
        table.add_column(col, justify="right")
    for mode, m in outcome.metrics.items():
        best = m["best_baseline"]
        table.add_row(
            mode, f"{m['model']['mae_min']:.2f}", f"{best} {m['baselines'][best]['mae_min']:.2f}",
            f"{m['mae_ratio_to_best_baseline']:.3f}", f"{m['model']['acc20']:.3f}",
            f"{m['model']['coverage_p10_p90']:.3f}", f"{m['model']['width_min']:.1f}",
        )  # fmt: skip
    console.print(table)
    leg = outcome.leg_metrics
    console.print(
        f"leg model MAE {leg['model']['mae_min']:.2f} min (baselines: "
        + ", ".join(f"{k} {v['mae_min']:.2f}" for k, v in leg["baselines"].items())
        + ")"
    )
    if outcome.decision is not None:
        verdict = "champion" if outcome.decision.promoted else "challenger"
        console.print(f"version {outcome.version} -> {verdict}: {outcome.decision.reason}")
    console.print(f"run {outcome.run_id}, model {outcome.model_uri}")


DEMAND_FREQS = ("h", "d", "both")


def _load_demand_tables(
    history: Path | None, freq: str, days: int, couriers: int, seed: int
) -> tuple[Any, Any, str]:
    """Hourly and daily demand tables to train on (None where not trained): the user's table
    (``--freq both``: an hourly table, the daily one summed from it) or a simulated city's."""
    from features.demand import daily_from_hourly, validate_demand
    from training.benchmark_demand import load_demand_history

    if freq not in DEMAND_FREQS:
        raise ValueError(f"--freq: must be one of {', '.join(DEMAND_FREQS)}, got {freq!r}")
    if history is None or str(history) in ("", "."):  # MLflow passes an empty parameter as ""
        from citysim import CityConfig, simulate

        cfg = dataclasses.replace(CityConfig(), days=days, couriers=couriers, seed=seed)
        with console.status(f"simulating {days} days x {couriers} couriers"):
            demand = simulate(cfg).demand
        hourly = validate_demand(demand, "h", where="simulated demand").table
        source = f"citysim:days={days},couriers={couriers},seed={seed}"
    elif freq == "d":
        return None, load_demand_history(history, "d"), str(history)
    else:
        hourly = load_demand_history(history, "h")
        source = str(history)
    daily = daily_from_hourly(hourly)
    if freq == "d":
        return None, daily, source
    return hourly, (daily if freq == "both" else None), source


def _demand_tables(
    history: Path | None,
    deliveries: Path | None,
    freq: str,
    days: int,
    couriers: int,
    seed: int,
    client: Any,
) -> tuple[Any, Any, str]:
    """``_load_demand_tables``, or the tables counted from deliveries (on the cluster when
    ``client`` is given: a distributed group-by over the partitioned Parquet)."""
    if deliveries is None:
        return _load_demand_tables(history, freq, days, couriers, seed)
    if freq not in DEMAND_FREQS:
        raise ValueError(f"--freq: must be one of {', '.join(DEMAND_FREQS)}, got {freq!r}")
    if not deliveries.exists():
        raise FileNotFoundError(f"--deliveries: {deliveries} does not exist")
    freqs = ("h", "d") if freq == "both" else (freq,)
    if client is not None:
        from training.dask_demand import demand_tables_dask
        from training.dask_eta import read_deliveries_dask

        with console.status("counting parcels per zone and period on the cluster"):
            tables = demand_tables_dask(read_deliveries_dask(str(deliveries)), freqs)
    else:
        from features.demand import demand_from_deliveries
        from features.ingest import read_deliveries

        frame = read_deliveries(deliveries)
        tables = {f: demand_from_deliveries(frame, f) for f in freqs}
    return tables.get("h"), tables.get("d"), str(deliveries)


@train_app.command("demand")
def train_demand_cmd(
    history: Annotated[
        Path | None,
        typer.Option(help="Demand table zone_id, ts, volume (default: simulate a city)"),
    ] = None,
    freq: Annotated[
        str, typer.Option(help="h | d | both (both: hourly table, daily summed from it)")
    ] = "both",
    config: Annotated[Path | None, typer.Option(help="Demand config YAML")] = Path(
        "configs/demand.yaml"
    ),
    holdout_days: Annotated[int, typer.Option(help="Most recent days held out for the gate")] = 7,
    holidays: Annotated[
        str | None, typer.Option(help="Holiday country code, e.g. CN (overrides the config)")
    ] = None,
    days: Annotated[int, typer.Option(help="Simulated days (no --history)")] = 90,
    couriers: Annotated[int, typer.Option(help="Simulated couriers (no --history)")] = 60,
    seed: Annotated[int, typer.Option(help="Simulation seed")] = 7,
    deliveries: Annotated[
        Path | None,
        typer.Option(
            help="Deliveries Parquet (file, or the folder doorstep simulate --partitioned "
            "writes): the demand tables are counted from them instead of --history"
        ),
    ] = None,
    engine: EngineOption = "pandas",
    scheduler: SchedulerOption = None,
    workers: WorkersOption = 2,
) -> None:
    """Train the demand model(s), log to MLflow, register doorstep-demand, promote if it wins."""
    from training.benchmark_demand import best_baseline, fmt
    from training.pipeline_demand import load_demand_config, train_and_register_demand

    try:
        eng = _engine_config(engine, scheduler, workers)
        if deliveries is not None and history is not None:
            raise ValueError("--deliveries, --history: give one of them")
        cfg = load_demand_config(config if config and config.exists() else None)
        if holidays is not None:
            cfg = dataclasses.replace(cfg, holidays_country=holidays)
        status = f"training demand models ({engine}), scoring the hold-out, logging"
        if engine == "dask":
            from training.engine import dask_client

            with dask_client(eng) as client:
                hourly, daily, source = _demand_tables(
                    history, deliveries, freq, days, couriers, seed, client
                )
                with console.status(status):
                    outcome = train_and_register_demand(
                        hourly, daily, cfg, data_source=source, holdout_days=holdout_days,
                        engine=eng, client=client,
                    )  # fmt: skip
        else:
            hourly, daily, source = _demand_tables(
                history, deliveries, freq, days, couriers, seed, None
            )
            with console.status(status):
                outcome = train_and_register_demand(
                    hourly, daily, cfg, data_source=source, holdout_days=holdout_days
                )
    except (MissingColumnsError, FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    table = Table(
        title=f"doorstep-demand v{outcome.version} (hold-out from {outcome.holdout_from})",
        title_justify="left",
    )
    for col in ("segment", "points", "MAE", "WAPE", "MASE", "cover", "best baseline WAPE"):
        table.add_column(col, justify="right")
    for seg, p in outcome.metrics.items():
        m, best = p["model"], best_baseline(p["baselines"])
        base = "-" if best is None else f"{best} {fmt(p['baselines'][best]['wape'])}"
        table.add_row(
            seg, f"{p['n_points']:,}", fmt(m["mae"]), fmt(m["wape"]), fmt(m["mase"]),
            fmt(m["coverage_p10_p90"]), base,
        )  # fmt: skip
    console.print(table)
    if outcome.decision is not None:
        verdict = "champion" if outcome.decision.promoted else "challenger"
        console.print(f"version {outcome.version} -> {verdict}: {outcome.decision.reason}")
    console.print(f"run {outcome.run_id}, model {outcome.model_uri}")


tune_app = typer.Typer(
    help="Optuna tuning of the boosters (resumable studies).", no_args_is_help=True
)
app.add_typer(tune_app, name="tune")


@tune_app.command("eta")
def tune_eta_cmd(
    trials: Annotated[int, typer.Option(help="Trials to add in this run")] = 20,
    timeout: Annotated[
        float | None, typer.Option(help="Stop adding trials after S seconds")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Deliveries (default: simulate a city)")] = None,
    format: Annotated[
        str, typer.Option("--format", help="contract | lade | csv | parquet")
    ] = "contract",
    test_from: Annotated[
        str | None, typer.Option(help="First held-out day (default: last 7 days)")
    ] = None,
    config: Annotated[Path, typer.Option(help="ETA config YAML; best booster written back")] = Path(
        "configs/eta.yaml"
    ),
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL")] = None,
    study: Annotated[str, typer.Option(help="Study name")] = "doorstep-eta",
    days: Annotated[int, typer.Option(help="Simulated days (no --data)")] = 60,
    couriers: Annotated[int, typer.Option(help="Simulated couriers (no --data)")] = 60,
    seed: Annotated[int, typer.Option(help="Simulation and sampler seed")] = 7,
) -> None:
    """Tune the ETA boosters with Optuna; each trial a nested MLflow run; resumable."""
    from doorstep.config import load_yaml
    from training.eta import EtaConfig
    from training.pipeline_eta import holdout_start
    from training.tune import tune_eta

    try:
        cfg = load_yaml(EtaConfig, config if config.exists() else None)
        deliveries, _ = _load_training_data(data, format, days, couriers, seed)
        start = test_from or holdout_start(deliveries, 7)
        with console.status(f"tuning: {trials} trials, study {study}"):
            result = tune_eta(
                deliveries, start, cfg, n_trials=trials, timeout_s=timeout, storage=storage,
                study_name=study, config_path=config, seed=seed,
            )  # fmt: skip
    except (MissingColumnsError, FileNotFoundError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    console.print(
        f"study {result.study_name}: {result.n_trials_total} trials, best validation MAE {result.best_value:.2f} min"
    )
    console.print(f"best booster -> {config}: {result.best_params}")


@tune_app.command("demand")
def tune_demand_cmd(
    trials: Annotated[int, typer.Option(help="Trials to add in this run")] = 20,
    timeout: Annotated[
        float | None, typer.Option(help="Stop adding trials after S seconds")
    ] = None,
    freq: Annotated[str, typer.Option(help="h | d: which model's booster to tune")] = "h",
    history: Annotated[
        Path | None, typer.Option(help="Demand table (default: simulate a city)")
    ] = None,
    test_from: Annotated[
        str | None, typer.Option(help="First held-out day (default: last 7 days)")
    ] = None,
    config: Annotated[
        Path, typer.Option(help="Demand config YAML; best booster written back")
    ] = Path("configs/demand.yaml"),
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL")] = None,
    study: Annotated[
        str | None, typer.Option(help="Study name (default: doorstep-demand-FREQ)")
    ] = None,
    days: Annotated[int, typer.Option(help="Simulated days (no --history)")] = 90,
    couriers: Annotated[int, typer.Option(help="Simulated couriers (no --history)")] = 60,
    seed: Annotated[int, typer.Option(help="Simulation and sampler seed")] = 7,
) -> None:
    """Tune a demand booster with Optuna; each trial a nested MLflow run; resumable."""
    from training.pipeline_demand import load_demand_config, make_holdout
    from training.tune_demand import tune_demand

    try:
        if freq not in ("h", "d"):
            raise ValueError(f"--freq: must be h or d, got {freq!r}")
        cfg = load_demand_config(config if config.exists() else None)
        hourly, daily, _ = _load_demand_tables(history, freq, days, couriers, seed)
        table = hourly if freq == "h" else daily
        start = test_from or str(make_holdout({freq: table}, 7).start.date())
        with console.status(f"tuning: {trials} trials, {freq} model"):
            result = tune_demand(
                table, freq, start, cfg.for_freq(freq), holidays_country=cfg.holidays_country,
                n_trials=trials, timeout_s=timeout, storage=storage, study_name=study,
                config_path=config, seed=seed,
            )  # fmt: skip
    except (MissingColumnsError, FileNotFoundError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    console.print(
        f"study {result.study_name}: {result.n_trials_total} trials, best validation MAE {result.best_value:.4f}"
    )
    console.print(f"best booster -> {config}: {result.best_params}")


@models_app.command("list")
def models_list(kind: Annotated[str, typer.Argument(help="eta | demand")] = "eta") -> None:
    """Which versions hold the champion and challenger aliases."""
    from training.registry import current_versions

    if kind not in MODEL_NAMES:
        raise _fail(f"kind: must be one of {', '.join(MODEL_NAMES)}, got {kind!r}")
    from mlflow.exceptions import MlflowException

    try:
        versions = current_versions(MODEL_NAMES[kind])
    except MlflowException:  # not registered yet
        versions = {}
    if not versions:
        console.print(f"{MODEL_NAMES[kind]}: no aliased versions yet")
    for alias, v in versions.items():
        console.print(f"{MODEL_NAMES[kind]}@{alias} = version {v.version} (run {v.run_id})")


features_app = typer.Typer(help="Feature pipelines at scale (Dask).", no_args_is_help=True)
app.add_typer(features_app, name="features")


@features_app.command("eta")
def features_eta_cmd(
    data: Annotated[Path, typer.Option(help="Partitioned Parquet folder (one folder per date)")],
    test_from: Annotated[str, typer.Option(help="Rows of routes before this day YYYY-MM-DD")],
    out: Annotated[Path, typer.Option(help="Output folder: OUT/ordered, OUT/unordered")],
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address (default: a local cluster)")
    ] = None,
    workers: Annotated[int, typer.Option(help="Local Dask cluster workers")] = 2,
) -> None:
    """Fit the ETA features on a cluster and write the training rows as partitioned Parquet
    (e.g. the output of doorstep simulate --partitioned)."""
    from training.dask_eta import read_deliveries_dask, write_features
    from training.engine import EngineConfig, dask_client

    if not data.is_dir():
        raise _fail(f"--data: {data} is not a folder of partitioned Parquet")
    start = time.perf_counter()
    with dask_client(EngineConfig(engine="dask", scheduler=scheduler, n_workers=workers)):
        try:
            paths = write_features(read_deliveries_dask(str(data)), test_from, str(out))
        except ValueError as exc:
            raise _fail(str(exc)) from exc
    for mode, path in paths.items():
        console.print(f"{mode} feature rows -> {path}")
    console.print(f"{time.perf_counter() - start:.1f} s")


def compile_champion(report: Any = None, workers: int = 2, alias: str = "champion") -> int:
    """Compile the served ETA bundle's boosters for this CPU into the tree cache (once)."""
    from doorstep.eta_pyfunc import load_bundle
    from doorstep.fast_trees import available, boosters_of, compile_boosters

    if not available():
        raise ValueError("lleaves is not installed: the service will use LightGBM")
    bundle = load_bundle(f"models:/{MODEL_NAMES['eta']}@{alias}")
    boosters = boosters_of(bundle)
    if report is not None:
        report(f"compiling {len(boosters)} boosters of {MODEL_NAMES['eta']}@{alias} for this CPU")
    return len(compile_boosters(boosters, workers=workers))


@models_app.command("compile")
def models_compile(
    kind: Annotated[str, typer.Argument(help="eta")] = "eta",
    alias: Annotated[str, typer.Option(help="Registry alias to compile")] = "champion",
    workers: Annotated[int, typer.Option(help="Compiler processes")] = 2,
) -> None:
    """Compile a registered model's trees for this machine's CPU (lleaves; once per machine and
    version). The service then predicts the same numbers several times faster."""
    from mlflow.exceptions import MlflowException

    if kind != "eta":
        raise _fail(f"kind: only the eta model has compiled trees, got {kind!r}")
    start = time.perf_counter()
    try:
        n = compile_champion(lambda m: console.print(f"[cyan]>[/] {m}"), workers, alias)
    except (MlflowException, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"compiled {n} new booster(s) in {time.perf_counter() - start:.1f} s")


@models_app.command("rollback")
def models_rollback(kind: Annotated[str, typer.Argument(help="eta | demand")]) -> None:
    """Restore the previous champion of a model."""
    from training.registry import RollbackError, rollback

    if kind not in MODEL_NAMES:
        raise _fail(f"kind: must be one of {', '.join(MODEL_NAMES)}, got {kind!r}")
    try:
        result = rollback(MODEL_NAMES[kind])
    except RollbackError as exc:
        raise _fail(str(exc)) from exc
    console.print(f"{result.name}@champion: version {result.from_version} -> {result.to_version}")


def write_json(path: Path, payload: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


CALL_HINT = """call it (examples in serving/examples/):
  curl -s -X POST http://{host}:{port}/v1/eta -H 'content-type: application/json' -d @serving/examples/eta.json
  curl -s -X POST http://{host}:{port}/v1/eta/matrix -H 'content-type: application/json' -d @serving/examples/eta_matrix.json
  curl -s -X POST http://{host}:{port}/v1/demand -H 'content-type: application/json' -d @serving/examples/demand.json
  curl -s http://{host}:{port}/v1/model-info      (API docs: http://{host}:{port}/docs)"""


def _serve(config: Path | None, host: str, port: int, workers: int | None) -> None:
    from serving.config import load_serving_config
    from serving.launch import exec_serve

    cfg = load_serving_config(config)
    # the service resolves the registry aliases once, before its workers start, and logs the
    # versions; a missing model leaves /readyz failing with the reason in /v1/model-info
    console.print(f"[cyan]>[/] serving {cfg.eta_uri} and {cfg.demand_uri} from {cfg.tracking_uri}")
    console.print(CALL_HINT.format(host=host, port=port))
    exec_serve(cfg, host, port, workers)


@app.command()
def build(
    config: Annotated[
        Path | None, typer.Option(help="Serving config YAML (default: $DOORSTEP_SERVING_CONFIG)")
    ] = None,
    pack_only: Annotated[
        bool, typer.Option(help="Only pack the models into packed_models/ (then served first)")
    ] = False,
) -> None:
    """Build a Bento (bentofile.yaml) that carries the champions found now: the models are
    packed into packed_models/, so the Bento runs without the registry."""
    from serving.config import load_serving_config
    from serving.pack import PACKED_DIR, bentoml_build, pack_models

    root = Path(__file__).resolve().parents[1]
    try:
        packed = pack_models(load_serving_config(config), root / PACKED_DIR)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    for kind, version in packed.versions.items():
        console.print(f"[cyan]>[/] packed {kind} version {version} -> {packed.directory / kind}")
    for kind, why in packed.skipped.items():
        console.print(f"[yellow]![/] {kind} not packed: {why}")
    if not pack_only:
        import shutil

        try:
            console.print(bentoml_build(root))
        except RuntimeError as exc:
            raise _fail(str(exc)) from exc
        finally:  # the Bento has its copy; a checkout must keep serving the registry's models
            shutil.rmtree(packed.directory, ignore_errors=True)


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option(help="Serving config YAML (default: $DOORSTEP_SERVING_CONFIG)")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 for all)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 3000,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: one per core)")
    ] = None,
) -> None:
    """Serve the registered champions over HTTP (BentoML): /v1/eta, /v1/eta/batch,
    /v1/eta/matrix, /v1/demand, /v1/model-info, /healthz, /readyz, /metrics."""
    _serve(config, host, port, workers)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
