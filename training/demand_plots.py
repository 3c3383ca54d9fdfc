"""Backtest plots of a demand model, logged beside it (practice 9).

``forecast_bands``: actuals against the P10-P90 band and P50 for the busiest zones, the
picture a planner checks first. ``error_by_horizon``: the model's MAE per horizon beside the
best baseline's, per protocol. ``calibration``: the share of actuals below each quantile and
the P10-P90 coverage per horizon bucket against nominal. Figures use
``matplotlib.figure.Figure`` (no pyplot state), as ``training/plots.py`` explains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure

from doorstep.demand_bundle import QUANTILES, DemandPrediction, horizon_bucket

FloatArray = npt.NDArray[np.float64]
BUSIEST = 4


@dataclass(frozen=True)
class ScoredSeries:
    """One protocol's scored rows: zone names, target period starts, horizons, actuals and the
    model's prediction."""

    zone: npt.NDArray[Any]
    ts: pd.DatetimeIndex
    horizon: npt.NDArray[np.int64]
    y: FloatArray
    pred: DemandPrediction


def busiest_zones(series: ScoredSeries, k: int = BUSIEST) -> list[str]:
    volume = pd.Series(series.y).groupby(pd.Series(series.zone)).sum()
    return [str(z) for z in volume.sort_values(ascending=False).index[:k]]


def forecast_bands(series: Mapping[str, ScoredSeries], k: int = BUSIEST) -> Figure:
    """A row per segment (``h.day_ahead``...), a column per busiest zone."""
    fig = Figure(figsize=(4.2 * k, 3.0 * max(len(series), 1)))
    axes = fig.subplots(max(len(series), 1), k, squeeze=False)
    for row, (name, sr) in enumerate(series.items()):
        for col, zone in enumerate(busiest_zones(sr, k)):
            ax = axes[row, col]
            m = sr.zone == zone
            order = np.argsort(sr.ts[m].to_numpy())
            t = sr.ts[m].to_numpy()[order]
            ax.fill_between(
                t, sr.pred.p10[m][order], sr.pred.p90[m][order], alpha=0.3, label="P10-P90"
            )
            ax.plot(t, sr.pred.p50[m][order], color="tab:blue", linewidth=1.0, label="P50")
            ax.plot(t, sr.y[m][order], color="black", linewidth=0.8, marker=".", label="actual")
            ax.set_title(f"{name}: zone {zone}", fontsize="small")
            ax.tick_params(axis="x", labelrotation=45, labelsize="x-small")
            if col == 0:
                ax.legend(fontsize="x-small")
    fig.subplots_adjust(left=0.05, right=0.99, hspace=0.6, wspace=0.25)
    return fig


def error_by_horizon(protocols: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Model MAE per horizon (``by_horizon`` of the scores), the best baseline's overall MAE
    as a reference line, a panel per segment."""
    fig = Figure(figsize=(4.5 * max(len(protocols), 1), 3.4))
    axes = fig.subplots(1, max(len(protocols), 1), squeeze=False)[0]
    for ax, (name, p) in zip(axes, protocols.items(), strict=False):
        hs = sorted(p["by_horizon"], key=int)
        ax.plot([int(h) for h in hs], [p["by_horizon"][h]["mae"] for h in hs], marker="o")
        best, m = min(p["baselines"].items(), key=lambda kv: kv[1]["mae"])
        ax.axhline(m["mae"], color="red", linewidth=1.0, label=f"{best} (all horizons)")
        ax.set_title(f"{name}: MAE by horizon", fontsize="small")
        ax.set_xlabel("periods ahead")
        ax.legend(fontsize="x-small")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, wspace=0.3)
    return fig


def quantile_shares(y: FloatArray, pred: DemandPrediction) -> dict[str, float]:
    """Share of actuals at or below P10/P50/P90 and inside P10-P90."""
    return {
        "p10": float(np.mean(y <= pred.p10)),
        "p50": float(np.mean(y <= pred.p50)),
        "p90": float(np.mean(y <= pred.p90)),
        "p10_p90": float(np.mean((pred.p10 <= y) & (y <= pred.p90))),
    }


def coverage_by_bucket(sr: ScoredSeries, freq: str) -> dict[str, dict[str, float]]:
    out = {"all": quantile_shares(sr.y, sr.pred)}
    bucket = horizon_bucket(sr.horizon, freq)
    for b in np.unique(bucket):
        m = bucket == b
        sub = DemandPrediction(sr.pred.p10[m], sr.pred.p50[m], sr.pred.p90[m], sr.pred.mean[m])
        out[f"bucket{int(b)}"] = quantile_shares(sr.y[m], sub)
    return out


def calibration(series: Mapping[str, ScoredSeries], nominal: float) -> Figure:
    """Top: share below each quantile vs nominal; bottom: P10-P90 coverage per horizon
    bucket. Counts are discrete: a zone whose P10 is 0 covers every zero, so sparse hourly
    series over-cover however the window is calibrated."""
    fig = Figure(figsize=(4.5 * max(len(series), 1), 6.5))
    axes = fig.subplots(2, max(len(series), 1), squeeze=False)
    for col, (name, sr) in enumerate(series.items()):
        table = coverage_by_bucket(sr, name.split(".")[0])
        top, bottom = axes[0, col], axes[1, col]
        top.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        for label, cov in table.items():
            style = {"linewidth": 2.5, "color": "black"} if label == "all" else {"alpha": 0.7}
            top.plot(
                QUANTILES, [cov["p10"], cov["p50"], cov["p90"]], marker="o", label=label, **style
            )
        top.set_title(f"{name}: share below quantile", fontsize="small")
        top.legend(fontsize="x-small")
        labels = list(table)
        bottom.bar(labels, [table[k]["p10_p90"] for k in labels], color="tab:blue")
        bottom.axhline(nominal, color="red", linewidth=1.0)
        bottom.set_ylim(0.0, 1.0)
        bottom.set_title(f"{name}: P10-P90 coverage (red: nominal)", fontsize="small")
    fig.subplots_adjust(left=0.07, right=0.98, hspace=0.35, wspace=0.3)
    return fig
