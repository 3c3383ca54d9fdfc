"""Load the served models once, at start-up: resolve registry aliases to versions, fetch the
bundles, check their feature sets, and keep what ``/model-info`` reports.

An alias is resolved once, so every request of a process is answered by one version; a new
champion is picked up by restarting (or rolling) replicas, never half-way through a process.
A Bento built with ``doorstep build`` carries the champion it found at build time in
``packed_dir`` and loads that instead, with no registry needed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from doorstep.demand_bundle import DemandBundle
from doorstep.eta_bundle import EtaBundle
from serving.config import ServingConfig

log = logging.getLogger("doorstep.serving")

PACKED_INFO = "model-info.json"


@dataclass(frozen=True)
class ModelInfo:
    """What a served model is: registry coordinates, feature set, window, hold-out metrics."""

    name: str
    version: str | None
    alias: str | None
    source: str  # the URI it was loaded from
    run_id: str | None
    feature_set: str
    training_window: tuple[str, str]
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "source": self.source,
            "run_id": self.run_id,
            "feature_set": self.feature_set,
            "training_window": list(self.training_window),
            "metrics": self.metrics,
        }


@dataclass
class LoadedModels:
    eta: EtaBundle | None = None
    eta_info: ModelInfo | None = None
    demand: DemandBundle | None = None
    demand_info: ModelInfo | None = None
    errors: dict[str, str] = field(default_factory=dict)  # model -> why it is not loaded


def _resolve(client: MlflowClient, uri: str) -> tuple[str, str | None, str | None, str | None]:
    """(uri to fetch, version, alias, run id) for ``models:/name@alias`` or ``models:/name/v``."""
    if not uri.startswith("models:/"):
        return uri, None, None, None
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
        return f"models:/{name}/{mv.version}", str(mv.version), alias, mv.run_id
    if "/" in ref:
        name, version = ref.split("/", 1)
        if version.isdigit():
            mv = client.get_model_version(name, version)
            aliases = list(getattr(mv, "aliases", []) or [])
            return uri, str(mv.version), ",".join(aliases) or None, mv.run_id
    return uri, None, None, None


def _metrics(client: MlflowClient, run_id: str | None) -> dict[str, float]:
    """The hold-out metrics the run logged for the model and its baselines (the per-horizon
    tables stay in MLflow: model-info is a summary)."""
    if not run_id:
        return {}
    try:
        data = client.get_run(run_id).data.metrics
    except MlflowException:
        return {}
    return {k: float(v) for k, v in sorted(data.items()) if "by_" not in k}


def _fetch(kind: str, uri: str) -> Any:
    if kind == "eta":
        from doorstep.eta_pyfunc import load_bundle

        return load_bundle(uri)
    from doorstep.demand_pyfunc import load_demand_bundle

    return load_demand_bundle(uri)


def _load_one(client: MlflowClient, name: str, uri: str, kind: str) -> tuple[Any, ModelInfo]:
    fetch, version, alias, run_id = _resolve(client, uri)
    bundle = _fetch(kind, fetch)
    info = ModelInfo(
        name=name,
        version=version,
        alias=alias,
        source=fetch,
        run_id=run_id,
        feature_set=bundle.feature_set,
        training_window=tuple(bundle.training_window),  # type: ignore[arg-type]
        metrics=_metrics(client, run_id),
    )
    return bundle, info


def _load_packed(directory: Path, kind: str) -> tuple[Any, ModelInfo]:
    model_dir = directory / kind
    bundle = _fetch(kind, str(model_dir))
    raw = json.loads((model_dir / PACKED_INFO).read_text())
    raw["training_window"] = tuple(raw["training_window"])
    return bundle, ModelInfo(**raw)


def load_models(config: ServingConfig) -> LoadedModels:
    """Both models; a model that cannot be loaded is recorded in ``errors`` (``/readyz`` says
    not ready) rather than crashing the process, so the reason is visible."""
    out = LoadedModels()
    if config.tracking_uri:
        mlflow.set_tracking_uri(config.tracking_uri)
    client: MlflowClient | None = None  # only touched when a model comes from the registry
    packed = Path(config.packed_dir) if config.packed_dir else None
    for kind, name, uri in (
        ("eta", config.eta_model, config.eta_uri),
        ("demand", config.demand_model, config.demand_uri),
    ):
        try:
            if packed is not None and (packed / kind).is_dir():
                bundle, info = _load_packed(packed, kind)
            else:
                client = client or MlflowClient()
                bundle, info = _load_one(client, name, uri, kind)
        except (MlflowException, OSError, ValueError, TypeError, ImportError) as exc:
            out.errors[kind] = f"{uri}: {exc}"
            log.warning("could not load the %s model from %s: %s", kind, uri, exc)
            continue
        setattr(out, kind, bundle)
        setattr(out, f"{kind}_info", info)
        log.info("loaded %s %s (version %s)", kind, info.source, info.version)
    return out
