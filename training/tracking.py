"""Log a trained ETA model to MLflow with everything a reviewer needs to trust or reject it.

One call records the run (flattened config, best iterations, the model's metrics beside every
baseline's on the same rows, by-horizon metrics, stability, diagnostic plots, the evaluation
summary as JSON) and the model itself: a pyfunc with its signature, an input example, pinned
requirements and the feature-set / data-window tags, registered under ``doorstep-eta``.
Promotion is a separate, explicit step (``training/registry.py``).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import numpy.typing as npt
import pandas as pd
from mlflow import MlflowClient

from doorstep.bundle_io import write_bundle
from doorstep.config import to_dict, use_experiment
from doorstep.eta_pyfunc import (
    BUNDLE_ARTIFACT,
    BUNDLE_FILE,
    EtaPyfunc,
    predict_frame,
    routes_to_frame,
    signature,
)
from features.eta_request import RouteQuery
from training import plots
from training.eta import EtaConfig, EtaTrainResult
from training.evaluate import ModeEvaluation

EXPERIMENT = "doorstep-eta"
REGISTERED_NAME = "doorstep-eta"
MODEL_NAME = "model"  # the logged model's name inside the run
PINNED_PACKAGES: tuple[str, ...] = ("lightgbm", "pandas", "numpy", "scikit-learn", "h3", "mlflow")
# tags every ETA run and model version carries (practice 9)
TAG_FEATURE_SET = "feature_set"
TAG_TRAINING_WINDOW = "training_window"
TAG_TEST_FROM = "test_from"
TAG_DATA_SOURCE = "data_source"
TAG_MODEL_KIND = "model_kind"
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class LoggedModel:
    """Where a logged model is; ``model_version`` is None when it was not registered.

    Not to be confused with ``mlflow.entities.LoggedModel`` (MLflow's own record)."""

    run_id: str
    model_uri: str
    model_version: str | None


def pinned_requirements(packages: Sequence[str] = PINNED_PACKAGES) -> list[str]:
    """``name==version`` of what is installed now: the model must load where it was tested."""
    return [f"{p}=={importlib.metadata.version(p)}" for p in packages]


def _date(day: int) -> str:
    return (_EPOCH + dt.timedelta(days=int(day))).isoformat()


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings as dotted MLflow parameter names; sequences joined by commas."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list | tuple):
        out[prefix] = ",".join(str(v) for v in value)
    else:
        out[prefix] = value
    return out


def _key(*parts: str) -> str:
    """An MLflow-safe metric name (``>=120`` becomes ``120-inf``)."""
    text = ".".join(re.sub(r"^>=(.*)$", r"\1-inf", p) for p in parts)
    return re.sub(r"[^\w.\- /:]", "_", text)


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def run_params(result: EtaTrainResult, config: EtaConfig) -> dict[str, Any]:
    params = flatten("", to_dict(config), {})
    params.update({f"best_iteration.{m}": n for m, n in result.best_iterations.items()})
    params.update({f"rows.{k}": n for k, n in result.n_train_rows.items()})
    for mode, offsets in result.calibration.items():
        params[f"conformal.{mode}"] = ",".join(f"{o:.3f}" for o in offsets)
    params["split.valid_from"] = _date(result.split.valid_from)
    params["split.calibration_from"] = _date(result.split.fit_end)
    params["split.test_from"] = _date(result.split.test_from)
    return params


def run_metrics(
    evaluation: Mapping[str, ModeEvaluation], coverage: Mapping[str, dict[str, float]]
) -> dict[str, float]:
    """``{mode}.model.*``, ``{mode}.baseline.{name}.*``, ``{mode}.by_horizon.{bucket}.*``.

    ``coverage`` adds ``{mode}.model.share_below_p10`` (/p50/p90): each quantile's own
    calibration, which the P10-P90 coverage alone can hide (both tails off, in opposite ways).
    """
    out: dict[str, float] = {}
    for mode, ev in evaluation.items():
        for k, v in _finite(ev.model).items():
            out[_key(mode, "model", k)] = v
        for q in ("p10", "p50", "p90"):
            out[_key(mode, "model", f"share_below_{q}")] = coverage[mode][q]
        out[_key(mode, "model", "stability_min")] = ev.stability_min
        out[_key(mode, "model", "n_rows")] = float(ev.n_rows)
        best, _ = ev.best_baseline
        out[_key(mode, "model", "mae_ratio_to_best_baseline")] = ev.ratio_to(best)
        for name, metrics in ev.baselines.items():
            for k, v in _finite(metrics).items():
                out[_key(mode, "baseline", name, k)] = v
        tables = {"by_horizon": ev.by_horizon, "by_actual_horizon": ev.by_actual_horizon}
        for table, rows in tables.items():
            for bucket, metrics in rows.items():
                for k, v in _finite(metrics).items():
                    out[_key(mode, table, bucket, k)] = v
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _jsonable(value: Any) -> Any:
    """Plain JSON: NaN and infinities become null (``json`` would write invalid ``NaN``)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _example_frame(routes: Sequence[RouteQuery], modes: Sequence[str]) -> pd.DataFrame:
    """The example routes once per mode the model serves, so the example exercises both."""
    if not routes:
        raise ValueError("example_routes: need at least one route for the input example")
    frames = [
        routes_to_frame(routes, mode, [f"{mode}-{i}" for i in range(len(routes))]) for mode in modes
    ]
    return pd.concat(frames, ignore_index=True)


def _log_plots(
    result: EtaTrainResult,
    evaluation: Mapping[str, ModeEvaluation],
    y_test: npt.NDArray[np.float64],
    nominal: float,
) -> None:
    outcomes = {mode: (y_test, ev.prediction) for mode, ev in evaluation.items()}
    mlflow.log_figure(plots.residuals_by_horizon(outcomes), "plots/residuals_by_horizon.png")
    mlflow.log_figure(plots.calibration_curve(outcomes, nominal), "plots/calibration.png")
    mlflow.log_figure(plots.feature_importance(result.bundle), "plots/feature_importance.png")


def log_eta_model(
    result: EtaTrainResult,
    evaluation: dict[str, ModeEvaluation],
    *,
    config: EtaConfig,
    data_info: dict[str, str],
    example_routes: Sequence[RouteQuery],
    y_test: npt.NDArray[np.float64],
    registered_name: str | None = REGISTERED_NAME,
    experiment: str = EXPERIMENT,
) -> LoggedModel:
    """Log run and model into the active run, or a new run of ``experiment``.

    ``y_test`` are the hold-out labels ``evaluation`` was computed on (its predictions' rows),
    needed for the residual and calibration plots. ``data_info`` must name ``data_source``;
    all its entries become run tags. ``registered_name=None`` logs without registering.
    """
    if TAG_DATA_SOURCE not in data_info:
        raise ValueError(
            f"data_info: needs {TAG_DATA_SOURCE!r} (where the training data came from)"
        )
    y_test = np.asarray(y_test, dtype=np.float64)
    for mode, ev in evaluation.items():
        if len(ev.prediction.p50) != len(y_test):
            raise ValueError(
                f"y_test: {len(y_test)} labels, but the {mode} evaluation has "
                f"{len(ev.prediction.p50)} rows"
            )
    if mlflow.active_run() is not None:
        return _log(result, evaluation, config, data_info, example_routes, y_test, registered_name)
    use_experiment(experiment)
    with mlflow.start_run(run_name=f"eta-{_date(result.split.test_from)}"):
        return _log(result, evaluation, config, data_info, example_routes, y_test, registered_name)


def _log(
    result: EtaTrainResult,
    evaluation: dict[str, ModeEvaluation],
    config: EtaConfig,
    data_info: dict[str, str],
    example_routes: Sequence[RouteQuery],
    y_test: npt.NDArray[np.float64],
    registered_name: str | None,
) -> LoggedModel:
    bundle = result.bundle
    tags = {
        TAG_MODEL_KIND: "eta",
        TAG_FEATURE_SET: bundle.feature_set,
        TAG_TRAINING_WINDOW: "/".join(bundle.training_window),
        TAG_TEST_FROM: _date(result.split.test_from),
        **data_info,
    }
    mlflow.set_tags(tags)
    mlflow.log_params(run_params(result, config))
    coverage = {m: plots.quantile_coverage(y_test, ev.prediction) for m, ev in evaluation.items()}
    mlflow.log_metrics(run_metrics(evaluation, coverage) | {"fit_seconds": result.fit_seconds})
    _log_plots(result, evaluation, y_test, config.coverage)
    summary = {
        "data": data_info,
        "tags": tags,
        "best_iterations": result.best_iterations,
        "n_train_rows": result.n_train_rows,
        "calibration_offsets_min": result.calibration,
        "fit_seconds": result.fit_seconds,
        "modes": {
            m: ev.summary()
            | {"coverage_by_horizon": plots.coverage_by_bucket(y_test, ev.prediction)}
            for m, ev in evaluation.items()
        },
    }
    mlflow.log_dict(_jsonable(summary), "evaluation.json")

    example = _example_frame(example_routes, list(bundle.modes))
    predict_frame(bundle, example)  # fail here, not in MLflow's example validation
    return log_bundle_model(
        bundle,
        python_model=EtaPyfunc(),
        artifact=BUNDLE_ARTIFACT,
        file_name=BUNDLE_FILE,
        signature=signature(),
        input_example=example,
        registered_name=registered_name,
        tags=tags,
    )


def log_bundle_model(
    bundle: object,
    *,
    python_model: Any,
    artifact: str,
    file_name: str,
    signature: Any,
    input_example: Any,
    registered_name: str | None,
    tags: dict[str, str],
) -> LoggedModel:
    """Log a pickled bundle as a pyfunc model in the active run (signature, input example,
    pinned requirements, tags), register it, and tag the registered version too."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_bundle(bundle, Path(tmp) / file_name)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=python_model,
            artifacts={artifact: str(path)},
            signature=signature,
            input_example=input_example,
            pip_requirements=pinned_requirements(),
            registered_model_name=registered_name,
            tags=tags,
        )
    version = None if info.registered_model_version is None else str(info.registered_model_version)
    if registered_name is not None and version is not None:
        client = MlflowClient()
        for k, v in tags.items():
            client.set_model_version_tag(registered_name, version, k, v)
    return LoggedModel(run_id=str(info.run_id), model_uri=info.model_uri, model_version=version)
