"""Diagnostic plots of an ETA model, logged beside it so a reviewer sees more than averages.

Figures are built with ``matplotlib.figure.Figure`` (never pyplot): they render with the Agg
canvas, need no display, touch no global backend state and are freed when dropped. One
figure per diagnostic with a column per mode keeps modes side by side and rendering cheap
(text layout dominates: a figure costs ~0.5 s on a small machine).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from doorstep.eta_bundle import QUANTILES, EtaBundle, EtaPrediction, horizon_bucket, horizon_label

FloatArray = npt.NDArray[np.float64]
Outcomes = Mapping[str, tuple[FloatArray, EtaPrediction]]  # mode -> (actual, prediction)
TOP_FEATURES = 15


def quantile_coverage(y: FloatArray, pred: EtaPrediction) -> dict[str, float]:
    """Share of actuals at or below each quantile (nominal 0.1/0.5/0.9) and inside P10-P90."""
    y = np.asarray(y, dtype=float)
    return {
        "p10": float(np.mean(y <= pred.p10)),
        "p50": float(np.mean(y <= pred.p50)),
        "p90": float(np.mean(y <= pred.p90)),
        "p10_p90": float(np.mean((pred.p10 <= y) & (y <= pred.p90))),
    }


def coverage_by_bucket(y: FloatArray, pred: EtaPrediction) -> dict[str, dict[str, float]]:
    """``quantile_coverage`` overall and per horizon bucket of the predicted P50."""
    out = {"all": quantile_coverage(y, pred)}
    bucket = horizon_bucket(pred.p50)
    for b in np.unique(bucket):
        m = bucket == b
        sub = EtaPrediction(pred.p10[m], pred.p50[m], pred.p90[m])
        out[horizon_label(int(b))] = quantile_coverage(y[m], sub)
    return out


def _columns(n: int, rows: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * max(n, 1), height * rows))
    axes = fig.subplots(rows, max(n, 1), squeeze=False)
    return fig, axes


def residuals_by_horizon(outcomes: Outcomes) -> Figure:
    """P50 - actual (minutes) per horizon bucket of the predicted P50, a panel per mode:
    a bias that grows with the horizon shows up here long before it moves the MAE."""
    fig, axes = _columns(len(outcomes), 1, 5.0, 4.0)
    for ax, (mode, (y, pred)) in zip(axes[0], outcomes.items(), strict=False):
        bucket = horizon_bucket(pred.p50)
        present = [int(b) for b in np.unique(bucket)]
        ax.boxplot([pred.p50[bucket == b] - y[bucket == b] for b in present], showfliers=False)
        ax.set_xticks(range(1, len(present) + 1), [horizon_label(b) for b in present])
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"{mode}: P50 - actual (min)")
        ax.set_xlabel("predicted P50 horizon (min)")
    fig.subplots_adjust(left=0.08, right=0.98, wspace=0.25)
    return fig


def calibration_curve(outcomes: Outcomes, nominal_coverage: float) -> Figure:
    """Top: share of actuals below P10/P50/P90 against the nominal level, overall (black) and
    per horizon bucket. Bottom: P10-P90 coverage per bucket against the nominal coverage."""
    fig, axes = _columns(len(outcomes), 2, 5.0, 3.6)
    for col, (mode, (y, pred)) in enumerate(outcomes.items()):
        table = coverage_by_bucket(y, pred)
        top, bottom = axes[0, col], axes[1, col]
        top.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle="--")
        for label, cov in table.items():
            style = {"linewidth": 2.5, "color": "black"} if label == "all" else {"alpha": 0.7}
            top.plot(
                QUANTILES, [cov["p10"], cov["p50"], cov["p90"]], marker="o", label=label, **style
            )
        top.set_title(f"{mode}: share below quantile vs nominal")
        top.legend(fontsize="small")
        labels = list(table)
        bottom.bar(labels, [table[k]["p10_p90"] for k in labels], color="tab:blue")
        bottom.axhline(nominal_coverage, color="red", linewidth=1.0)
        bottom.set_ylim(0.0, 1.0)
        bottom.set_title(f"{mode}: P10-P90 coverage (red: nominal)")
    fig.subplots_adjust(left=0.08, right=0.98, hspace=0.35, wspace=0.25)
    return fig


def feature_importance(bundle: EtaBundle, top: int = TOP_FEATURES) -> Figure:
    """Total gain of each mode's P50 booster features: the first place to look when a model
    leans on a feature that serving fills differently."""
    fig, axes = _columns(len(bundle.modes), 1, 5.5, 0.28 * top + 1.2)
    for ax, (mode, model) in zip(axes[0], bundle.modes.items(), strict=False):
        booster = model.boosters[0.5]
        gain = booster.feature_importance(importance_type="gain")
        names = np.asarray(booster.feature_name())
        order = np.argsort(gain)[::-1][:top][::-1]
        ax.barh(names[order], gain[order], color="tab:green")
        ax.set_title(f"{mode}: P50 booster gain")
    fig.subplots_adjust(left=0.17, right=0.98, wspace=0.6)
    return fig
