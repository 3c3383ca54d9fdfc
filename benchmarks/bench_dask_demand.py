"""Benchmark the demand pipeline: pandas vs a Dask local cluster, from partitioned deliveries.

A city is simulated straight to partitioned Parquet (``doorstep simulate --partitioned``). Each
engine, in a fresh process, builds the hourly demand table from it (pandas: read everything,
``demand_from_deliveries``; Dask: the distributed group-by) and trains the hourly demand model
(features, both heads' boosters, calibration; the same light booster for both engines and no
subsampling of training rows, so the comparison is the engines', not the models'). Reported per
run: wall seconds of each step, training rows/s, peak resident memory of the driver and of each
worker, and the day-ahead MAE and P10-P90 coverage on the last 7 days. The pandas run at the
smallest size is the baseline every ratio refers to.

    .venv/bin/python benchmarks/bench_dask_demand.py                  # 56 days x 40 couriers
    .venv/bin/python benchmarks/bench_dask_demand.py --days 56 112     # sizes: training rows
                                                                      # grow with the days
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import _measure as measure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dask_demand.json"
TEST_DAYS = 7


def _config() -> Any:
    from training.demand import DemandTrainConfig
    from training.eta import BoosterParams

    booster = BoosterParams(
        n_estimators=100, num_leaves=31, min_child_samples=50, early_stopping_rounds=20
    )
    return DemandTrainConfig.for_freq("h", booster=booster, max_train_rows=10**9)


def _scores(result: Any, table: Any) -> dict[str, float]:
    import numpy as np
    import pandas as pd

    from features.demand_features import DemandPanel, make_queries

    panel = DemandPanel.from_table(table, "h")
    days = pd.date_range(result.split.test_from, periods=TEST_DAYS, freq="D")
    q = make_queries(panel, days, None)
    q = q.take(q.target < panel.n_periods)
    pred = result.bundle.predict_queries(panel, q)
    y = panel.values[q.zone, q.target]
    return {
        "day_ahead_mae": float(np.mean(np.abs(pred.p50 - y))),
        "coverage_p10_p90": float(np.mean((pred.p10 <= y) & (y <= pred.p90))),
        "n_points": len(y),
    }


def _run(engine: str, deliveries: str, workers: int, out: Any) -> None:
    import pandas as pd

    from features import schema as s
    from features.demand import demand_from_deliveries
    from features.demand_features import spec_for
    from training.demand import train_demand

    config, spec = _config(), spec_for("h")
    t0 = time.perf_counter()
    cluster_s = 0.0
    worker_rss: list[float] = []
    if engine == "pandas":
        table = demand_from_deliveries(pd.read_parquet(deliveries), "h")
        t_table = time.perf_counter() - t0
        test_from = table[s.TS].max().normalize() - pd.Timedelta(days=TEST_DAYS - 1)
        before = table[table[s.TS] < test_from]
        result = train_demand(before, "h", test_from, spec, config)
    else:
        from training.dask_demand import demand_table_dask
        from training.dask_demand_train import train_demand_dask
        from training.dask_eta import read_deliveries_dask
        from training.engine import EngineConfig, dask_client

        cfg = EngineConfig(engine="dask", n_workers=workers, memory_limit="8GiB")
        with dask_client(cfg) as client:
            cluster_s = time.perf_counter() - t0  # reported apart, not in the steps
            t0 = time.perf_counter()
            ddf = demand_table_dask(read_deliveries_dask(deliveries), "h", npartitions=4 * workers)
            ddf = client.persist(ddf)
            last = ddf[s.TS].max().compute()
            t_table = time.perf_counter() - t0
            test_from = last.normalize() - pd.Timedelta(days=TEST_DAYS - 1)
            before = ddf[ddf[s.TS] < test_from]
            result = train_demand_dask(before, "h", test_from, client, spec, config)
            table = ddf.compute().sort_values([s.ZONE_ID, s.TS]).reset_index(drop=True)
            worker_rss = measure.worker_peak_rss_mb(client)
    wall = time.perf_counter() - t0
    n_rows = result.n_rows["fit"] + result.n_rows["valid"]
    out.put(
        {
            "engine": engine,
            "table_rows": len(table),
            "zones": int(table[s.ZONE_ID].nunique()),
            "training_rows": n_rows,
            "n_rows": result.n_rows,
            "head": result.head,
            "cluster_start_s": cluster_s,
            "table_s": t_table,
            "wall_s": wall,
            "rows_per_s": n_rows / wall,
            "driver_peak_rss_mb": measure.peak_rss_mb(),
            "worker_peak_rss_mb": worker_rss,
            **_scores(result, table),
        }
    )


def run(engine: str, deliveries: str, workers: int) -> dict[str, Any]:
    return measure.in_fresh_process(_run, engine, deliveries, workers)


def main() -> None:
    from citysim import CityConfig, simulate_to_parquet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, nargs="+", default=[56])
    ap.add_argument("--couriers", type=int, default=40)
    ap.add_argument("--engines", nargs="+", default=["pandas", "dask"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    runs = []
    for days in args.days:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = dataclasses.replace(CityConfig(), days=days, couriers=args.couriers, seed=1)
            summary = simulate_to_parquet(cfg, tmp, partition_by_date=True)
            for engine in args.engines:
                print(f"running {engine}, {days} d x {args.couriers} couriers ...", flush=True)
                r = run(engine, summary.deliveries, args.workers)
                r["city"] = {"days": days, "couriers": args.couriers, "stops": summary.stops}
                runs.append(r)
                print(f"  {r['training_rows']:,} training rows in {r['wall_s']:.0f} s", flush=True)
    measure.add_ratios(runs)
    measure.write_results(
        args.out,
        "hourly demand table from partitioned deliveries + train_demand (features, "
        "Poisson and quantile boosters, calibration), same light booster, no subsampling",
        f"pandas at {args.days[0]} days",
        _config(),
        runs,
    )
    print(f"{'engine':8} {'zones':>6} {'train rows':>11} {'table s':>8} {'wall s':>7} "
          f"{'x base':>7} {'driver MB':>10} {'workers MB':>12} {'MAE':>6} {'cover':>6}")  # fmt: skip
    for r in runs:
        w = measure.workers_cell(r)
        print(
            f"{r['engine']:8} {r['zones']:>6} {r['training_rows']:>11,} {r['table_s']:>8.1f} "
            f"{r['wall_s']:>7.0f} {r['wall_ratio_to_baseline']:>7.2f} "
            f"{r['driver_peak_rss_mb']:>10.0f} {w:>12} {r['day_ahead_mae']:>6.3f} "
            f"{r['coverage_p10_p90']:>6.3f}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
