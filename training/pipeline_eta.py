"""``doorstep train eta``: train, evaluate on the most recent hold-out window, log, register, gate.

The hold-out window is the last ``holdout_days`` days of the data. The model is trained on
everything before it (with its own validation and calibration windows), then scored there
beside every baseline and beside the current champion on exactly the same rows: the champion
alias moves only when the new version wins in both modes with coverage within tolerance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd

from doorstep.config import use_experiment
from doorstep.eta_bundle import EtaBundle
from doorstep.eta_pyfunc import load_bundle
from features import schema as s
from features.eta_queries import QueryBatch, queries_from_deliveries
from features.eta_request import requests_from_deliveries
from features.profiles import local_day
from training.baselines import fit_baselines
from training.engine import EngineConfig
from training.eta import EtaConfig, day_of, train_eta
from training.evaluate import evaluate
from training.leg import LegConfig, train_leg
from training.metrics import eta_metrics
from training.registry import GateRule, PromotionDecision, promote_if_better
from training.tracking import EXPERIMENT, REGISTERED_NAME, flatten, log_eta_model

Scores = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class TrainEtaOutcome:
    run_id: str
    model_uri: str
    version: str | None
    decision: PromotionDecision | None
    holdout_from: str
    metrics: dict[str, Any]
    leg_metrics: dict[str, Any]


def holdout_start(deliveries: pd.DataFrame, holdout_days: int) -> str:
    """First day of the most recent ``holdout_days`` days of routes."""
    last = int(local_day(deliveries[s.DISPATCH_TIME]).max())
    return str((pd.Timestamp("1970-01-01") + pd.Timedelta(days=last - holdout_days + 1)).date())


def score_bundle(bundle: EtaBundle, batch: QueryBatch) -> Scores:
    """The gate's scores of a bundle on the hold-out rows, per mode."""
    out: Scores = {}
    for mode in bundle.modes:
        out[mode] = eta_metrics(batch.t_label_min, bundle.predict(batch, mode))  # type: ignore[arg-type]
    return out


def train_and_register_eta(
    deliveries: pd.DataFrame,
    config: EtaConfig | None = None,
    *,
    data_source: str,
    holdout_days: int = 7,
    registered_name: str | None = REGISTERED_NAME,
    gate: GateRule | None = None,
    leg_config: LegConfig | None = None,
    engine: EngineConfig | None = None,
) -> TrainEtaOutcome:
    """Train the ETA bundle (and leg model), score it, log it, register it, apply the gate.

    ``engine``: with ``engine="dask"`` the ETA features and boosters are computed on a Dask
    cluster (``training.dask_eta``); the same bundle comes back and everything after is equal.
    """
    config = config or EtaConfig()
    engine = engine or EngineConfig()
    holdout_from = holdout_start(deliveries, holdout_days)
    batch = queries_from_deliveries(deliveries)
    t_from = day_of(holdout_from)
    before = batch.q_route_day < t_from
    if engine.engine == "dask":
        from training.dask_eta import by_route_day, train_eta_dask
        from training.engine import dask_client

        with dask_client(engine) as client:
            ddf = by_route_day(deliveries, max(2 * engine.n_workers, engine.partitions))
            result = train_eta_dask(ddf, holdout_from, config, client)
    else:
        result = train_eta(deliveries, holdout_from, config, batch=batch.take_queries(before))
    leg = train_leg(deliveries, holdout_from, leg_config)
    result.bundle.leg = leg.bundle
    history = deliveries[local_day(deliveries[s.DISPATCH_TIME]) < t_from]
    baselines = fit_baselines(history, batch.take_queries(before))
    holdout = batch.take_queries(~before)
    evaluation = evaluate(result.bundle, baselines, holdout)
    recent = deliveries[local_day(deliveries[s.DISPATCH_TIME]) >= t_from]
    examples = requests_from_deliveries(recent[recent[s.ROUTE_ID] == recent[s.ROUTE_ID].iloc[0]])[
        :1
    ]

    use_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=f"eta-{holdout_from}"):
        mlflow.log_metrics({f"leg.model.{k}": float(v) for k, v in leg.metrics.items()})
        for name, m in leg.baselines.items():
            mlflow.log_metrics({f"leg.baseline.{name}.{k}": float(v) for k, v in m.items()})
        mlflow.log_params(flatten("leg", dataclasses.asdict(leg_config or LegConfig()), {}))
        logged = log_eta_model(
            result,
            evaluation,
            config=config,
            data_info={"data_source": data_source, "holdout_from": holdout_from},
            example_routes=examples,
            y_test=holdout.t_label_min,
            registered_name=registered_name,
        )
    decision = None
    if registered_name is not None and logged.model_version is not None:
        challenger = {mode: ev.model for mode, ev in evaluation.items()}
        decision = promote_if_better(
            registered_name,
            logged.model_version,
            challenger,
            lambda uri: score_bundle(load_bundle(uri), holdout),
            gate,
        )
    return TrainEtaOutcome(
        run_id=logged.run_id,
        model_uri=logged.model_uri,
        version=logged.model_version,
        decision=decision,
        holdout_from=holdout_from,
        metrics={mode: ev.summary() for mode, ev in evaluation.items()},
        leg_metrics={"model": leg.metrics, "baselines": leg.baselines},
    )
