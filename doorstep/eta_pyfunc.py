"""The ETA bundle as an MLflow pyfunc model, and the request table it answers.

Anything that speaks MLflow (``mlflow models serve``, batch scoring, a notebook) sends one row
per stop: the query's courier state repeated on each of its stops, stops in planned order.
``frame_to_routes`` turns that table into the same ``RouteQuery`` objects the service builds,
so every path reaches ``EtaBundle.predict`` through ``build_batch``: one prediction rule.

``load_bundle`` is serving's fast path: it fetches the pickled bundle from a logged model and
skips the pyfunc wrapper (and its per-call schema enforcement). It lives outside ``training/``
because the service must never import training code. Unpickling runs code: load only models
from a registry you trust.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema, TensorSpec

from doorstep.bundle_io import load_logged, read_checked
from doorstep.eta_bundle import EtaBundle, EtaPrediction, check_feature_set
from features import schema as s
from features.eta_request import CourierState, RouteQuery, StopInput, ZoneResolver, build_batch

BUNDLE_ARTIFACT = "bundle"  # key in ``artifacts=``; the file keeps the name BUNDLE_FILE
BUNDLE_FILE = "bundle.pkl"

# --- request table (one row per stop) ------------------------------------------------------
QUERY_ID = "query_id"
MODE = "mode"  # "ordered" | "unordered"
TIME = "time"  # ISO-8601 with a UTC offset
COURIER_LAT = "courier_lat"
COURIER_LNG = "courier_lng"
ROUTE_STARTED_AT = "route_started_at"
STOPS_DONE = "stops_done"
KM_DONE = "km_done"
LAST_AOI_ID = "last_aoi_id"
DONE_AOI_IDS = "done_aoi_ids"  # JSON list of the areas of the stops done so far, in order
# --- response table --------------------------------------------------------------------------
ETA_P10 = "eta_p10_min"
ETA_P50 = "eta_p50_min"
ETA_P90 = "eta_p90_min"
OUTPUT_COLUMNS: tuple[str, ...] = (QUERY_ID, s.STOP_ID, ETA_P10, ETA_P50, ETA_P90)

# (name, type, required). Optional numbers are doubles: a column with a missing value arrives
# as float64, which MLflow will not cast to a long.
INPUT_COLUMNS: tuple[tuple[str, DataType, bool], ...] = (
    (QUERY_ID, DataType.string, True),
    (MODE, DataType.string, True),
    (TIME, DataType.string, True),
    (COURIER_LAT, DataType.double, True),
    (COURIER_LNG, DataType.double, True),
    (s.COURIER_ID, DataType.string, False),
    (s.VEHICLE_TYPE, DataType.string, False),
    (ROUTE_STARTED_AT, DataType.string, False),
    (STOPS_DONE, DataType.double, False),
    (KM_DONE, DataType.double, False),
    (LAST_AOI_ID, DataType.string, False),
    (DONE_AOI_IDS, DataType.string, False),
    (s.DEPOT_LAT, DataType.double, False),
    (s.DEPOT_LNG, DataType.double, False),
    (s.ROUTE_ID, DataType.string, False),
    (s.STOP_ID, DataType.string, True),
    (s.LAT, DataType.double, True),
    (s.LNG, DataType.double, True),
    (s.ZONE_ID, DataType.string, False),
    (s.AOI_ID, DataType.string, False),
    (s.STOP_TYPE, DataType.string, False),
    (s.PACKAGES, DataType.double, False),
    (s.READY_TIME, DataType.string, False),
    (s.PLANNED_ARRIVAL, DataType.string, False),
)
REQUIRED_COLUMNS: tuple[str, ...] = tuple(name for name, _, req in INPUT_COLUMNS if req)


def input_schema() -> Schema:
    """The request table's schema, written out because optional columns must say so (an
    inferred schema would make them required, or ``Any`` where an example has only nulls)."""
    specs: list[ColSpec | TensorSpec] = [
        ColSpec(t, name, required=req) for name, t, req in INPUT_COLUMNS
    ]
    return Schema(specs)


def signature() -> ModelSignature:
    specs: list[ColSpec | TensorSpec] = [
        ColSpec(DataType.string, QUERY_ID),
        ColSpec(DataType.string, s.STOP_ID),
        *(ColSpec(DataType.double, c) for c in (ETA_P10, ETA_P50, ETA_P90)),
    ]
    outputs = Schema(specs)
    return ModelSignature(inputs=input_schema(), outputs=outputs)


# --- table <-> routes ----------------------------------------------------------------------


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def routes_to_frame(
    routes: Sequence[RouteQuery], mode: str, query_ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """The request table of ``routes`` (input examples, batch files); inverse of
    ``frame_to_routes``. Query ids default to ``q0, q1, ...``."""
    ids = list(query_ids) if query_ids is not None else [f"q{i}" for i in range(len(routes))]
    if len(ids) != len(routes):
        raise ValueError(f"query_ids: {len(ids)} ids for {len(routes)} routes")
    rows: list[dict[str, Any]] = []
    for qid, route in zip(ids, routes, strict=True):
        st = route.state
        done = None if st.done_aoi_ids is None else json.dumps(list(st.done_aoi_ids))
        query = {
            QUERY_ID: str(qid),
            MODE: mode,
            TIME: _iso(st.time),
            COURIER_LAT: st.lat,
            COURIER_LNG: st.lng,
            s.COURIER_ID: st.courier_id,
            s.VEHICLE_TYPE: st.vehicle_type,
            ROUTE_STARTED_AT: _iso(st.route_started_at),
            STOPS_DONE: st.stops_done,
            KM_DONE: st.km_done,
            LAST_AOI_ID: st.last_aoi_id,
            DONE_AOI_IDS: done,
            s.DEPOT_LAT: st.depot_lat,
            s.DEPOT_LNG: st.depot_lng,
            s.ROUTE_ID: st.route_id,
        }
        for stop in route.stops:
            rows.append(
                query
                | {
                    s.STOP_ID: stop.stop_id,
                    s.LAT: stop.lat,
                    s.LNG: stop.lng,
                    s.ZONE_ID: stop.zone_id,
                    s.AOI_ID: stop.aoi_id,
                    s.STOP_TYPE: stop.stop_type,
                    s.PACKAGES: stop.packages,
                    s.READY_TIME: _iso(stop.ready_time),
                    s.PLANNED_ARRIVAL: _iso(stop.planned_arrival),
                }
            )
    frame = pd.DataFrame(rows, columns=[name for name, _, _ in INPUT_COLUMNS])
    for name, kind, _ in INPUT_COLUMNS:
        frame[name] = frame[name].astype("float64" if kind == DataType.double else object)
    return frame


def _missing(value: Any) -> bool:
    return value is None or bool(pd.api.types.is_scalar(value) and pd.isna(value))


def _text(value: object) -> str | None:
    return None if _missing(value) or str(value) == "" else str(value)


def _number(value: object) -> float | None:
    return None if _missing(value) else float(value)  # type: ignore[arg-type]


def _time(value: object, column: str, query_id: str) -> dt.datetime | None:
    text = _text(value)
    if text is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{column}: query {query_id!r} has {text!r}, not ISO-8601") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{column}: query {query_id!r} has {text!r} without a UTC offset")
    return parsed


def _state(row: Mapping[Any, Any], qid: str) -> CourierState:
    time = _time(row[TIME], TIME, qid)
    if time is None:
        raise ValueError(f"{TIME}: query {qid!r} has no time")
    stops_done = _number(row.get(STOPS_DONE))
    done = _text(row.get(DONE_AOI_IDS))
    return CourierState(
        time=time,
        lat=float(row[COURIER_LAT]),
        lng=float(row[COURIER_LNG]),
        courier_id=_text(row.get(s.COURIER_ID)),
        vehicle_type=_text(row.get(s.VEHICLE_TYPE)),
        route_started_at=_time(row.get(ROUTE_STARTED_AT), ROUTE_STARTED_AT, qid),
        stops_done=None if stops_done is None else int(stops_done),
        km_done=_number(row.get(KM_DONE)),
        last_aoi_id=_text(row.get(LAST_AOI_ID)),
        done_aoi_ids=None if done is None else tuple(str(a) for a in json.loads(done)),
        depot_lat=_number(row.get(s.DEPOT_LAT)),
        depot_lng=_number(row.get(s.DEPOT_LNG)),
        route_id=_text(row.get(s.ROUTE_ID)),
    )


def _stop(row: Mapping[Any, Any], qid: str) -> StopInput:
    packages = _number(row.get(s.PACKAGES))
    return StopInput(
        stop_id=str(row[s.STOP_ID]),
        lat=float(row[s.LAT]),
        lng=float(row[s.LNG]),
        zone_id=_text(row.get(s.ZONE_ID)),
        aoi_id=_text(row.get(s.AOI_ID)),
        stop_type=_text(row.get(s.STOP_TYPE)),
        packages=1 if packages is None else int(packages),
        ready_time=_time(row.get(s.READY_TIME), s.READY_TIME, qid),
        planned_arrival=_time(row.get(s.PLANNED_ARRIVAL), s.PLANNED_ARRIVAL, qid),
    )


def _query_groups(frame: pd.DataFrame) -> dict[str, list[int]]:
    """Row positions of each query, queries in order of first appearance."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"request table: missing column(s) {missing}")
    nulls = [c for c in REQUIRED_COLUMNS if frame[c].isna().any()]
    if nulls:
        raise ValueError(f"request table: missing values in required column(s) {nulls}")
    groups: dict[str, list[int]] = {}
    for pos, qid in enumerate(frame[QUERY_ID].astype(str)):
        groups.setdefault(qid, []).append(pos)
    return groups


