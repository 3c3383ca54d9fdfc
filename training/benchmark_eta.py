"""``doorstep benchmark eta``: the reproducible ETA protocol (a contract; see the README).

Train on every courier-day before ``test_from`` (its own validation and calibration windows come
out of that period), evaluate on the rest, both protocols on the same rows, every baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from features import schema as s
from features.eta_queries import QueryBatch, queries_from_deliveries
from features.ingest import IngestOptions, ingest
from features.profiles import local_day
from training.baselines import fit_baselines
from training.eta import EtaConfig, EtaTrainResult, day_of, train_eta
from training.evaluate import ModeEvaluation, evaluate

MAX_DROPPED_SHARE = 0.01  # the protocol may leave out quarantined rows only below 1%


@dataclass(frozen=True)
class EtaBenchmark:
    """The benchmark's results: per protocol, the model and baselines on the same rows."""

    results: dict[str, Any]
    train: EtaTrainResult
    evaluation: dict[str, ModeEvaluation]
    test: QueryBatch


def load_for_benchmark(path: Path, fmt: str, *, year: int = 2021, tz: str = s.DEFAULT_TZ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Deliveries for the protocol: a LaDe file through its adapter, or a contract Parquet file,
    both through ingest validation. A contract file is validated too: a raw simulator or
    warehouse export can hold rows validation quarantines (GPS placeholders at (0, 0),
    teleports, conflicting duplicates), and one stop 10,000 km away wrecks every distance
    baseline; the protocol leaves them out only while they are under 1% of the file."""
    if fmt not in ("lade", "parquet"):
        raise ValueError(f"--format: must be lade or parquet (contract deliveries), got {fmt!r}")
    result = ingest(path, IngestOptions(fmt=fmt, year=year, tz=tz))  # type: ignore[arg-type]
    dropped = result.n_quarantined / max(result.n_input, 1)
    if dropped >= MAX_DROPPED_SHARE:
        raise ValueError(
            f"{path}: validation would drop {dropped:.1%} of rows; the protocol allows under 1%"
        )
    info = {"rows_in_file": result.n_input, "rows_dropped": result.n_quarantined, "dropped_reasons": result.counts}
    return result.deliveries, info


def run_eta_benchmark(
    deliveries: pd.DataFrame, test_from: str, config: EtaConfig | None = None, info: dict[str, Any] | None = None
) -> EtaBenchmark:
    """Train before ``test_from``, score both protocols and every baseline on the test rows."""
    config = config or EtaConfig()
    start = time.perf_counter()
    batch = queries_from_deliveries(deliveries)
    t_from = day_of(test_from)
    before = batch.q_route_day < t_from
    if not (~before).any():
        raise ValueError(f"--test-from {test_from}: no courier-day on or after it in the data")
    train = train_eta(deliveries, test_from, config, batch=batch.take_queries(before))
    history = deliveries[local_day(deliveries[s.DISPATCH_TIME]) < t_from]
    baselines = fit_baselines(history, batch.take_queries(before))
    test = batch.take_queries(~before)
    fit_seconds = time.perf_counter() - start
    evaluation = evaluate(train.bundle, baselines, test)
    protocols: dict[str, Any] = {}
    for mode, ev in evaluation.items():
        protocols[mode] = {
            "n_rows": ev.n_rows,
            "model": ev.model,
            "baselines": ev.baselines,
            "by_horizon": ev.by_horizon,
            "stability_min": ev.stability_min,
            "mae_ratio_to_speed": ev.ratio_to("speed"),
            "best_baseline": ev.best_baseline[0],
            "mae_ratio_to_best_baseline": ev.ratio_to(ev.best_baseline[0]),
        }
    results = {
        "protocols": protocols,
        "fit_seconds": fit_seconds,
        "test_from": test_from,
        "n_train_rows": train.n_train_rows,
        "best_iterations": train.best_iterations,
        "calibration_offsets_min": train.calibration,
        "feature_set": train.bundle.feature_set,
        "data": info or {},
    }
    return EtaBenchmark(results=results, train=train, evaluation=evaluation, test=test)
