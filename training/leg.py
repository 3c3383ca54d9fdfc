"""Train the leg travel-time model from consecutive stops, net of estimated service time.

A leg is two consecutive stops of one route in visit order. Its label is the *travel* time a
routing solver needs (the solver adds service per stop itself): next arrival - this stop's
departure where the data has departures, else the arrival gap minus an estimated service time.

Windows, by the legs' own timestamps (never a random split):
    fit   = legs ending before ``test_from - valid_days``
    valid = legs inside [test_from - valid_days, test_from)   early stopping, objective choice
    test  = legs starting at or after ``test_from``            metrics vs baselines
Legs straddling a boundary belong to neither side. The service profile and the featurizer are
fitted on legs ending before ``test_from`` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from doorstep.leg_bundle import LegBundle, Target, from_target, offset_for, to_target
from features import leg_features as lf
from features import schema as s
from features.geo import haversine_km
from training.eta import BoosterParams

FloatArray = npt.NDArray[np.float64]
MAX_TRAVEL_MIN = 180.0
MAX_SPEED_KMH = 120.0  # as features.validate: faster is a clock or GPS error, not a leg
# objective name -> (LightGBM objective, scale the booster learns on)
OBJECTIVES: dict[str, tuple[str, Target]] = {
    "l1": ("regression_l1", "minutes"),
    "log_l1": ("regression_l1", "log1p_minutes"),
    "log_l2": ("regression", "log1p_minutes"),
}


@dataclass(frozen=True)
class LegConfig:
    """How to train the leg model; defaults run on one machine."""

    # a matrix's latency is linear in trees: lr 0.1 stops LaDe at ~60 trees for +0.05 min MAE
    # over lr 0.05 (~150 trees), and at most 300 rounds bound a 100 x 100 matrix on any data
    booster: BoosterParams = field(
        default_factory=lambda: BoosterParams(
            learning_rate=0.1, num_leaves=31, min_child_samples=50, n_estimators=300
        )
    )
    objectives: tuple[str, ...] = ("l1", "log_l1", "log_l2")
    valid_days: int = 14
    refit_full: bool = True  # after early stopping, refit on fit + valid with the best rounds
    max_travel_min: float = MAX_TRAVEL_MIN
    service_quantile: float = 0.1
    near_km: float = 0.05
    h3_resolution: int = s.DEFAULT_H3_RESOLUTION
    prior: float = 5.0
    baseline_min_legs: int = 5
    seed: int = 7
    # one thread: the data are small, and OpenMP threads on a busy shared machine spin, which
    # made a LaDe fit 9x slower with 2 threads than with 1
    num_threads: int = 1


@dataclass(frozen=True)
class LegSplit:
    valid_from: pd.Timestamp
    test_from: pd.Timestamp


@dataclass(frozen=True)
class LegTrainResult:
    bundle: LegBundle
    metrics: dict[str, float]  # the model on the test legs
    baselines: dict[str, dict[str, float]]  # each baseline on exactly the same legs
    fit_seconds: float
    split: LegSplit
    objective: str  # the objective picked on the validation window
    selection: dict[str, float]  # validation MAE (minutes) of every candidate objective
    n_legs: dict[str, int]


class ServiceTimeProfile(BaseEstimator):  # type: ignore[misc]
    """Service minutes at a stop by stop type x packages bucket, pooled where a group is thin.

    Observed services (departure - arrival) give the median. Without departures, a leg of
    ~0 km (< ``near_km``) has a gap that is service plus idle time, never less than service,
    so a low ``quantile`` of those gaps estimates service robustly to breaks and calls.
    """

    def __init__(
        self,
        quantile: float = 0.1,
        near_km: float = 0.05,
        min_count: int = 30,
        max_packages: int = 4,
        default_min: float = 3.0,
    ) -> None:
        self.quantile = quantile
        self.near_km = near_km
        self.min_count = min_count
        self.max_packages = max_packages
        self.default_min = default_min

    def fit(self, legs: pd.DataFrame, y: object = None) -> ServiceTimeProfile:
        """``legs`` from :func:`raw_legs` (origin's stop type, packages, observed service)."""
        group = self._groups(legs[s.STOP_TYPE], legs[s.PACKAGES])
        observed = legs[s.SERVICE_MIN].to_numpy(dtype=np.float64)
        near_gap = np.where(
            np.isnan(observed) & (legs[lf.LEG_KM].to_numpy() < self.near_km),
            legs[lf.GAP_MIN].to_numpy(dtype=np.float64),
            np.nan,
        )
        frame = pd.DataFrame({"g": group, "obs": observed, "gap": near_gap})
        self.pooled_ = self._estimate(frame["obs"], frame["gap"], self.default_min)
        self.table_ = {
            str(g): self._estimate(f["obs"], f["gap"], self.pooled_)
            for g, f in frame.groupby("g", sort=True)
        }
        return self

    def _estimate(self, observed: pd.Series, gaps: pd.Series, fallback: float) -> float:
        obs, gap = observed.dropna(), gaps.dropna()
        if len(obs) >= self.min_count:
            return float(obs.median())
        if len(gap) >= self.min_count:
            return float(gap.quantile(self.quantile))
        return float(fallback)

    def _groups(self, stop_type: pd.Series, packages: pd.Series) -> npt.NDArray[np.str_]:
        kind = pd.Series(stop_type, dtype="string").fillna(s.StopType.UNKNOWN.value)
        n = pd.Series(packages, dtype="Float64").fillna(1).clip(1, self.max_packages).astype(int)
        return (kind + "|" + n.astype(str)).to_numpy(dtype=str)

    def predict(self, stop_type: pd.Series, packages: pd.Series) -> FloatArray:
        check_is_fitted(self, "table_")
        group = self._groups(stop_type, packages)
        return np.array([self.table_.get(g, self.pooled_) for g in group], dtype=np.float64)


def raw_legs(deliveries: pd.DataFrame) -> pd.DataFrame:
    """Consecutive stops of each route in visit order (arrival time, then stop id), unlabelled."""
    d = deliveries.sort_values([s.ROUTE_ID, s.ARRIVAL_TIME, s.STOP_ID], kind="stable")
    d = d.reset_index(drop=True)
    route = d[s.ROUTE_ID].to_numpy()
    has_next = np.r_[route[1:] == route[:-1], False]
    o, n = np.flatnonzero(has_next), np.flatnonzero(has_next) + 1
    arrival = d[s.ARRIVAL_TIME]
    departure = d[s.DEPARTURE_TIME] if s.DEPARTURE_TIME in d else pd.Series(pd.NaT, index=d.index)
    departure = departure.astype(arrival.dtype)
    lat, lng = d[s.LAT].to_numpy(np.float64), d[s.LNG].to_numpy(np.float64)
    o_arr, d_arr = arrival.iloc[o].reset_index(drop=True), arrival.iloc[n].reset_index(drop=True)
    o_dep = departure.iloc[o].reset_index(drop=True)
    return pd.DataFrame(
        {
            s.ROUTE_ID: d[s.ROUTE_ID].to_numpy()[o],
            s.COURIER_ID: d[s.COURIER_ID].to_numpy()[o],
            s.VEHICLE_TYPE: _column(d, s.VEHICLE_TYPE, s.VehicleType.UNKNOWN.value)[o],
            lf.O_STOP_ID: d[s.STOP_ID].to_numpy()[o],
            lf.D_STOP_ID: d[s.STOP_ID].to_numpy()[n],
            lf.O_LAT: lat[o],
            lf.O_LNG: lng[o],
            lf.D_LAT: lat[n],
            lf.D_LNG: lng[n],
            s.STOP_TYPE: _column(d, s.STOP_TYPE, s.StopType.UNKNOWN.value)[o],
            s.PACKAGES: _column(d, s.PACKAGES, 1)[o],
            lf.O_ARRIVAL: o_arr,
            s.DEPARTURE_TIME: o_dep,
            lf.D_ARRIVAL: d_arr,
            lf.GAP_MIN: (d_arr - o_arr).dt.total_seconds() / 60.0,
            s.SERVICE_MIN: (o_dep - o_arr).dt.total_seconds() / 60.0,
            lf.LEG_KM: haversine_km(lat[o], lng[o], lat[n], lng[n]),
        }
    )


def legs_from_deliveries(
    deliveries: pd.DataFrame,
    service: ServiceTimeProfile | None = None,
    *,
    max_travel_min: float = MAX_TRAVEL_MIN,
) -> pd.DataFrame:
    """Labelled legs: ``TRAVEL_MIN`` = next arrival - departure (observed or estimated).

    ``service`` estimates service where departures are missing; pass one fitted on the training
    window (without it, one is fitted on ``deliveries`` themselves, which is fine for a look at
    the data but leaks the test window's gaps into its own labels).
    """
    legs = raw_legs(deliveries)
    service = service if service is not None else ServiceTimeProfile().fit(legs)
    observed = legs[s.SERVICE_MIN].notna().to_numpy()
    estimate = service.predict(legs[s.STOP_TYPE], legs[s.PACKAGES])
    legs[lf.SERVICE_OBSERVED] = observed
    legs[s.SERVICE_MIN] = np.where(observed, legs[s.SERVICE_MIN], estimate)
    legs[lf.DEPART] = legs[lf.O_ARRIVAL] + pd.to_timedelta(legs[s.SERVICE_MIN], unit="min")
    legs[lf.TRAVEL_MIN] = (legs[lf.D_ARRIVAL] - legs[lf.DEPART]).dt.total_seconds() / 60.0
    travel, km = legs[lf.TRAVEL_MIN].to_numpy(), legs[lf.LEG_KM].to_numpy()
    keep = np.isfinite(travel) & np.isfinite(km)
    # <= 0: the service estimate (or a minute-rounded departure) swallowed the gap; there is no
    # travel left to learn, and clipping to 0 would teach the model that moving is free.
    keep &= travel > 0
    # > max: a lunch break, a depot run or a day split across two shifts, not a leg to plan with.
    keep &= travel <= max_travel_min
    # identical points: the gap is service at one address; the bundle answers 0 there anyway.
    keep &= km > 0
    # faster than any courier: clock or GPS error.
    with np.errstate(divide="ignore", invalid="ignore"):
        keep &= km / (travel / 60.0) <= MAX_SPEED_KMH
    return legs[keep].reset_index(drop=True)


@dataclass(frozen=True)
class LegBaselines:
    """``const_speed``: km / median training leg speed; ``zone_hour_speed``: km / the mean
    speed (total km / total minutes) of legs leaving the origin zone in that local hour,
    falling back to the zone, then to all training legs, when a group has few legs."""

    median_speed: float  # km per minute
    pooled_speed: float
    zone_hour: dict[str, float]
    zone: dict[str, float]
    resolution: int
    tz: str

    def predict(self, legs: pd.DataFrame) -> dict[str, FloatArray]:
        km = legs[lf.LEG_KM].to_numpy(np.float64)
        cell, hour = _zone_hour(legs, self.resolution, self.tz)
        zone = pd.Series(cell).map(self.zone).fillna(self.pooled_speed)
        speed = pd.Series(_join(cell, hour)).map(self.zone_hour).fillna(zone).to_numpy(np.float64)
        return {"const_speed": km / self.median_speed, "zone_hour_speed": km / speed}


def fit_baselines(legs: pd.DataFrame, resolution: int, tz: str, min_legs: int) -> LegBaselines:
    """Fit both baselines on training legs only."""
    km, minutes = legs[lf.LEG_KM].to_numpy(np.float64), legs[lf.TRAVEL_MIN].to_numpy(np.float64)
    cell, hour = _zone_hour(legs, resolution, tz)
    frame = pd.DataFrame({"zh": _join(cell, hour), "z": cell, "km": km, "min": minutes})

    def speeds(key: str) -> dict[str, float]:
        g = frame.groupby(key)[["km", "min"]].sum()
        g = g[frame.groupby(key).size() >= min_legs]
        return {str(k): float(v) for k, v in (g["km"] / g["min"]).items() if v > 0}

    return LegBaselines(
        median_speed=float(np.median(km / minutes)),
        pooled_speed=float(km.sum() / minutes.sum()),
        zone_hour=speeds("zh"),
        zone=speeds("z"),
        resolution=resolution,
        tz=tz,
    )


def leg_metrics(y: npt.ArrayLike, pred: npt.ArrayLike) -> dict[str, float]:
    """MAE and RMSE in minutes; MAPE as a fraction (labels are > 0 by construction)."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    err = pred - y
    return {
        "mae_min": float(np.mean(np.abs(err))),
        "rmse_min": float(np.sqrt(np.mean(err**2))),
        "mape": float(np.mean(np.abs(err) / y)),
        "n_legs": float(len(y)),
    }


def make_split(legs: pd.DataFrame, test_from: str | pd.Timestamp, valid_days: int) -> LegSplit:
    """Boundaries in the data's zone (a naive ``test_from`` is local midnight there)."""
    t = pd.Timestamp(test_from)
    if t.tzinfo is None:
        t = t.tz_localize(legs[lf.O_ARRIVAL].dt.tz)
    return LegSplit(valid_from=t - pd.Timedelta(days=valid_days), test_from=t)


@dataclass(frozen=True)
class FittedProfiles:
    """What is learned from the history before any booster: labels' service and the features."""

    service: ServiceTimeProfile
    featurizer: lf.LegFeaturizer
    history: pd.DataFrame  # labelled legs ending before test_from
    test: pd.DataFrame  # labelled legs starting at or after test_from
    split: LegSplit


def fit_profiles(
    deliveries: pd.DataFrame, test_from: str | pd.Timestamp, config: LegConfig
) -> FittedProfiles:
    """Service profile and featurizer from legs ending before ``test_from``; nothing later."""
    raw = raw_legs(deliveries)
    split = make_split(raw, test_from, config.valid_days)
    service = ServiceTimeProfile(quantile=config.service_quantile, near_km=config.near_km)
    service.fit(raw[raw[lf.D_ARRIVAL] < split.test_from])
    legs = legs_from_deliveries(deliveries, service, max_travel_min=config.max_travel_min)
    history = legs[legs[lf.D_ARRIVAL] < split.test_from].reset_index(drop=True)
    test = legs[legs[lf.O_ARRIVAL] >= split.test_from].reset_index(drop=True)
    featurizer = lf.LegFeaturizer(config.h3_resolution, config.prior).fit(history)
    return FittedProfiles(service, featurizer, history, test, split)


def train_leg(
    deliveries: pd.DataFrame, test_from: str | pd.Timestamp, config: LegConfig | None = None
) -> LegTrainResult:
    """Fit profiles and a booster on legs before ``test_from``; score it and the baselines after."""
    config = config or LegConfig()
    start = time.perf_counter()
    p = fit_profiles(deliveries, test_from, config)
    h = p.history
    fit = h[h[lf.D_ARRIVAL] < p.split.valid_from]
    valid = h[h[lf.O_ARRIVAL] >= p.split.valid_from]
    if min(len(fit), len(valid), len(p.test)) == 0:
        raise ValueError(
            f"need legs in every window: fit {len(fit)}, valid {len(valid)}, test {len(p.test)}"
        )
    X_fit = p.featurizer.transform(fit, point_in_time=True)
    X_val = p.featurizer.transform(valid, point_in_time=True)
    y_fit, y_val = fit[lf.TRAVEL_MIN].to_numpy(), valid[lf.TRAVEL_MIN].to_numpy()
    f = p.featurizer
    trials = {
        name: _fit_booster(f, X_fit, y_fit, X_val, y_val, name, config)
        for name in config.objectives
    }
    selection = {name: mae for name, (_, _, mae) in trials.items()}
    objective = min(selection, key=selection.__getitem__)
    booster, rounds, _ = trials[objective]
    target = OBJECTIVES[objective][1]
    if config.refit_full:
        data = _dataset(f, np.vstack([X_fit, X_val]), np.r_[y_fit, y_val], target)
        booster = lgb.train(_params(config, objective), data, rounds)
    window = (str(h[lf.DEPART].min()), str(h[lf.DEPART].max()))
    bundle = LegBundle(p.featurizer, booster, target, training_window=window)
    test = p.test
    pred = bundle.predict_minutes(
        test[lf.O_LAT], test[lf.O_LNG], test[lf.D_LAT], test[lf.D_LNG],
        test[lf.DEPART], test[s.VEHICLE_TYPE].to_numpy(dtype=object),
    )  # fmt: skip
    y_test = test[lf.TRAVEL_MIN].to_numpy()
    base = fit_baselines(h, config.h3_resolution, p.featurizer.tz_, config.baseline_min_legs)
    return LegTrainResult(
        bundle=bundle,
        metrics=leg_metrics(y_test, pred),
        baselines={k: leg_metrics(y_test, v) for k, v in base.predict(test).items()},
        fit_seconds=time.perf_counter() - start,
        split=p.split,
        objective=objective,
        selection=selection,
        n_legs={"fit": len(fit), "valid": len(valid), "test": len(test)},
    )


def _params(config: LegConfig, objective: str) -> dict[str, Any]:
    b = config.booster
    return {
        "objective": OBJECTIVES[objective][0],
        "metric": "None",  # early stopping on MAE in minutes, whatever scale the booster fits
        "learning_rate": b.learning_rate,
        "num_leaves": b.num_leaves,
        "min_child_samples": b.min_child_samples,
        "feature_fraction": b.feature_fraction,
        "bagging_fraction": b.bagging_fraction,
        "bagging_freq": 1,
        "lambda_l2": b.lambda_l2,
        "max_bin": b.max_bin,
        "seed": config.seed,
        "num_threads": config.num_threads,
        "verbosity": -1,
    }


def _dataset(
    featurizer: lf.LegFeaturizer,
    X: npt.NDArray[np.float32],
    minutes: FloatArray,
    target: Target,
    reference: lgb.Dataset | None = None,
) -> lgb.Dataset:
    return lgb.Dataset(
        X,
        to_target(minutes, target),
        init_score=offset_for(featurizer, X, target),
        feature_name=lf.feature_names(),
        categorical_feature=list(lf.SPEC.categorical),
        reference=reference,
        free_raw_data=False,
    )


def _fit_booster(
    featurizer: lf.LegFeaturizer,
    X_fit: npt.NDArray[np.float32],
    y_fit: FloatArray,
    X_val: npt.NDArray[np.float32],
    y_val: FloatArray,
    objective: str,
    config: LegConfig,
) -> tuple[lgb.Booster, int, float]:
    """One candidate objective, early-stopped on validation MAE in minutes."""
    target = OBJECTIVES[objective][1]
    train = _dataset(featurizer, X_fit, y_fit, target)
    valid = _dataset(featurizer, X_val, y_val, target, reference=train)

    def mae_minutes(raw: FloatArray, data: lgb.Dataset) -> tuple[str, float, bool]:
        pred = np.maximum(from_target(raw, target), 0.0)  # raw includes the init score
        return "mae_min", float(np.mean(np.abs(pred - y_val))), False

    booster = lgb.train(
        _params(config, objective),
        train,
        config.booster.n_estimators,
        valid_sets=[valid],
        feval=mae_minutes,
        callbacks=[lgb.early_stopping(config.booster.early_stopping_rounds, verbose=False)],
    )
    rounds = max(booster.best_iteration or config.booster.n_estimators, 1)
    return booster, rounds, float(booster.best_score["valid_0"]["mae_min"])


def _zone_hour(
    legs: pd.DataFrame, resolution: int, tz: str
) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.str_]]:
    cell = lf.zone_cells(legs[lf.O_LAT], legs[lf.O_LNG], resolution)
    hour = legs[lf.DEPART].dt.tz_convert(tz).dt.hour.to_numpy().astype(str)
    return cell, hour


def _join(a: npt.NDArray[np.str_], b: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    return np.char.add(np.char.add(a, "|"), b)


def _column(frame: pd.DataFrame, name: str, default: object) -> npt.NDArray[Any]:
    if name not in frame:
        return np.full(len(frame), default, dtype=object)
    return frame[name].astype(object).where(frame[name].notna(), default).to_numpy()
