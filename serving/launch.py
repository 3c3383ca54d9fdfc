"""``doorstep serve``: run ``bentoml serve`` with absolute paths, and resolve the registry
aliases once per server.

Every worker process loads its models itself. ``resolve_aliases`` runs once, in BentoML's
arbiter before any worker starts (the service's ``on_deployment`` hook), and hands the workers
the exact versions (``models:/doorstep-eta/7``): a promotion during start-up cannot leave two
workers serving different champions. The arbiter also copies each pinned version into a local
cache (``$DOORSTEP_MODEL_CACHE``, default ``~/.cache/doorstep/models``; once per version, as a
registered version never changes) with its ``model-info.json``, and the workers load that
copy: they never import MLflow, which is seconds of start-up on a small machine. A version
that cannot be copied is loaded by the workers from the registry, as before. The CLI itself
imports nothing heavy, so start-up pays for MLflow's import once, in the arbiter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.config import (
    ENV_DELIVERIES,
    ENV_DEMAND_STORE,
    ENV_DEMAND_URI,
    ENV_ETA_URI,
    ENV_WORKERS,
    ServingConfig,
)

SERVICE = "serving.service:Doorstep"
ENV_MODEL_CACHE = "DOORSTEP_MODEL_CACHE"

log = logging.getLogger("doorstep.serving")


@dataclass(frozen=True)
class Resolved:
    """Pinned model URIs for the workers, and what could not be resolved (and why)."""

    env: dict[str, str]
    versions: dict[str, str]
    missing: dict[str, str]


def model_cache_dir() -> Path:
    """``$DOORSTEP_MODEL_CACHE`` or ``~/.cache/doorstep/models``."""
    default = Path.home() / ".cache" / "doorstep" / "models"
    return Path(os.environ.get(ENV_MODEL_CACHE, default))


def cache_model(client: Any, config: ServingConfig, name: str, uri: str, kind: str) -> Path:
    """A local copy of the registered version ``uri`` (``models:/name/7``) with the
    ``model-info.json`` the workers report, made once per (registry, version, run)."""
    import mlflow

    from serving.loader import PACKED_INFO, _metrics, _resolve

    fetch, version, alias, run_id = _resolve(client, uri)
    tag = f"{config.tracking_uri}|{name}|{version}|{run_id}|{fetch}"
    target = model_cache_dir() / f"{kind}-{hashlib.sha256(tag.encode()).hexdigest()[:20]}"
    if (target / PACKED_INFO).is_file():
        return target
    # the bundle is not unpickled here: the workers check its feature set when they load it
    info = {
        "name": name,
        "version": version,
        "alias": alias,
        "source": fetch,
        "run_id": run_id,
        "metrics": _metrics(client, run_id),
    }
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=fetch, dst_path=str(tmp)))
        if not (local / "MLmodel").is_file():
            raise ValueError(f"{fetch}: no MLmodel file in the downloaded model")
        (local / PACKED_INFO).write_text(json.dumps(info, indent=1) + "\n")
        with contextlib.suppress(OSError):  # OSError: another server cached it meanwhile
            local.rename(target)  # atomic: a worker never sees half a copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_aliases(config: ServingConfig, cache: bool = False) -> Resolved:
    """Aliases -> exact versions; with ``cache``, each version is also copied locally and the
    workers are pointed at the copy (falling back to the registry URI if copying fails)."""
    from mlflow.exceptions import MlflowException

    from serving.loader import registry_client

    client = registry_client(config)
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
        if cache:
            try:
                env[var] = str(cache_model(client, config, name, env[var], kind))
            except (MlflowException, OSError, ValueError, TypeError) as exc:
                log.warning("%s: no local copy (%s); workers load it from the registry", kind, exc)
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
    env = dict(os.environ)
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


def pin_models_for_workers() -> Resolved:
    """Resolve the aliases now and export the pinned URIs for the workers about to start."""
    from serving.config import load_serving_config

    resolved = resolve_aliases(load_serving_config(), cache=True)
    os.environ.update(resolved.env)
    return resolved


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_server(
    env: Mapping[str, str], log_path: Path, *, workers: int = 1, timeout_s: float = 90.0
) -> Iterator[str]:
    """A real ``doorstep serve`` on 127.0.0.1 (tests, benchmarks): yields its base URL once
    ``/readyz`` answers 200, stops it on exit. Raises with the log's tail if it dies or is
    not ready in time."""
    import subprocess
    import time

    import httpx

    port = free_port()
    argv = [str(Path(sys.executable).parent / "doorstep"), "serve", "--port", str(port)]
    full_env = {**os.environ, **env, ENV_WORKERS: str(workers)}
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, env=full_env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"doorstep serve not ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
