"""Benchmark the ETA feature pipeline and training: pandas vs a Dask local cluster, by size.

For each size (query-stop rows: a stop yields one row per query that still has it in hand) a
synthetic city is simulated, then each engine fits the features and trains the quantile
boosters (the same light booster for both, so the comparison is the engines', not the models')
in a fresh process. Reported per run: wall seconds, rows/s, peak resident memory of the driver
and of each worker, and the hold-out MAE (same accuracy is part of the contract). The pandas
run at the smallest size is the baseline every ratio refers to.

    .venv/bin/python benchmarks/bench_dask.py                 # 1M rows, both engines
    .venv/bin/python benchmarks/bench_dask.py --sizes 1 5 20  # millions of rows
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import _measure as measure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dask_eta.json"
ROWS_PER_DAY_PER_20_COURIERS = (
    7_800  # query-stop rows, measured on the demo city (1.4M from 60 d x 60)
)


def _city(rows_m: float) -> tuple[int, int]:
    """Days x couriers that give about ``rows_m`` million query-stop rows."""
    couriers = 60 if rows_m <= 2 else 200 if rows_m <= 8 else 500
    days = max(30, round(rows_m * 1e6 / (ROWS_PER_DAY_PER_20_COURIERS * couriers / 20)))
    return days, couriers


def _config() -> Any:
    from training.eta import BoosterParams, EtaConfig

    booster = BoosterParams(n_estimators=150, num_leaves=31, early_stopping_rounds=20)
    # no subsampling in either engine: the benchmark is about handling every row
    return EtaConfig(booster=booster, max_train_queries=10**9, num_threads=1, calib_days=7)


def _run(engine: str, rows_m: float, workers: int, out: Any) -> None:
    import dataclasses as dc

    import numpy as np

    from citysim import CityConfig, simulate
    from features.eta_queries import queries_from_deliveries
    from features.ingest import ingest_frame
    from training.eta import day_of, train_eta

    days, couriers = _city(rows_m)
    frame = simulate(dc.replace(CityConfig(), days=days, couriers=couriers, seed=1)).deliveries
    deliveries = ingest_frame(frame, str(frame["arrival_time"].dt.tz)).deliveries
    del frame
    last = deliveries["dispatch_time"].max().normalize()
    test_from = str((last - np.timedelta64(6, "D")).date())
    config = _config()
    t0 = time.perf_counter()
    worker_rss: list[float] = []
    if engine == "pandas":
        result = train_eta(deliveries, test_from, config)
    else:
        from training.dask_eta import by_route_day, train_eta_dask
        from training.engine import EngineConfig, dask_client

        cfg = EngineConfig(engine="dask", n_workers=workers, memory_limit="10GiB")
        with dask_client(cfg) as client:
            ddf = by_route_day(deliveries, 4 * workers)
            result = train_eta_dask(ddf, test_from, config, client)
            worker_rss = measure.worker_peak_rss_mb(client)
    wall = time.perf_counter() - t0
    batch = queries_from_deliveries(deliveries)
    n_rows = int(np.sum(batch.q_route_day[batch.t_query] < day_of(test_from)))
    test = batch.take_queries(batch.q_route_day >= day_of(test_from))
    mae = {
        m: float(np.mean(np.abs(result.bundle.predict(test, m).p50 - test.t_label_min)))
        for m in result.bundle.modes
    }
    out.put(
        {
            "engine": engine,
            "target_rows_m": rows_m,
            "city": {"days": days, "couriers": couriers, "stops": len(deliveries)},
            "query_stop_rows": n_rows,
            "wall_s": wall,
            "rows_per_s": n_rows / wall,
            "driver_peak_rss_mb": measure.peak_rss_mb(),
            "worker_peak_rss_mb": worker_rss,
            "holdout_mae_min": mae,
        }
    )


def run(engine: str, rows_m: float, workers: int) -> dict[str, Any]:
    return measure.in_fresh_process(_run, engine, rows_m, workers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1.0], help="millions of rows")
    ap.add_argument("--engines", nargs="+", default=["pandas", "dask"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    runs = []
    for size in args.sizes:
        for engine in args.engines:
            print(f"running {engine} at {size}M rows ...", flush=True)
            runs.append(run(engine, size, args.workers))
            r = runs[-1]
            print(f"  {r['query_stop_rows']:,} rows in {r['wall_s']:.0f} s", flush=True)
    base = measure.add_ratios(runs)
    measure.write_results(
        args.out,
        "EtaFeaturizer fit + queries + features + quantile boosters (2 modes), same light booster",
        f"pandas at {base['target_rows_m']}M rows",
        _config(),
        runs,
    )
    print(f"{'engine':8} {'rows':>12} {'wall s':>8} {'rows/s':>10} {'x base':>7} "
          f"{'driver MB':>10} {'workers MB':>14} {'MAE ord/unord':>15}")  # fmt: skip
    for r in runs:
        w = measure.workers_cell(r)
        mae = "/".join(f"{v:.2f}" for v in r["holdout_mae_min"].values())
        print(
            f"{r['engine']:8} {r['query_stop_rows']:>12,} {r['wall_s']:>8.0f} "
            f"{r['rows_per_s']:>10,.0f} {r['wall_ratio_to_baseline']:>7.2f} "
            f"{r['driver_peak_rss_mb']:>10.0f} {w:>14} {mae:>15}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
