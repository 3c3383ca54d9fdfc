"""Benchmark the ETA feature pipeline and training: pandas vs a Dask local cluster, by size.

For each size (training query-stop rows: a stop yields one row per query that still has it in
hand) a synthetic city is simulated straight to Parquet partitioned by date and ingested day by
day, so no process holds more than a day of it. Each engine then fits the features and trains
the quantile boosters (the same light booster for both, so the comparison is the engines', not
the models') in a fresh process: pandas reads every day into one frame, under an address-space
cap so that outgrowing the machine is a recorded failure; Dask reads the files as one
partition per day. Reported per run: wall seconds, rows/s, peak resident memory of the driver
and of each worker, hold-out MAE on the test days (built from their files only), and the
1-minute load average before and after. The first finished pandas run (else the first finished
run) is the baseline every ratio refers to.

    .venv/bin/python benchmarks/bench_dask.py                 # 1M rows, both engines
    .venv/bin/python benchmarks/bench_dask.py --sizes 1 5 20  # millions of rows
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _measure as measure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "dask_eta.json"
TEST_DAYS = 7
# training query-stop rows per courier-day, measured: 789,022 from 36 d x 60 couriers (1M run),
# 3,685,048 from 57 d x 200 (5M run), ~290 per courier-day over 40 d x 500 (a probe)
ROWS_PER_COURIER_DAY = {60: 365, 200: 323, 500: 290}
PANDAS_CAP_GB = 21.0  # address-space cap of the pandas process: a failure, not a dead machine


def _city(rows_m: float) -> tuple[int, int]:
    """Days x couriers that give about ``rows_m`` million training query-stop rows (the days
    before the last ``TEST_DAYS``)."""
    couriers = 60 if rows_m <= 2 else 200 if rows_m <= 8 else 500
    train_days = math.ceil(rows_m * 1e6 / (couriers * ROWS_PER_COURIER_DAY[couriers]))
    return max(30, TEST_DAYS + train_days), couriers


def _config() -> Any:
    from training.eta import BoosterParams, EtaConfig

    # Pinned in full (the 1M and 5M runs' settings), not inherited from the ETA defaults,
    # which have since moved (lr 0.1, 63 bins, bounds at 2/3 of the rounds): sizes compare
    booster = BoosterParams(
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=40,
        feature_fraction=0.8,
        bagging_fraction=0.8,
        lambda_l2=1.0,
        max_bin=255,
        n_estimators=150,
        early_stopping_rounds=20,
    )
    # no subsampling in either engine: the benchmark is about handling every row
    return EtaConfig(
        booster=booster,
        max_train_queries=10**9,
        num_threads=1,
        calib_days=7,
        bound_rounds_share=1.0,
    )


def prepare(rows_m: float, work: Path) -> dict[str, Any]:
    """Simulate the city straight to Parquet partitioned by date and ingest it day by day into
    ``work/ingested/<date>.parquet`` (memory stays that of one day); count the training
    query-stop rows day by day. Both engines read these files."""
    import dataclasses as dc

    import pandas as pd

    from citysim import CityConfig, simulate_to_parquet
    from features.eta_queries import queries_from_deliveries
    from features.ingest import ingest_frame

    days, couriers = _city(rows_m)
    cfg = dc.replace(CityConfig(), days=days, couriers=couriers, seed=1)
    summary = simulate_to_parquet(cfg, work / "raw", partition_by_date=True)
    files = sorted(Path(summary.deliveries).glob("*/*.parquet"))
    dates = [f.parent.name.split("=")[1] for f in files]
    test_from = str((pd.Timestamp(dates[-1]) - pd.Timedelta(days=TEST_DAYS - 1)).date())
    out = work / "ingested"
    out.mkdir(parents=True, exist_ok=True)
    stops = n_rows = 0
    for f, date in zip(files, dates, strict=True):
        frame = pd.read_parquet(f)
        deliveries = ingest_frame(frame, str(frame["arrival_time"].dt.tz)).deliveries
        deliveries.to_parquet(out / f"{date}.parquet", index=False)
        stops += len(deliveries)
        if date < test_from:
            n_rows += queries_from_deliveries(deliveries).n_targets
    return {
        "target_rows_m": rows_m,
        "city": {"days": days, "couriers": couriers, "stops": stops},
        "query_stop_rows": n_rows,
        "data": str(out),
        "test_from": test_from,
    }


def _holdout_mae(bundle: Any, data: Path, test_from: str) -> dict[str, float]:
    """P50 MAE (minutes) on the test days, built from their files only."""
    import numpy as np
    import pandas as pd

    from features.eta_queries import queries_from_deliveries

    files = [f for f in sorted(data.glob("*.parquet")) if f.stem >= test_from]
    test = queries_from_deliveries(pd.concat([pd.read_parquet(f) for f in files]))
    return {
        m: float(np.mean(np.abs(bundle.predict(test, m).p50 - test.t_label_min)))
        for m in bundle.modes
    }


def _run(engine: str, prep: dict[str, Any], workers: int, out: Any) -> None:
    data, test_from = Path(prep["data"]), prep["test_from"]
    config = _config()
    worker_rss: list[float] = []
    if engine == "pandas":
        import pandas as pd

        from training.eta import train_eta

        deliveries = pd.read_parquet(data)
        t0 = time.perf_counter()
        result = train_eta(deliveries, test_from, config)
        del deliveries
    else:
        from training.dask_eta import read_deliveries_dask, train_eta_dask
        from training.engine import EngineConfig, dask_client

        t0 = time.perf_counter()
        cfg = EngineConfig(engine="dask", n_workers=workers, memory_limit="10GiB")
        with dask_client(cfg) as client:
            ddf = read_deliveries_dask(str(data))  # one partition per day
            result = train_eta_dask(ddf, test_from, config, client)
            worker_rss = measure.worker_peak_rss_mb(client)
    wall = time.perf_counter() - t0
    n_rows = prep["query_stop_rows"]
    out.put(
        {
            "engine": engine,
            "wall_s": wall,
            "rows_per_s": n_rows / wall,
            "worker_peak_rss_mb": worker_rss,
            "holdout_mae_min": _holdout_mae(result.bundle, data, test_from),
            "driver_peak_rss_mb": measure.peak_rss_mb(),
        }
    )


def run(engine: str, prep: dict[str, Any], workers: int, cap_gb: float) -> dict[str, Any]:
    """One engine at one size in a fresh process (pandas under the memory cap), with the 1-min
    load average before and after."""
    load = os.getloadavg()[0]
    cap = cap_gb if engine == "pandas" else None
    r = measure.in_fresh_process(_run, engine, prep, workers, cap_gb=cap)
    base = {k: v for k, v in prep.items() if k not in ("data",)}
    return {"engine": engine, **base, **r, "load_1min": {"start": load, "end": os.getloadavg()[0]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1.0], help="millions of rows")
    ap.add_argument("--engines", nargs="+", default=["pandas", "dask"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pandas-cap-gb", type=float, default=PANDAS_CAP_GB)
    ap.add_argument("--work", type=Path, default=None, help="keep the simulated data here")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            work = (args.work or Path(tmp)) / f"{size}M"
            print(f"simulating {size}M rows to {work} ...", flush=True)
            prep = prepare(size, work)
            print(f"  {prep['city']}, {prep['query_stop_rows']:,} training rows", flush=True)
            for engine in args.engines:
                print(f"running {engine} at {size}M rows ...", flush=True)
                runs.append(run(engine, prep, args.workers, args.pandas_cap_gb))
                r = runs[-1]
                done = r.get("failed") or f"{r['wall_s']:.0f} s"
                print(f"  {r['query_stop_rows']:,} rows: {done}", flush=True)
    base = measure.add_ratios(runs)
    measure.write_results(
        args.out,
        "EtaFeaturizer fit + queries + features + quantile boosters (2 modes), same light booster",
        f"{base['engine']} at {base['target_rows_m']}M rows",
        _config(),
        runs,
    )
    print(f"{'engine':8} {'rows':>12} {'wall s':>8} {'rows/s':>10} {'x base':>7} "
          f"{'driver MB':>10} {'workers MB':>14} {'MAE ord/unord':>15}")  # fmt: skip
    for r in runs:
        if "failed" in r:
            print(f"{r['engine']:8} {r['query_stop_rows']:>12,} failed: {r['failed']}")
            continue
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
