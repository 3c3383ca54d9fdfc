"""Service configuration: a frozen dataclass from YAML, with environment overrides.

Everything that differs between a laptop and a cluster is configuration: where the registry is
(``MLFLOW_TRACKING_URI``), which registered models and aliases to serve, where the demand
history lives, and the API key. The service holds no other state, so replicas are identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from doorstep.config import data_dir, load_yaml, tracking_uri

ENV_CONFIG = "DOORSTEP_SERVING_CONFIG"  # path of a YAML file with ServingConfig fields
ENV_API_KEY = "DOORSTEP_API_KEY"
ENV_ETA_URI = "DOORSTEP_ETA_MODEL_URI"  # pin a model (models:/doorstep-eta/3, runs:/..., a path)
ENV_DEMAND_URI = "DOORSTEP_DEMAND_MODEL_URI"
ENV_DEMAND_STORE = "DOORSTEP_DEMAND_STORE"
ENV_DELIVERIES = "DOORSTEP_DELIVERIES"  # the planner's page lists routes from it
ENV_PACKED_DIR = "DOORSTEP_PACKED_MODELS"  # models packed into a Bento at build time
ENV_LOG_IDENTIFIERS = "DOORSTEP_LOG_IDENTIFIERS"
ENV_WORKERS = "DOORSTEP_WORKERS"
ENV_COMPILE_TREES = "DOORSTEP_COMPILE_TREES"

API_KEY_HEADER = "x-api-key"


@dataclass(frozen=True)
class ServingConfig:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    eta_model: str = "doorstep-eta"
    eta_alias: str = "champion"
    eta_model_uri: str | None = None  # overrides name@alias (a pinned version, a run, a path)
    demand_model: str = "doorstep-demand"
    demand_alias: str = "champion"
    demand_model_uri: str | None = None
    # the hourly demand table (zone_id, ts, volume) the lags are read from; re-read whenever
    # the file changes, so a pipeline appending today's volume needs no restart
    demand_store: str | None = None  # None: $DOORSTEP_DATA_DIR/demand_hourly.parquet
    # the deliveries table the planner's page (/ui) lists routes and maps zones to depots from;
    # optional: without it the page still shows the demand map and answers pasted routes
    deliveries: str | None = None  # None: $DOORSTEP_DATA_DIR/ingested/deliveries.parquet
    require_demand: bool = False  # refuse to start (not ready) without a demand model
    api_key: str | None = None  # None: no key required; set $DOORSTEP_API_KEY in production
    packed_dir: str | None = None  # a Bento's packed models, preferred over the registry
    log_identifiers: bool = False  # coordinates and courier ids stay out of logs by default
    max_batch_stops: int = 50_000  # over all routes of a batch call
    workers: int = 0  # 0: one per core
    # compile boosters missing from the tree cache at start-up (slow: seconds per booster);
    # off by default: ``doorstep models compile eta`` fills the cache once per machine
    compile_trees: bool = False

    def resolved(self) -> ServingConfig:
        """Fill the unset fields from the environment (what ``doorstep serve`` starts with)."""
        env = os.environ
        return replace(
            self,
            tracking_uri=self.tracking_uri or tracking_uri(),
            eta_model_uri=env.get(ENV_ETA_URI, self.eta_model_uri),
            demand_model_uri=env.get(ENV_DEMAND_URI, self.demand_model_uri),
            demand_store=env.get(ENV_DEMAND_STORE)
            or self.demand_store
            or str(data_dir() / "demand_hourly.parquet"),
            deliveries=env.get(ENV_DELIVERIES)
            or self.deliveries
            or str(data_dir() / "ingested" / "deliveries.parquet"),
            api_key=env.get(ENV_API_KEY, self.api_key) or None,
            packed_dir=env.get(ENV_PACKED_DIR, self.packed_dir) or _bento_packed(),
            workers=int(env.get(ENV_WORKERS, self.workers)),
            compile_trees=_flag(env.get(ENV_COMPILE_TREES), self.compile_trees),
            log_identifiers=_flag(env.get(ENV_LOG_IDENTIFIERS), self.log_identifiers),
        )

    @property
    def eta_uri(self) -> str:
        return self.eta_model_uri or f"models:/{self.eta_model}@{self.eta_alias}"

    @property
    def demand_uri(self) -> str:
        return self.demand_model_uri or f"models:/{self.demand_model}@{self.demand_alias}"


def _bento_packed() -> str | None:
    """Inside a Bento built by ``doorstep build`` the packed models sit beside the code (the
    build removes them from the source tree afterwards, so a checkout never has them)."""
    packed = Path(__file__).resolve().parent.parent / "packed_models"
    return str(packed) if packed.is_dir() else None


def _flag(value: str | None, default: bool) -> bool:
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def load_serving_config(path: str | Path | None = None) -> ServingConfig:
    """``path``, else ``$DOORSTEP_SERVING_CONFIG``, else the defaults; then the environment."""
    path = path or os.environ.get(ENV_CONFIG)
    return load_yaml(ServingConfig, path).resolved()
