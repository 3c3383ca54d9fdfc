"""The demand bundle as an MLflow pyfunc model, and ``load_demand_bundle`` for serving.

A pyfunc call sends the volume history (one row per zone and period: ``zone_id, ts, volume``,
``ts`` the period start in local wall time as ISO text) and says what to forecast in the call's
params: ``freq`` (``h`` or ``d``; default: the bundle's hourly model if it has one), ``origin``
(default: the period after the history's last one), ``horizon_periods`` (0: the rest of the
origin's day) and ``level`` (``zone`` rows or the bottom-up ``total``). Every path reaches
``DemandBundle.forecast``: one prediction rule.

``load_demand_bundle`` is serving's fast path: it fetches the pickled bundle of a logged model
and skips the pyfunc wrapper. It lives outside ``training/`` because the service must never
import training code. Unpickling runs code: load only models from a registry you trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

from doorstep.bundle_io import load_logged, read_checked
from doorstep.demand_bundle import HORIZON, MEAN, P10, P50, P90, DemandBundle, check_feature_set
from features import schema as s
from features.demand_features import period

BUNDLE_ARTIFACT = "demand_bundle"  # key in ``artifacts=``; the file keeps the name BUNDLE_FILE
BUNDLE_FILE = "demand_bundle.pkl"
# --- call params -----------------------------------------------------------------------------
FREQ, ORIGIN, HORIZON_PERIODS, LEVEL = "freq", "origin", "horizon_periods", "level"
LEVELS: tuple[str, ...] = ("zone", "total")
ZONE_OUTPUT: tuple[str, ...] = (s.ZONE_ID, s.TS, HORIZON, P10, P50, P90, MEAN)
TOTAL_OUTPUT: tuple[str, ...] = (s.TS, P10, P50, P90, MEAN)


def covariates_of(bundle: DemandBundle) -> tuple[str, ...]:
    """Known-in-advance covariate columns any of the bundle's models reads."""
    out: list[str] = []
    for m in bundle.models.values():
        out += [c for c in m.featurizer.spec_.covariates if c not in out]
    return tuple(out)


def signature(bundle: DemandBundle) -> ModelSignature:
    """History rows in, zone forecast rows out; what to forecast goes in the params. ``ts`` is
    text so a JSON request and a DataFrame reach the model the same way."""
    inputs: list[ColSpec | TensorSpec] = [
        ColSpec(DataType.string, s.ZONE_ID),
        ColSpec(DataType.string, s.TS),
        ColSpec(DataType.double, s.VOLUME, required=False),
        *(ColSpec(DataType.double, c, required=False) for c in covariates_of(bundle)),
    ]
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec(DataType.string, s.ZONE_ID),
        ColSpec(DataType.string, s.TS),
        ColSpec(DataType.long, HORIZON),
        *(ColSpec(DataType.double, c) for c in (P10, P50, P90, MEAN)),
    ]
    params = ParamSchema(
        [
            ParamSpec(FREQ, DataType.string, ""),
            ParamSpec(ORIGIN, DataType.string, ""),
            ParamSpec(HORIZON_PERIODS, DataType.long, 0),
            ParamSpec(LEVEL, DataType.string, "zone"),
        ]
    )
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs), params=params)


def default_freq(bundle: DemandBundle) -> str:
    return "h" if "h" in bundle.models else next(iter(bundle.models))


def predict_history(
    bundle: DemandBundle,
    history: pd.DataFrame,
    *,
    freq: str = "",
    origin: str = "",
    horizon_periods: int = 0,
    level: str = "zone",
) -> pd.DataFrame:
    """Forecast from a history table (see the module docstring for the arguments); ``ts`` of
    the result is ISO text, as it came in."""
    missing = [c for c in (s.ZONE_ID, s.TS, s.VOLUME) if c not in history.columns]
    if missing:
        raise ValueError(f"history: missing column(s) {missing}")
    if level not in LEVELS:
        raise ValueError(f"{LEVEL}: must be one of {list(LEVELS)}, got {level!r}")
    if horizon_periods < 0:
        raise ValueError(
            f"{HORIZON_PERIODS}: must be >= 0 (0: rest of the day), got {horizon_periods}"
        )
    freq = freq or default_freq(bundle)
    bundle.model(freq)  # names the frequencies the bundle has if ``freq`` is not one of them
    frame = history.copy()
    ts = pd.to_datetime(frame[s.TS], errors="coerce", format="ISO8601")
    if ts.isna().any():
        raise ValueError(f"{s.TS}: {int(ts.isna().sum())} value(s) not ISO-8601 timestamps")
    frame[s.TS] = ts.dt.tz_localize(None) if ts.dt.tz is not None else ts
    frame[s.VOLUME] = pd.to_numeric(frame[s.VOLUME], errors="coerce")
    if frame[s.VOLUME].notna().sum() == 0:
        raise ValueError(f"{s.VOLUME}: the history has no volume")
    start = (
        pd.Timestamp(origin)
        if origin
        else frame.loc[frame[s.VOLUME].notna(), s.TS].max() + period(freq)
    )
    fc = bundle.forecast(frame, start, horizon_periods or None, freq)
    out = bundle.total(fc, freq) if level == "total" else fc
    out = out.assign(**{s.TS: out[s.TS].dt.strftime("%Y-%m-%dT%H:%M:%S")})
    return out[list(TOTAL_OUTPUT if level == "total" else ZONE_OUTPUT)]


class DemandPyfunc(PythonModel):  # type: ignore[misc]
    """The pyfunc face of a ``DemandBundle``; logged empty, the bundle comes as an artifact so
    ``load_demand_bundle`` can fetch it without this wrapper."""

    def __init__(self, bundle: DemandBundle | None = None) -> None:
        self.bundle = bundle

    def load_context(self, context: Any) -> None:
        self.bundle = read_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self.bundle is None:
            raise RuntimeError("DemandPyfunc has no bundle: load it with mlflow.pyfunc.load_model")
        p = params or {}
        return predict_history(
            self.bundle,
            model_input,
            freq=str(p.get(FREQ) or ""),
            origin=str(p.get(ORIGIN) or ""),
            horizon_periods=int(p.get(HORIZON_PERIODS) or 0),
            level=str(p.get(LEVEL) or "zone"),
        )


def read_bundle(path: Path) -> DemandBundle:
    """Unpickle and refuse a bundle whose feature set this code does not compute."""
    return read_checked(path, DemandBundle, check_feature_set)


def load_demand_bundle(model_uri: str) -> DemandBundle:
    """The bundle of a logged demand model, its feature set checked (serving's fast path)."""
    return load_logged(model_uri, BUNDLE_ARTIFACT, read_bundle, "a demand model")
