"""``doorstep build``: pack the current champions into a Bento.

``bentoml build`` copies the source tree into a self-contained Bento; the registry may not be
reachable where the Bento runs (a container, another cloud). So the champions found at build
time are downloaded into ``packed_models/`` (one MLflow model directory per kind, plus the
``model-info.json`` that ``/v1/model-info`` reports), ``bentofile.yaml`` includes that folder
and sets ``DOORSTEP_PACKED_MODELS``, and the service loads the packed copies first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from serving.config import ServingConfig
from serving.loader import PACKED_INFO, _load_one

PACKED_DIR = Path("packed_models")


@dataclass(frozen=True)
class Packed:
    directory: Path
    versions: dict[str, str]  # kind -> registered version packed
    skipped: dict[str, str]  # kind -> why it could not be packed


def pack_models(config: ServingConfig, out: Path = PACKED_DIR) -> Packed:
    """Download the models ``config`` points at (aliases resolved now) into ``out``."""
    if config.tracking_uri:
        mlflow.set_tracking_uri(config.tracking_uri)
    client = MlflowClient()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for kind, name, uri in (
        ("eta", config.eta_model, config.eta_uri),
        ("demand", config.demand_model, config.demand_uri),
    ):
        try:
            _, info = _load_one(client, name, uri, kind)  # resolves, checks the feature set
        except Exception as exc:  # reported; only the ETA model is required
            skipped[kind] = f"{uri}: {exc}"
            continue
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.source))
        shutil.copytree(local, out / kind)
        (out / kind / PACKED_INFO).write_text(json.dumps(info.as_dict(), indent=1) + "\n")
        versions[kind] = str(info.version)
    if "eta" in skipped:
        raise ValueError(f"no ETA model to pack: {skipped['eta']}")
    return Packed(out, versions, skipped)


def bentoml_build(root: Path) -> str:
    """Run ``bentoml build`` in ``root`` (where bentofile.yaml is); returns its output."""
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout
