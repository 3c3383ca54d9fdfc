"""Pickled model bundles inside logged MLflow models: the one writer and reader that the ETA
and demand pyfuncs share. Unpickling runs code: load only models from a registry you trust."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import mlflow
from mlflow.models import Model

B = TypeVar("B")


def write_bundle(bundle: object, path: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(bundle, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def read_checked(path: Path, kind: type[B], check: Callable[[B], None]) -> B:
    """Unpickle and refuse anything but a ``kind`` whose feature set ``check`` accepts."""
    with open(path, "rb") as fh:
        bundle = pickle.load(fh)
    if not isinstance(bundle, kind):
        raise TypeError(f"{path}: expected a {kind.__name__}, got {type(bundle).__name__}")
    check(bundle)
    return bundle


def load_logged(model_uri: str, artifact: str, read: Callable[[Path], B], what: str) -> B:
    """The bundle of a logged model (``models:/name@alias``, ``runs:/...``, ``models:/m-...``)
    without the pyfunc wrapper.

    The whole model directory is fetched (the bundle is nearly all of it): MLflow 3 reads
    ``models:/<model id>/<sub path>`` as a registered name and version, so no sub-path URI
    works for every form of model URI.
    """
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    flavor = Model.load(local).flavors.get("python_function", {})
    entry = flavor.get("artifacts", {}).get(artifact)
    if entry is None:
        raise ValueError(f"{model_uri}: not {what} (no {artifact!r} artifact)")
    return read(local / entry["path"])
