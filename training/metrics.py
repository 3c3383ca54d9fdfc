"""ETA metrics pooled over (query, target) rows, overall and by horizon bucket."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from doorstep.eta_bundle import EtaPrediction, horizon_bucket, horizon_label

FloatArray = npt.NDArray[np.float64]


def point_metrics(y: FloatArray, pred: FloatArray) -> dict[str, float]:
    err = np.asarray(pred, dtype=float) - np.asarray(y, dtype=float)
    return {
        "mae_min": float(np.mean(np.abs(err))),
        "rmse_min": float(np.sqrt(np.mean(err**2))),
        "acc10": float(np.mean(np.abs(err) <= 10)),
        "acc20": float(np.mean(np.abs(err) <= 20)),
    }


def eta_metrics(y: FloatArray, pred: EtaPrediction | FloatArray) -> dict[str, float | None]:
    """The contract's metric set; a point baseline gets null interval metrics."""
    if isinstance(pred, EtaPrediction):
        out: dict[str, float | None] = dict(point_metrics(y, pred.p50))
        out["coverage_p10_p90"] = float(np.mean((pred.p10 <= y) & (y <= pred.p90)))
        out["width_min"] = float(np.mean(pred.p90 - pred.p10))
        return out
    out = dict(point_metrics(y, pred))
    out["coverage_p10_p90"] = None
    out["width_min"] = None
    return out


def by_horizon(
    y: FloatArray, pred: EtaPrediction, *, on: str = "predicted"
) -> dict[str, dict[str, Any]]:
    """Metrics per horizon bucket, bucketed by the predicted P50 (what serving knows) or actual."""
    bucket = horizon_bucket(pred.p50 if on == "predicted" else y)
    out: dict[str, dict[str, Any]] = {}
    for b in np.unique(bucket):
        m = bucket == b
        sub = EtaPrediction(pred.p10[m], pred.p50[m], pred.p90[m])
        out[horizon_label(int(b))] = {"n_rows": int(m.sum()), **eta_metrics(y[m], sub)}
    return out


def stability(
    query_route: npt.NDArray[np.object_],
    t_query: npt.NDArray[np.int64],
    stop_ids: npt.NDArray[np.object_],
    q_time: FloatArray,
    p50: FloatArray,
) -> float:
    """Median absolute change (minutes) of a stop's predicted arrival clock between consecutive
    queries of its route: how much a customer's window jumps as the courier progresses."""
    arrival = q_time[t_query] / 60.0 + p50
    frame = pd.DataFrame(
        {"route": query_route[t_query], "stop": stop_ids, "t": q_time[t_query], "eta": arrival}
    )
    frame = frame.sort_values(["route", "stop", "t"], kind="stable")
    same = (frame["route"].to_numpy() == np.roll(frame["route"].to_numpy(), 1)) & (
        frame["stop"].to_numpy() == np.roll(frame["stop"].to_numpy(), 1)
    )
    same[0] = False
    change = np.abs(np.diff(frame["eta"].to_numpy(), prepend=np.nan))[same]
    return float(np.median(change)) if len(change) else float("nan")
