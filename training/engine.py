"""Which engine runs the feature pipelines and training: pandas here, or a Dask cluster.

Configuration, not code: ``EngineConfig(engine="dask", scheduler="tcp://host:8786")`` points
the same pipeline at an existing cluster; without a scheduler a local cluster is started.
Importing this module does not import Dask (an optional dependency: ``pip install
doorstep[dask]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class EngineConfig:
    """Where the feature pipeline and training run. ``pandas``: this process. ``dask``: the
    scheduler at ``scheduler`` (``tcp://host:8786``), or a local cluster when None."""

    engine: Literal["pandas", "dask"] = "pandas"
    scheduler: str | None = None
    n_workers: int = 2  # local cluster only
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    partitions: int = 0  # partitions of in-memory deliveries (0: two per worker)


def nonempty(frame: Any, client: Any) -> Any:
    """``frame`` (a Dask DataFrame) persisted, without its empty partitions: LightGBM's Dask
    training refuses a worker whose share of the data is empty, and date or zone windows
    leave partitions empty."""
    import dask.dataframe as dd

    frame = client.persist(frame)
    sizes = frame.map_partitions(len).compute()
    parts = [p for p, n in zip(frame.to_delayed(), sizes, strict=True) if n > 0]
    if not parts:
        raise ValueError("the training window has no rows")
    return dd.from_delayed(parts, meta=frame._meta, verify_meta=False)


@contextmanager
def dask_client(config: EngineConfig) -> Iterator[Any]:
    """A ``distributed.Client`` on the configured scheduler, or on a local cluster."""
    from distributed import Client, LocalCluster

    if config.scheduler:
        with Client(config.scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=config.n_workers,
            threads_per_worker=config.threads_per_worker,
            memory_limit=config.memory_limit,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
