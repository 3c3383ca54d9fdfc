"""Shared fixtures: the real public data beside the project, and throwaway stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DOORSTEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
LADE_JILIN = SHARED_DATA / "lade_jilin" / "delivery_jl_0512_0915.parquet"
CHANGSHU = SHARED_DATA / "parl_changshu" / "changshu_history_orders.csv.gz"


@pytest.fixture(scope="session")
def lade_jilin_path() -> Path:
    if not LADE_JILIN.exists():
        pytest.skip(f"real LaDe Jilin data not found at {LADE_JILIN} (set DOORSTEP_SHARED_DATA)")
    return LADE_JILIN


@pytest.fixture(scope="session")
def changshu_path() -> Path:
    if not CHANGSHU.exists():
        pytest.skip(f"real Changshu orders not found at {CHANGSHU} (set DOORSTEP_SHARED_DATA)")
    return CHANGSHU


@pytest.fixture()
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DOORSTEP_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return uri
