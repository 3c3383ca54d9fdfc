"""Evaluate an ETA bundle and every baseline on the same rows, per mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from doorstep.eta_bundle import EtaBundle, EtaPrediction
from features.eta_features import MODES, Mode
from features.eta_queries import QueryBatch
from training.baselines import Baselines
from training.metrics import by_horizon, eta_metrics, stability


@dataclass(frozen=True)
class ModeEvaluation:
    """One mode's results: the model, the baselines, error by horizon, window stability."""

    n_rows: int
    model: dict[str, float | None]
    baselines: dict[str, dict[str, float | None]]
    by_horizon: dict[str, dict[str, Any]]
    by_actual_horizon: dict[str, dict[str, Any]]
    stability_min: float
    prediction: EtaPrediction = field(repr=False)

    @property
    def best_baseline(self) -> tuple[str, float]:
        name = min(self.baselines, key=lambda k: float(self.baselines[k]["mae_min"] or np.inf))
        return name, float(self.baselines[name]["mae_min"] or np.nan)

    def ratio_to(self, baseline: str) -> float:
        return float(self.model["mae_min"] or np.nan) / float(
            self.baselines[baseline]["mae_min"] or np.nan
        )

    def summary(self) -> dict[str, Any]:
        """JSON-able: the contract's ``{"n_rows", "model", "baselines"}`` plus diagnostics."""
        best, _ = self.best_baseline
        return {
            "n_rows": self.n_rows,
            "model": self.model,
            "baselines": self.baselines,
            "by_horizon": self.by_horizon,
            "by_actual_horizon": self.by_actual_horizon,
            "stability_min": self.stability_min,
            "best_baseline": best,
            "mae_ratio_to_best_baseline": self.ratio_to(best),
        }


def evaluate_mode(
    bundle: EtaBundle, baselines: Baselines, batch: QueryBatch, mode: Mode
) -> ModeEvaluation:
    y = batch.t_label_min
    pred = bundle.predict(batch, mode)
    base = {k: eta_metrics(y, v) for k, v in baselines.predict(batch, mode).items()}
    return ModeEvaluation(
        n_rows=batch.n_targets,
        model=eta_metrics(y, pred),
        baselines=base,
        by_horizon=by_horizon(y, pred, on="predicted"),
        by_actual_horizon=by_horizon(y, pred, on="actual"),
        stability_min=stability(
            batch.q_route, batch.t_query, batch.t_stop_id, batch.q_time, pred.p50
        ),
        prediction=pred,
    )


def evaluate(
    bundle: EtaBundle, baselines: Baselines, batch: QueryBatch
) -> dict[str, ModeEvaluation]:
    """Both modes (those the bundle has) on the same rows."""
    return {m: evaluate_mode(bundle, baselines, batch, m) for m in MODES if m in bundle.modes}
