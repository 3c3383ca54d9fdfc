"""Data for the planner's page (``serving/ui.py``): the deliveries table, zones' depots, and
the hold-out metrics arranged as model-against-baselines tables.

The deliveries table is optional for the service (the page lists routes from it and maps zones
to depots); like the demand store it is read once and re-read when its file changes.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from features import schema as s
from features.ingest import read_deliveries
from features.zones import h3_cells

ROLES = ("model", "baseline", "total")
# the columns a planner reads first; other metrics follow in name order
PREFERRED = ("mae_min", "mae", "wape", "mase", "rmse_min", "rmse", "acc10", "acc20", "mape")
HIGHER_IS_BETTER = ("acc10", "acc20")
HIDDEN_PREFIXES = ("n_", "share_below")  # counts and calibration detail stay in MLflow


class DeliveriesUnavailable(RuntimeError):
    """No readable deliveries table (the page says so and still answers pasted routes)."""


@dataclass(frozen=True)
class DeliveriesSnapshot:
    frame: pd.DataFrame  # contract columns (optional ones filled) + ROUTE_DATE
    zone_depot: dict[str, str]  # each zone's most common depot
    dates: list[dt.date]  # route dates, newest first
    stamp: tuple[float, int]


def zone_depots(frame: pd.DataFrame) -> dict[str, str]:
    """Each zone's most common depot (ties: the smallest depot id), from stops with both."""
    known = frame.dropna(subset=[s.ZONE_ID, s.DEPOT_ID])
    if known.empty:
        return {}
    counts = known.groupby([s.ZONE_ID, s.DEPOT_ID]).size().rename("n").reset_index()
    counts = counts.sort_values(["n", s.DEPOT_ID], ascending=[False, True], kind="stable")
    first = counts.drop_duplicates(s.ZONE_ID)
    return {str(z): str(d) for z, d in zip(first[s.ZONE_ID], first[s.DEPOT_ID], strict=True)}


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill what the page needs from a table that leaves optional columns out: zones from the
    coordinates, the plan's order from the actual one, the depot at the first stop."""
    out = frame.copy()
    for name in s.DELIVERY_COLUMNS:
        if name not in out.columns:
            out[name] = pd.NA
    missing_zone = out[s.ZONE_ID].isna()
    if missing_zone.any():
        cells = h3_cells(out.loc[missing_zone, s.LAT], out.loc[missing_zone, s.LNG])
        out[s.ZONE_ID] = out[s.ZONE_ID].astype("string")
        out.loc[missing_zone, s.ZONE_ID] = cells
    by_arrival = out.groupby(s.ROUTE_ID)[s.ARRIVAL_TIME].rank(method="first") - 1
    out[s.PLANNED_SEQ] = out[s.PLANNED_SEQ].astype("Float64").fillna(by_arrival).astype("int64")
    out = out.sort_values([s.ROUTE_ID, s.PLANNED_SEQ], kind="stable")
    for depot, stop in ((s.DEPOT_LAT, s.LAT), (s.DEPOT_LNG, s.LNG)):
        first = out.groupby(s.ROUTE_ID)[stop].transform("first")
        out[depot] = out[depot].astype("Float64").fillna(first).astype("float64")
    out[s.VEHICLE_TYPE] = out[s.VEHICLE_TYPE].astype("string").fillna(s.VehicleType.UNKNOWN.value)
    out[s.PACKAGES] = out[s.PACKAGES].astype("Int64").fillna(1)
    out[s.ROUTE_DATE] = out[s.DISPATCH_TIME].dt.date
    return out.reset_index(drop=True)


class DeliveriesTable:
    """The deliveries table, cached until its file changes (mtime or size)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._snapshot: DeliveriesSnapshot | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> DeliveriesSnapshot:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise DeliveriesUnavailable(
                f"No deliveries table at {self.path} ({exc.strerror}): set DOORSTEP_DELIVERIES "
                "to list routes; pasted requests still work"
            ) from exc
        stamp = (st.st_mtime, st.st_size)
        with self._lock:
            if self._snapshot is None or self._snapshot.stamp != stamp:
                try:
                    frame = prepare(read_deliveries(self.path))
                except (ValueError, OSError) as exc:
                    raise DeliveriesUnavailable(f"deliveries table {self.path}: {exc}") from exc
                dates = sorted(set(frame[s.ROUTE_DATE].dropna()), reverse=True)
                self._snapshot = DeliveriesSnapshot(frame, zone_depots(frame), dates, stamp)
            return self._snapshot


def _split(key: str) -> tuple[str, str, str] | None:
    """``ordered.baseline.rank_median.mae_min`` -> (segment, row, metric); None otherwise."""
    parts = key.split(".")
    at = next((i for i, p in enumerate(parts) if p in ROLES), None)
    if at is None or at == 0 or at == len(parts) - 1:
        return None
    segment, role = ".".join(parts[:at]), parts[at]
    if role == "baseline":
        if at + 2 >= len(parts):
            return None
        return segment, parts[at + 1], ".".join(parts[at + 2 :])
    return segment, role, ".".join(parts[at + 1 :])


def _column_order(metric: str) -> tuple[int, str]:
    return (PREFERRED.index(metric) if metric in PREFERRED else len(PREFERRED), metric)


def metric_tables(metrics: dict[str, float]) -> dict[str, Any]:
    """Hold-out metrics as one table per segment: rows model, total, then the baselines;
    ``best`` names the best baseline per comparable column (lower error, higher accuracy)."""
    cells: dict[str, dict[str, dict[str, float]]] = {}
    other: dict[str, float] = {}
    for key, value in metrics.items():
        split = _split(key)
        if split is None:
            other[key] = value
            continue
        segment, row, metric = split
        if metric.startswith(HIDDEN_PREFIXES):
            continue
        cells.setdefault(segment, {}).setdefault(row, {})[metric] = value
    tables = []
    for segment, rows in sorted(cells.items()):
        columns = sorted({m for r in rows.values() for m in r}, key=_column_order)
        names = [r for r in ("model", "total") if r in rows]
        baselines = sorted(r for r in rows if r not in ROLES)
        best: dict[str, str] = {}
        for m in columns:
            scored = [(rows[b][m], b) for b in baselines if m in rows[b]]
            if scored:
                pick = max(scored) if m in HIGHER_IS_BETTER else min(scored)
                best[m] = pick[1]
        tables.append(
            {
                "segment": segment,
                "columns": columns,
                "rows": [
                    {"name": r, "baseline": r in baselines, "values": rows[r]}
                    for r in names + baselines
                ],
                "best": best,
            }
        )
    return {"tables": tables, "other": other}


@lru_cache(maxsize=16)
def run_started(run_id: str) -> str | None:
    """When the model's training run started (ISO, UTC), from the registry; None if unknown."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        start = MlflowClient().get_run(run_id).info.start_time
    except (MlflowException, OSError):
        return None
    return None if start is None else dt.datetime.fromtimestamp(start / 1000, dt.UTC).isoformat()
