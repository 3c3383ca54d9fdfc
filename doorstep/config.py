"""Configuration: frozen dataclasses loaded from YAML.

Defaults run on one machine. Infrastructure locations (MLflow tracking URI, data paths)
come from environment variables so the same config points at real infrastructure.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_DATA_DIR = "DOORSTEP_DATA_DIR"
DEFAULT_DATA_DIR = Path("data")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def data_dir() -> Path:
    """Where doorstep keeps its tables: ``$DOORSTEP_DATA_DIR`` or ``./data``."""
    return Path(os.environ.get(ENV_DATA_DIR, str(DEFAULT_DATA_DIR)))


def tracking_uri() -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or a local SQLite store."""
    return os.environ.get(ENV_TRACKING_URI, DEFAULT_TRACKING_URI)


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build a (nested) frozen dataclass from a plain mapping, rejecting unknown keys."""
    data = dict(data or {})
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config key(s) {unknown}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        target = _dataclass_in(hint)
        if target is not None and isinstance(value, dict):
            kwargs[name] = from_dict(target, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None


def load_yaml(cls: type[T], path: str | Path | None) -> T:
    """Load ``cls`` from a YAML file; ``None`` gives the defaults."""
    if path is None:
        return cls()
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return from_dict(cls, raw)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain YAML/JSON-able data (tuples become lists)."""
    return typing.cast(dict[str, Any], _plain(dataclasses.asdict(obj)))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


ENV_ARTIFACT_ROOT = "DOORSTEP_ARTIFACT_ROOT"


def use_experiment(name: str) -> str:
    """Set the active MLflow experiment, creating it with ``$DOORSTEP_ARTIFACT_ROOT/<name>`` as
    its artifact location when that variable is set (else MLflow's default for the store).

    Returns the experiment id. Keeps artifacts of a local store in one known place instead of
    wherever the process happened to start.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    existing = mlflow.get_experiment_by_name(name)
    if existing is None:
        root = os.environ.get(ENV_ARTIFACT_ROOT)
        location = Path(root, name).resolve().as_uri() if root else None
        exp_id = mlflow.create_experiment(name, artifact_location=location)
    else:
        exp_id = existing.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return str(exp_id)
