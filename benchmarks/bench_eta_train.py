"""Benchmark: ETA feature building and training on ~1M query-stop rows (target: <= 5 min).

Simulates a city, builds every training query, then times (a) query building, (b) profile
fitting and feature matrices for both modes, on their own, for the breakdown, (c) the full
``train_eta``, which fits the profiles and builds the matrices itself before the boosters (three
quantile boosters per mode, early stopping, refit, conformal calibration). The headline,
"features + training", is (a) + (c): (b) is inside (c) and is not counted twice. The baseline measured in the
same run is a plain LightGBM L2 regression on two raw columns (distance, rank) over the same
rows and rounds: it shows what the rich feature set and quantile stack cost beyond a bare fit.

    python benchmarks/bench_eta_train.py [--days 40] [--couriers 80] [--out benchmarks/results/eta_train.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=40)  # ~1.1M query-stop rows at 80 couriers
    parser.add_argument("--couriers", type=int, default=80)
    parser.add_argument("--rows", type=int, default=1_000_000, help="query-stop rows to train on")
    parser.add_argument(
        "--pair-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the unordered mode's learned visit order (on by default, as in EtaConfig)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eta_train.json"))
    args = parser.parse_args(argv)

    from citysim import CityConfig, simulate
    from features.eta_queries import queries_from_deliveries
    from features.ingest import ingest_frame
    from training.eta import EtaConfig, train_eta
    from training.pipeline_eta import holdout_start

    cfg = dataclasses.replace(CityConfig(), days=args.days, couriers=args.couriers, seed=3)
    t0 = time.perf_counter()
    deliveries = ingest_frame(simulate(cfg).deliveries, cfg.tz).deliveries
    t_sim = time.perf_counter() - t0

    t0 = time.perf_counter()
    batch = queries_from_deliveries(deliveries)
    t_queries = time.perf_counter() - t0
    # keep whole queries, at random, until about ``rows`` targets remain
    rng = np.random.default_rng(0)
    order = rng.permutation(batch.n_queries)
    sizes = np.bincount(batch.t_query, minlength=batch.n_queries)[order]
    keep = np.zeros(batch.n_queries, dtype=bool)
    keep[order[: int(np.searchsorted(np.cumsum(sizes), args.rows)) + 1]] = True
    batch = batch.take_queries(keep)
    rows = batch.n_targets
    if rows < args.rows:
        print(
            f"warning: the city has only {rows:,} query-stop rows (< --rows {args.rows:,}): raise --days"
        )

    config = EtaConfig(
        max_train_queries=batch.n_queries, calib_days=7, valid_days=5, pair_order=args.pair_order
    )
    t0 = time.perf_counter()
    featurizer = config.featurizer().fit(deliveries, queries=batch)
    X = {mode: featurizer.transform(batch, mode) for mode in ("ordered", "unordered")}
    t_features = time.perf_counter() - t0

    test_from = holdout_start(deliveries, 1)
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_eta(deliveries, test_from, config, batch=batch)
    t_train, cpu_train = time.perf_counter() - t0, time.process_time() - c0
    trained_rows = sum(result.n_train_rows.values())
    rounds = max(result.best_iterations.values())

    dist = X["unordered"][:, :1]
    rank = X["unordered"][:, 3:4]
    t0 = time.perf_counter()
    lgb.train(
        {"objective": "l2", "num_threads": config.num_threads, "verbosity": -1},
        lgb.Dataset(np.hstack([dist, rank]), batch.t_label_min),
        rounds,
    )
    t_baseline = time.perf_counter() - t0

    results: dict[str, object] = {
        "city": {"days": args.days, "couriers": args.couriers, "stops": len(deliveries)},
        "query_stop_rows": rows,
        "rows_trained_incl_valid_and_calibration": trained_rows,
        "seconds": {
            "simulate": t_sim,  # single-threaded and fixed work: how fast the machine is today
            "build_queries_all": t_queries,
            "features_both_modes": t_features,
            "train_eta_total": t_train,
            "baseline_bare_lightgbm": t_baseline,
        },
        "features_plus_training_seconds": t_queries + t_train,
        "rows_per_second": rows / (t_queries + t_train),
        "ratio_train_eta_to_bare_lightgbm": t_train / t_baseline,
        # CPU seconds of all threads: on a shared machine the wall time includes waiting for
        # cores; cpu / threads is what a quiet machine would take at best
        "cpu_seconds_train_eta": cpu_train,
        "num_threads": config.num_threads,
        "pair_order": config.pair_order,
        "load_average_1min_before_training": load_before,
        "best_iterations": result.best_iterations,
        "peak_rss_mb": _peak_rss_mb(),
        "target_seconds": 300,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'what':<38}{'value':>14}")
    print(f"{'query-stop rows':<38}{rows:>14,}")
    print(f"{'queries, all rows (s)':<38}{t_queries:>14.1f}")
    print(f"{'  profiles + matrices, both modes (s)':<38}{t_features:>14.1f}")
    print(f"{'train_eta incl. features (s)':<38}{t_train:>14.1f}")
    print(f"{'features + training (s), target 300':<38}{t_queries + t_train:>14.1f}")
    print(f"{'rows/s':<38}{rows / (t_queries + t_train):>14,.0f}")
    print(f"{'bare LightGBM, same rows+rounds (s)':<38}{t_baseline:>14.1f}")
    print(f"{'ratio train_eta / bare':<38}{t_train / t_baseline:>14.1f}")
    print(f"{'peak RSS (MB)':<38}{_peak_rss_mb():>14,.0f}")
    return results


if __name__ == "__main__":
    main()
