"""Load the served models once, at start-up: resolve registry aliases to versions, fetch the
bundles, check their feature sets, and keep what ``/model-info`` reports.

An alias is resolved once, so every request of a process is answered by one version; a new
champion is picked up by restarting (or rolling) replicas, never half-way through a process.
A Bento built with ``doorstep build`` carries the champion it found at build time in
``packed_dir`` and loads that instead, with no registry needed.

Local model directories (packed ones, and the copies ``serving.launch`` caches for the workers)
are read without MLflow: the ``MLmodel`` file names the pickled bundle, and a worker that never
imports MLflow starts seconds sooner.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from serving.config import ServingConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from doorstep.demand_bundle import DemandBundle
    from doorstep.eta_bundle import EtaBundle

log = logging.getLogger("doorstep.serving")

PACKED_INFO = "model-info.json"
# the pyfunc artifact holding each kind's pickled bundle (eta_pyfunc / demand_pyfunc.BUNDLE_ARTIFACT)
BUNDLE_ARTIFACTS = {"eta": "bundle", "demand": "demand_bundle"}


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
    from mlflow.exceptions import MlflowException

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


def bundle_file(model_dir: Path, kind: str) -> Path:
    """The pickled bundle of a logged model copied to ``model_dir``: the ``MLmodel`` file's
    pyfunc flavour names it."""
    meta = yaml.safe_load((model_dir / "MLmodel").read_text())
    artifacts = (meta.get("flavors", {}).get("python_function", {}) or {}).get("artifacts", {})
    entry = artifacts.get(BUNDLE_ARTIFACTS[kind])
    if entry is None:
        raise ValueError(
            f"{model_dir}: not a {kind} model (no {BUNDLE_ARTIFACTS[kind]!r} artifact)"
        )
    return model_dir / entry["path"]


def local_model_dir(config: ServingConfig, kind: str) -> Path | None:
    """Where ``load_models`` reads ``kind`` from when it is a local copy (packed or cached)."""
    packed = Path(config.packed_dir) / kind if config.packed_dir else None
    if packed is not None and packed.is_dir():
        return packed
    uri = config.eta_uri if kind == "eta" else config.demand_uri
    return Path(uri) if is_local_model(uri) else None


def read_local_bundle(model_dir: Path, kind: str) -> Any:
    """The checked bundle of a logged model copied to ``model_dir``, without MLflow: unpickled
    and checked exactly as ``load_bundle`` / ``load_demand_bundle`` do."""
    path = bundle_file(model_dir, kind)
    if kind == "eta":
        from doorstep.eta_bundle import EtaBundle as expected
        from doorstep.eta_bundle import check_feature_set
    else:
        from doorstep.demand_bundle import DemandBundle as expected  # type: ignore[assignment]
        from doorstep.demand_bundle import check_feature_set  # type: ignore[assignment]
    with open(path, "rb") as fh:
        bundle = pickle.load(fh)
    if not isinstance(bundle, expected):
        raise TypeError(f"{path}: expected a {expected.__name__}, got {type(bundle).__name__}")
    check_feature_set(bundle)
    return bundle


def is_local_model(uri: str) -> bool:
    """A model directory with its ``model-info.json`` (packed, or cached by the launcher)."""
    return "://" not in uri and ":/" not in uri and (Path(uri) / PACKED_INFO).is_file()


def load_local(model_dir: Path, kind: str) -> tuple[Any, ModelInfo]:
    """A local model directory and its registry coordinates (``model-info.json``); the
    feature set and training window are the bundle's own."""
    bundle = read_local_bundle(model_dir, kind)
    raw = json.loads((model_dir / PACKED_INFO).read_text())
    raw["feature_set"] = bundle.feature_set
    raw["training_window"] = tuple(bundle.training_window)
    return bundle, ModelInfo(**raw)


def _load_packed(directory: Path, kind: str) -> tuple[Any, ModelInfo]:
    return load_local(directory / kind, kind)


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a model that cannot be loaded raises (MLflow's errors only if it was imported)."""
    errors: tuple[type[BaseException], ...] = (
        OSError,
        ValueError,
        TypeError,
        ImportError,
        KeyError,
        pickle.UnpicklingError,
        yaml.YAMLError,
    )
    if "mlflow" in sys.modules:
        from mlflow.exceptions import MlflowException

        errors = (*errors, MlflowException)
    return errors


def load_models(config: ServingConfig) -> LoadedModels:
    """Both models; a model that cannot be loaded is recorded in ``errors`` (``/readyz`` says
    not ready) rather than crashing the process, so the reason is visible."""
    out = LoadedModels()
    client: MlflowClient | None = None  # only touched when a model comes from the registry
    packed = Path(config.packed_dir) if config.packed_dir else None
    for kind, name, uri in (
        ("eta", config.eta_model, config.eta_uri),
        ("demand", config.demand_model, config.demand_uri),
    ):
        try:
            if packed is not None and (packed / kind).is_dir():
                bundle, info = _load_packed(packed, kind)
            elif is_local_model(uri):
                bundle, info = load_local(Path(uri), kind)
            else:
                client = client or registry_client(config)
                bundle, info = _load_one(client, name, uri, kind)
        except _load_errors() as exc:
            out.errors[kind] = f"{uri}: {exc}"
            log.warning("could not load the %s model from %s: %s", kind, uri, exc)
            continue
        setattr(out, kind, bundle)
        setattr(out, f"{kind}_info", info)
        log.info("loaded %s %s (version %s)", kind, info.source, info.version)
    return out


def registry_client(config: ServingConfig) -> MlflowClient:
    """An MLflow client on the configured registry (MLflow is imported only here)."""
    import mlflow
    from mlflow import MlflowClient

    if config.tracking_uri:
        mlflow.set_tracking_uri(config.tracking_uri)
    return MlflowClient()
