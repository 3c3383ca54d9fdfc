"""``doorstep train demand --engine dask``: the pandas pipeline with the boosters trained on Dask.

Everything but training is ``training.pipeline_demand``'s own code: the hold-out, its scoring
beside the baselines, the MLflow logging, registration and the gate. Only the training step
(``pipeline_demand.train_bundle``) is swapped for ``train_bundle_dask`` (features and boosters
on zone partitions of a cluster). Demand tables are zones x periods, small next to their
training rows (zone x origin x horizon), so they are held here for the hold-out scoring.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import mlflow
import pandas as pd

from doorstep.config import use_experiment
from doorstep.demand_bundle import DemandBundle
from features import schema as s
from features.demand_features import spec_for
from training.dask_demand import by_zone
from training.dask_demand_train import train_demand_dask
from training.demand import DemandTrainResult
from training.engine import EngineConfig, dask_client
from training.pipeline_demand import (
    EXPERIMENT,
    FREQ_KEYS,
    REGISTERED_NAME,
    DemandConfig,
    Holdout,
    TrainDemandOutcome,
    champion_scores,
    default_gate,
    gate_scores,
    log_demand_model,
    make_holdout,
    run_params,
    score_holdout,
)
from training.registry import GateRule, promote_if_better


def train_bundle_dask(
    holdout: Holdout, config: DemandConfig, client: Any, npartitions: int
) -> tuple[DemandBundle, dict[str, DemandTrainResult]]:
    """``pipeline_demand.train_bundle`` with each frequency trained on the cluster."""
    results = {}
    for freq, table in holdout.tables.items():
        before = table[pd.to_datetime(table[s.TS]) < holdout.start]
        spec = spec_for(freq, config.holidays_country)
        ddf = by_zone(before, freq, npartitions)
        try:
            results[freq] = train_demand_dask(
                ddf, freq, holdout.start, client, spec, config.for_freq(freq)
            )
        except ValueError as exc:
            raise ValueError(f"{FREQ_KEYS[freq]}: {exc}") from exc
    first = min(pd.to_datetime(t[s.TS]).min() for t in holdout.tables.values())
    bundle = DemandBundle(
        {f: r.bundle.models[f] for f, r in results.items()},
        training_window=(str(first), str(holdout.start)),
    )
    return bundle, results


def train_and_register_demand_dask(
    hourly: pd.DataFrame | None,
    daily: pd.DataFrame | None,
    config: DemandConfig | None = None,
    *,
    data_source: str,
    holdout_days: int = 7,
    registered_name: str | None = REGISTERED_NAME,
    gate: GateRule | None = None,
    engine: EngineConfig | None = None,
    client: Any = None,
) -> TrainDemandOutcome:
    """``pipeline_demand.train_and_register_demand`` with the training on Dask: on ``client``
    if given, else on ``engine``'s scheduler (or a local cluster)."""
    config = config or DemandConfig()
    engine = engine or EngineConfig(engine="dask")
    tables = {f: t for f, t in (("h", hourly), ("d", daily)) if t is not None}
    holdout = make_holdout(tables, holdout_days)
    with nullcontext(client) if client is not None else dask_client(engine) as c:
        npartitions = engine.partitions or 2 * len(c.scheduler_info()["workers"])
        bundle, results = train_bundle_dask(holdout, config, c, max(npartitions, 1))
    scores, series = score_holdout(bundle, holdout)
    use_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=f"demand-{holdout.start.date()}"):
        mlflow.set_tag("engine", "dask")
        logged = log_demand_model(
            bundle,
            holdout,
            scores,
            series,
            run_params(config, results),
            data_source=data_source,
            nominal=config.for_freq(next(iter(tables))).coverage,
            registered_name=registered_name,
        )
    decision = None
    if registered_name is not None and logged.model_version is not None:
        decision = promote_if_better(
            registered_name,
            logged.model_version,
            gate_scores(scores),
            lambda uri: champion_scores(uri, holdout),
            gate or default_gate(config, list(tables)),
        )
    return TrainDemandOutcome(
        run_id=logged.run_id,
        model_uri=logged.model_uri,
        version=logged.model_version,
        decision=decision,
        holdout_from=str(holdout.start.date()),
        metrics=scores,
    )
