"""``doorstep train demand --engine dask``: the pandas pipeline with the boosters trained on Dask.

Everything but training is ``training.pipeline_demand.train_and_register_demand``: the hold-out,
its scoring beside the baselines, the MLflow logging, registration and the gate. Only its
training step (``train_demand``) is swapped for ``dask_trainer``'s (features and boosters on zone
partitions of a cluster). Demand tables are zones x periods, small next to their training rows
(zone x origin x horizon), so they are held here for the hold-out scoring.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.demand_features import DemandFeatureSpec
from training.dask_demand import by_zone
from training.dask_demand_train import train_demand_dask
from training.demand import DemandTrainConfig, DemandTrainResult
from training.engine import EngineConfig, dask_client

if TYPE_CHECKING:
    from training.pipeline_demand import DemandTrainer


@contextmanager
def dask_trainer(engine: EngineConfig, client: Any = None) -> Iterator[DemandTrainer]:
    """A ``pipeline_demand.DemandTrainer`` that partitions the table by zone and trains on
    ``client`` if given, else on ``engine``'s scheduler (or a local cluster, closed on exit)."""
    with nullcontext(client) if client is not None else dask_client(engine) as c:
        npartitions = max(engine.partitions or 2 * len(c.scheduler_info()["workers"]), 1)

        def train(
            table: pd.DataFrame,
            freq: str,
            test_from: pd.Timestamp,
            spec: DemandFeatureSpec,
            config: DemandTrainConfig,
        ) -> DemandTrainResult:
            ddf = by_zone(table, freq, npartitions)
            return train_demand_dask(ddf, freq, test_from, c, spec, config)

        yield train