def frame_to_routes(frame: pd.DataFrame) -> dict[str, list[RouteQuery]]:
    """Routes per mode from the request table (the query's state is read from its first row;
    its stops keep the table's order)."""
    return {mode: [r for _, r in pairs] for mode, pairs in _routes_by_mode(frame).items()}


def _routes_by_mode(frame: pd.DataFrame) -> dict[str, list[tuple[list[int], RouteQuery]]]:
    groups = _query_groups(frame)
    records = frame.to_dict("records")
    out: dict[str, list[tuple[list[int], RouteQuery]]] = {}
    for qid, positions in groups.items():
        modes = {str(records[p][MODE]) for p in positions}
        if len(modes) != 1:
            raise ValueError(f"{MODE}: query {qid!r} mixes modes {sorted(modes)}")
        first = records[positions[0]]
        route = RouteQuery(_state(first, qid), [_stop(records[p], qid) for p in positions])
        out.setdefault(modes.pop(), []).append((positions, route))
    return out


def predict_frame(bundle: EtaBundle, frame: pd.DataFrame) -> pd.DataFrame:
    """Calibrated ETAs for every row of the request table, in the table's row order."""
    by_mode = _routes_by_mode(frame)
    unknown = sorted(set(by_mode) - set(bundle.modes))
    if unknown:
        raise ValueError(f"{MODE}: {unknown} not served; this model has {sorted(bundle.modes)}")
    zones = ZoneResolver(bundle.featurizer.h3_resolution)
    n = len(frame)
    p10, p50, p90 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    for mode, pairs in by_mode.items():
        batch = build_batch([r for _, r in pairs], bundle.featurizer.tz_, zones)
        pred: EtaPrediction = bundle.predict(batch, mode)  # type: ignore[arg-type]
        rows = np.concatenate([np.asarray(pos, dtype=np.int64) for pos, _ in pairs])
        p10[rows], p50[rows], p90[rows] = pred.p10, pred.p50, pred.p90
    return pd.DataFrame(
        {
            QUERY_ID: frame[QUERY_ID].astype(str).to_numpy(dtype=object),
            s.STOP_ID: frame[s.STOP_ID].astype(str).to_numpy(dtype=object),
            ETA_P10: p10,
            ETA_P50: p50,
            ETA_P90: p90,
        }
    )


# --- MLflow ----------------------------------------------------------------------------------


class EtaPyfunc(PythonModel):  # type: ignore[misc]
    """The pyfunc face of an ``EtaBundle``; logged empty, the bundle comes as an artifact so
    ``load_bundle`` can fetch it without this wrapper."""

    def __init__(self, bundle: EtaBundle | None = None) -> None:
        self.bundle = bundle

    def load_context(self, context: Any) -> None:
        self.bundle = read_bundle(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self.bundle is None:
            raise RuntimeError("EtaPyfunc has no bundle: load it with mlflow.pyfunc.load_model")
        return predict_frame(self.bundle, model_input)


def read_bundle(path: Path) -> EtaBundle:
    """Unpickle and refuse a bundle whose feature set this code does not compute."""
    return read_checked(path, EtaBundle, check_feature_set)


def load_bundle(model_uri: str) -> EtaBundle:
    """The bundle of a logged ETA model, its feature set checked (serving's fast path)."""
    return load_logged(model_uri, BUNDLE_ARTIFACT, read_bundle, "an ETA model")
