"""``doorstep serve``: resolve the registry aliases once, then run ``bentoml serve``.

Every worker process loads its models itself; resolving ``doorstep-eta@champion`` here, once,
and handing the workers the exact version (``models:/doorstep-eta/7``) means a promotion
during start-up cannot leave two workers serving different champions.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from serving.config import (
    ENV_DELIVERIES,
    ENV_DEMAND_STORE,
    ENV_DEMAND_URI,
    ENV_ETA_URI,
    ENV_WORKERS,
    ServingConfig,
)

SERVICE = "serving.service:Doorstep"


@dataclass(frozen=True)
class Resolved:
    """Pinned model URIs for the workers, and what could not be resolved (and why)."""

    env: dict[str, str]
    versions: dict[str, str]
    missing: dict[str, str]


def resolve_aliases(config: ServingConfig) -> Resolved:
    if config.tracking_uri:
        mlflow.set_tracking_uri(config.tracking_uri)
    client = MlflowClient()
    env: dict[str, str] = {}
    versions: dict[str, str] = {}
    missing: dict[str, str] = {}
    for kind, var, name, alias, pinned in (
        ("eta", ENV_ETA_URI, config.eta_model, config.eta_alias, config.eta_model_uri),
        (
            "demand",
            ENV_DEMAND_URI,
            config.demand_model,
            config.demand_alias,
            config.demand_model_uri,
        ),
    ):
        if pinned:
            env[var] = pinned
            versions[kind] = pinned
            continue
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            missing[kind] = f"{name}@{alias}: {exc.message}"
            continue
        env[var] = f"models:/{name}/{mv.version}"
        versions[kind] = f"{name} version {mv.version} (@{alias})"
    return Resolved(env, versions, missing)


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///mlflow.db`` relative to here, so workers started elsewhere find it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def serve_argv(host: str, port: int, workers: int | None = None) -> list[str]:
    return [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]


def exec_serve(config: ServingConfig, host: str, port: int, workers: int | None) -> None:
    """Replace this process with the BentoML server (signals reach it directly)."""
    resolved = resolve_aliases(config)
    env = {**os.environ, **resolved.env}
    if config.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = absolute_sqlite(config.tracking_uri)
    if config.demand_store:
        env[ENV_DEMAND_STORE] = str(Path(config.demand_store).resolve())
    if config.deliveries:
        env[ENV_DELIVERIES] = str(Path(config.deliveries).resolve())
    if workers:
        env[ENV_WORKERS] = str(workers)
    argv = serve_argv(host, port, workers)
    os.execve(argv[0], argv, env)
