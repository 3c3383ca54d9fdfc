"""Train the ETA bundle: time-split windows, LightGBM quantile boosters, conformal calibration.

Windows (by the route's local date, never a random split):
    fit  = [start, calibration start)      profiles + boosters (last ``valid_days`` early-stop)
    cal  = [test_from - calib_days, test_from)   conformal offsets per horizon bucket
Profiles are point-in-time, so every row (training, calibration, test) sees only days before
its own; boosters never see the calibration days, which keeps the conformal guarantee honest.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd

from doorstep.eta_bundle import QUANTILES, EtaBundle, ModeModel, horizon_bucket, shape
from features import schema as s
from features.eta_features import CATEGORICAL, MODES, EtaFeaturizer, Mode, feature_names
from features.eta_queries import QueryBatch, queries_from_deliveries
from features.pair_order import PairOrder
from features.profiles import local_day


@dataclass(frozen=True)
class BoosterParams:
    """LightGBM settings shared by the quantile boosters (tuned by ``doorstep tune eta``).

    Learning rate 0.1 and 63 bins: on a dev city (seed 11, 40 d x 40 couriers) they cut the
    training CPU 2.3x against 0.05 / 255 bins and lowered hold-out MAE in both modes (ordered
    7.69 vs 7.76 min, unordered 8.07 vs 8.29: at 0.05 the unordered boosters hit the 600-round
    cap), with the same calibrated coverage.
    """

    learning_rate: float = 0.1
    num_leaves: int = 63
    min_child_samples: int = 40
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_bin: int = 63
    n_estimators: int = 600
    early_stopping_rounds: int = 50
    # Each tree's bagging sample holds at most this many rows (0: no cap): on a big window
    # ``bagging_fraction`` shrinks to it. Histograms cost what the sample holds, and 300k rows
    # are plenty for 63-leaf trees: on the 1M-row speed city a round took 0.71x (ordered 0.63x)
    # of the time at 0.4 instead of 0.8, with the same validation MAE after 60 rounds.
    # Windows under 375k rows (LaDe's) are unchanged. The ETA boosters only: demand bags at
    # ``bagging_fraction`` (its windows are capped at ``max_train_rows`` anyway).
    max_bag_rows: int = 300_000


# booster parameters a mode may scale (``EtaConfig.booster_scale``)
SCALABLE: tuple[str, ...] = (
    "learning_rate",
    "num_leaves",
    "min_child_samples",
    "lambda_l2",
    "max_bin",
)
INTEGER_PARAMS: frozenset[str] = frozenset({"num_leaves", "min_child_samples", "max_bin"})


REFITS: tuple[str, ...] = ("none", "p50", "all")


@dataclass(frozen=True)
class EtaConfig:
    """How to train the ETA model; defaults run on one machine."""

    booster: BoosterParams = field(default_factory=BoosterParams)
    calib_days: int = 14
    valid_days: int = 7
    refit_full: bool = True  # after early stopping, refit on the whole fit window
    # After calibrating, refit on every day before the test window ("p50": the point only;
    # "all": the bounds too; "none"). See train_eta.
    refit_with_calibration: str = "p50"
    # P10/P90 boosters train this share of the P50's rounds at a proportionally larger step:
    # conformal offsets set their level anyway, and boosting is ~90% of training time. On a
    # dev city (seed 11) a share of 0.5 cut training CPU by 21% for windows ~3% wider. 0.6
    # since eta_v4 (ordered trains twice the rounds): dev widths and MAE unchanged (synthetic
    # ordered 21.85 / 21.75 min wide against 21.91 / 22.14 at 0.67, LaDe 46.7 / 46.0 vs 47.5 / 47.9)
    bound_rounds_share: float = 0.6
    # ... but at least this many (capped at n_estimators): the bounds start from the global
    # quantile and move a step proportional to the distance left, so when the P50 converges
    # early (eta_v2's leg sums) its share is too few rounds for the far stops. The P10 then
    # saturated (at 74 min on a seed-13 60 x 60 dev city, windows 79 min wide at >= 120 min
    # against 50 with eta_v1); 150 rounds took LaDe dev's ordered windows from 57.3 to 48.5 min
    # at the same coverage. On the 1M-row speed city the shares already exceed it for unordered.
    min_bound_rounds: int = 150
    coverage: float = 0.8  # nominal P10-P90 coverage
    # boosters learn log1p(minutes): errors scale with the horizon, and quantiles survive the
    # transform exactly (see ModeModel.target)
    target: str = "log1p"
    # A mode's booster parameters as multiples of the shared ones (``booster``), so tuning the
    # shared ones moves every mode. Ordered learns at half the rate: on the dev splits
    # (synthetic seed 11, LightGBM seeds 7 and 8; LaDe before 2021-08-01) that took ordered MAE
    # from 6.58 to 6.40 min and from 17.84 to 17.62, and on the 1M-row speed city it early-stops
    # at the same rounds (154 vs 151). Ordered also bins features twice as finely (63 -> 126):
    # its leg sums are near the label itself, and 63 bins over 0-240 min are 4 min wide; on the
    # same synthetic seeds 6.42 / 6.38 -> 6.38 / 6.28 min with 127 bins (255: 6.37 / 6.30, at
    # more CPU); LaDe dev 17.65 -> 17.72, inside its seed spread. The unordered mode is no
    # better at half rate or with finer bins (7.17 / 7.29 -> 7.20 / 7.37 min) and would train
    # half as many rounds again, past the 5-minute training target.
    booster_scale: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"ordered": {"learning_rate": 0.5, "max_bin": 2.0}}
    )
    max_train_queries: int = 60_000  # random queries kept for training (all routes' days)
    # how early a courier waits for a booked window to open (``EtaFeaturizer.window_wait_min``)
    window_wait_min: float = 20.0
    # The unordered mode's learned visit order (``features.pair_order``, ``eta_v6``): a ranker
    # and a pair model on the close calls. LaDe dev unordered (seeds 7 / 8) 31.44 / 32.08 ->
    # 28.11 / 28.35 min; LaDe test 30.84 -> 27.61. On by default since the training got
    # cheaper (bagging capped at ``max_bag_rows``, one pass over both modes' shared columns,
    # a faster nearest-neighbour tour, 60 pair rounds): the 1M-row speed benchmark took 235.9 s
    # with it, against 390.6 s before those changes (target 300 s). Off, its columns stay
    # empty (NaN) and the trees drop them: for a routing engine that only sends ordered plans.
    pair_order: bool = True
    seed: int = 7
    num_threads: int = 2
    modes: tuple[str, ...] = MODES

    def __post_init__(self) -> None:
        if self.refit_with_calibration not in REFITS:
            raise ValueError(
                f"refit_with_calibration: must be one of {list(REFITS)}, "
                f"got {self.refit_with_calibration!r}"
            )
        if not 0.0 <= self.window_wait_min <= 240.0:
            raise ValueError(f"window_wait_min: must be in [0, 240], got {self.window_wait_min}")
        if not 0.0 < self.bound_rounds_share <= 1.0:
            raise ValueError(
                f"bound_rounds_share: must be in (0, 1], got {self.bound_rounds_share}"
            )
        for mode, scales in self.booster_scale.items():
            if mode not in MODES:
                raise ValueError(f"booster_scale: unknown mode {mode!r}; known: {MODES}")
            for name, scale in scales.items():
                if name not in SCALABLE:
                    raise ValueError(
                        f"booster_scale.{mode}: cannot scale {name!r}; scalable: {SCALABLE}"
                    )
                if not 0.0 < scale <= 10.0:
                    raise ValueError(
                        f"booster_scale.{mode}.{name}: must be in (0, 10], got {scale}"
                    )

    def featurizer(self) -> EtaFeaturizer:
        """An unfitted featurizer with this config's settings."""
        order = PairOrder(seed=self.seed, num_threads=self.num_threads) if self.pair_order else None
        return EtaFeaturizer(window_wait_min=self.window_wait_min, pair_order=order)

    def for_mode(self, mode: str) -> EtaConfig:
        """This config with ``mode``'s ``booster_scale`` applied to the booster."""
        scales = self.booster_scale.get(mode, {})
        if not scales:
            return self
        changed: dict[str, Any] = {}
        for name, scale in scales.items():
            value = getattr(self.booster, name) * scale
            # integer parameters stay integers (and at least 2: one bin or leaf cannot split)
            changed[name] = max(round(value), 2) if name in INTEGER_PARAMS else value
        return with_booster(self, **changed)


@dataclass(frozen=True)
class Split:
    """Route dates of each window (local days, half-open)."""

    fit_end: int
    test_from: int
    valid_from: int


@dataclass(frozen=True)
class EtaTrainResult:
    bundle: EtaBundle
    split: Split
    best_iterations: dict[str, int]
    fit_seconds: float
    n_train_rows: dict[str, int]
    calibration: dict[str, list[float]]


def route_day(batch: QueryBatch) -> npt.NDArray[np.int64]:
    """Local date of each query's route (queries of one route share its dispatch day)."""
    return batch.q_route_day


def day_of(date: str | pd.Timestamp) -> int:
    return int((pd.Timestamp(date).normalize() - pd.Timestamp("1970-01-01")).days)


def make_split(deliveries: pd.DataFrame, test_from: int, config: EtaConfig) -> Split:
    return split_days(np.unique(local_day(deliveries[s.DISPATCH_TIME])), test_from, config)


def split_days(days: npt.NDArray[np.int64], test_from: int, config: EtaConfig) -> Split:
    """The fit / validation / calibration windows before ``test_from`` from the route days."""
    days = np.unique(np.asarray(days, dtype=np.int64))
    days = days[days < test_from]
    if len(days) < config.calib_days + config.valid_days + 7:
        raise ValueError(
            f"need at least {config.calib_days + config.valid_days + 7} days before the test "
            f"window for fit, validation and calibration; got {len(days)}"
        )
    fit_end = test_from - config.calib_days
    return Split(fit_end=fit_end, test_from=test_from, valid_from=fit_end - config.valid_days)


def _subsample(batch: QueryBatch, keep_max: int, rng: np.random.Generator) -> QueryBatch:
    if batch.n_queries <= keep_max:
        return batch
    keep = np.zeros(batch.n_queries, dtype=bool)
    keep[rng.choice(batch.n_queries, size=keep_max, replace=False)] = True
    return batch.take_queries(keep)


def bag_fraction(p: BoosterParams, n_rows: int) -> float:
    """The bagging fraction for a window of ``n_rows``: ``bagging_fraction``, shrunk so that a
    tree's sample holds at most ``max_bag_rows`` (``n_rows`` 0: unknown, not shrunk)."""
    if p.max_bag_rows <= 0 or n_rows <= 0:
        return p.bagging_fraction
    return min(p.bagging_fraction, p.max_bag_rows / n_rows)


def _lgb_params(
    p: BoosterParams, alpha: float, seed: int, threads: int, n_rows: int = 0
) -> dict[str, Any]:
    return {
        "objective": "quantile",
        "alpha": alpha,
        "learning_rate": p.learning_rate,
        "num_leaves": p.num_leaves,
        "min_child_samples": p.min_child_samples,
        "feature_fraction": p.feature_fraction,
        "bagging_fraction": bag_fraction(p, n_rows),
        "bagging_freq": 1,
        "lambda_l2": p.lambda_l2,
        "max_bin": p.max_bin,
        "seed": seed,
        "num_threads": threads,
        "verbosity": -1,
    }


@dataclass
class ModeData:
    """One mode's windows, binned once. The bins come from the fit days alone, so neither the
    validation nor the calibration rows shape the boosters' inputs, and every stacked window is
    a subset of one Dataset: binning a million rows costs ~4 s, a subset of them ~0.2 s."""

    train: lgb.Dataset  # the fit days
    valid: lgb.Dataset  # the validation days, for early stopping
    stacked: lgb.Dataset  # fit + validation + calibration days, on the fit days' bins
    n_fit: int
    n_valid: int
    n_cal: int

    def fit_and_valid(self) -> lgb.Dataset:
        return self.stacked.subset(list(range(self.n_fit + self.n_valid)))


def bin_windows(
    windows: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]],
    mode: Mode,
    config: EtaConfig,
) -> ModeData:
    """``ModeData`` from the (features, target) of the fit, validation and calibration days."""
    (X_fit, y_fit), (X_va, y_va), (X_cal, y_cal) = windows
    names = feature_names(mode)
    cats = [n for n in CATEGORICAL if n in names]
    # constructed now with the P50's parameters (the bounds share every binning parameter)
    params = _lgb_params(config.booster, 0.5, config.seed, config.num_threads, len(y_fit))
    train = lgb.Dataset(
        X_fit, y_fit, feature_name=names, categorical_feature=cats, params=params
    ).construct()
    stacked = lgb.Dataset(
        np.vstack([X_fit, X_va, X_cal]),
        np.concatenate([y_fit, y_va, y_cal]),
        reference=train,
        feature_name=names,
        categorical_feature=cats,
        params=params,
    ).construct()
    valid = lgb.Dataset(X_va, y_va, reference=train)
    return ModeData(train, valid, stacked, len(y_fit), len(y_va), len(y_cal))


def fit_mode(
    data: ModeData,
    config: EtaConfig,
    callbacks: list[Any] | None = None,
) -> tuple[ModeModel, int]:
    """Quantile boosters for one mode (labels already on the target scale); early stopping on
    the validation days' P50 loss, then (``refit_full``) refit on fit + validation days.

    With ``refit_with_calibration="p50"`` the point is refitted after calibration anyway, so
    the refit here trains only the bounds and the early-stopped P50 stands in until then (it
    only sorts calibration rows into horizon buckets): no booster is trained twice."""
    params = _lgb_params(config.booster, 0.5, config.seed, config.num_threads, data.n_fit)
    cbs = [lgb.early_stopping(config.booster.early_stopping_rounds, verbose=False)]
    median = lgb.train(
        params,
        data.train,
        config.booster.n_estimators,
        valid_sets=[data.valid],
        callbacks=cbs + (callbacks or []),
    )
    best = max(median.best_iteration or config.booster.n_estimators, 10)
    if config.refit_full:
        later = config.refit_with_calibration == "p50"
        alphas = tuple(a for a in QUANTILES if not (later and a == 0.5))
        n_rows = data.n_fit + data.n_valid
        boosters = train_quantiles(data.fit_and_valid(), n_rows, config, best, alphas)
        if later:
            boosters[0.5] = truncated(median, best)
    else:
        bounds = tuple(a for a in QUANTILES if a != 0.5)
        boosters = {0.5: median} | train_quantiles(data.train, data.n_fit, config, best, bounds)
    return ModeModel(boosters=boosters, target=config.target), best


def truncated(booster: lgb.Booster, rounds: int) -> lgb.Booster:
    """The first ``rounds`` trees as a plain Booster (what early stopping would have kept)."""
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=rounds))


def bound_rounds(rounds: int, config: EtaConfig) -> int:
    """Rounds of the P10/P90 boosters for a P50 of ``rounds``."""
    share = min(rounds, max(round(rounds * config.bound_rounds_share), 10))
    return max(share, min(config.min_bound_rounds, config.booster.n_estimators))


def quantile_rounds(alpha: float, rounds: int, config: EtaConfig) -> int:
    """Rounds of the ``alpha`` booster when the P50 has ``rounds`` (both engines use it)."""
    return rounds if alpha == 0.5 else bound_rounds(rounds, config)


def quantile_params(config: EtaConfig, alpha: float, n_rows: int = 0) -> dict[str, Any]:
    """The ``alpha`` booster's LightGBM parameters on a window of ``n_rows`` (0: unknown): a
    P10/P90 booster trains fewer rounds (``quantile_rounds``) at a proportionally larger
    step, so it travels as far as the P50."""
    params = _lgb_params(config.booster, alpha, config.seed, config.num_threads, n_rows)
    if alpha != 0.5:
        params["learning_rate"] = config.booster.learning_rate / config.bound_rounds_share
    return params


def train_quantiles(
    data: lgb.Dataset,
    n_rows: int,
    config: EtaConfig,
    rounds: int,
    alphas: tuple[float, ...] = QUANTILES,
) -> dict[float, lgb.Booster]:
    """The quantile boosters (all three by default) on ``data`` (``n_rows`` rows): the P50
    with ``rounds``, the bounds with their share of it."""
    return {
        alpha: lgb.train(
            quantile_params(config, alpha, n_rows), data, quantile_rounds(alpha, rounds, config)
        )
        for alpha in alphas
    }


def _target(minutes: npt.NDArray[np.float64], target: str) -> npt.NDArray[np.float64]:
    if target == "log1p":
        return np.log1p(minutes)
    if target == "minutes":
        return minutes
    raise ValueError(f"target: must be 'log1p' or 'minutes', got {target!r}")


def conformal_offsets(
    raw_p10: npt.NDArray[np.float64],
    raw_p50: npt.NDArray[np.float64],
    raw_p90: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    coverage: float,
) -> list[float]:
    """Conformalised quantile regression per horizon bucket (Mondrian CQR).

    The score is how far the actual lies outside [P10, P90] (negative inside); the offset is
    its finite-sample (1 - alpha)(1 + 1/n) quantile, so widened windows cover ``coverage`` of
    exchangeable new rows in each bucket. A negative offset narrows a too-wide window.
    """
    score = np.maximum(raw_p10 - y, y - raw_p90)
    bucket = horizon_bucket(raw_p50)
    overall = _cq(score, coverage)
    out = []
    for b in range(4):
        sb = score[bucket == b]
        out.append(_cq(sb, coverage) if len(sb) >= 50 else overall)
    return out


def _cq(score: npt.NDArray[np.float64], coverage: float) -> float:
    n = len(score)
    if n == 0:
        return 0.0
    level = min(1.0, np.ceil((n + 1) * coverage) / n)
    return float(np.quantile(score, level, method="higher"))


def train_eta(
    deliveries: pd.DataFrame,
    test_from: str | pd.Timestamp,
    config: EtaConfig | None = None,
    *,
    batch: QueryBatch | None = None,
) -> EtaTrainResult:
    """Fit profiles, boosters and calibration on everything before ``test_from``."""
    config = config or EtaConfig()
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    t_from = day_of(test_from)
    history = deliveries[local_day(deliveries[s.DISPATCH_TIME]) < t_from]
    split = make_split(history, t_from, config)
    batch = batch if batch is not None else queries_from_deliveries(history)
    day = route_day(batch)
    # a caller's batch may reach past test_from; the pair order learns from history only
    queries = batch.take_queries(day < t_from) if config.pair_order else None
    featurizer = config.featurizer().fit(history, queries=queries)
    fit_b = _subsample(batch.take_queries(day < split.valid_from), config.max_train_queries, rng)
    valid_b = batch.take_queries((day >= split.valid_from) & (day < split.fit_end))
    cal_b = batch.take_queries((day >= split.fit_end) & (day < t_from))
    modes: dict[str, ModeModel] = {}
    best: dict[str, int] = {}
    calibration: dict[str, list[float]] = {}
    batches = (fit_b, valid_b, cal_b)
    wanted: tuple[Mode, ...] = tuple(config.modes)  # type: ignore[arg-type]
    # every mode's matrices at once: the columns the modes share are built once per window
    matrices = [featurizer.transform_modes(b, wanted) for b in batches]
    targets = [_target(b.t_label_min, config.target) for b in batches]
    for mode in config.modes:
        m: Mode = mode  # type: ignore[assignment]
        windows = [(mats.pop(m), y) for mats, y in zip(matrices, targets, strict=True)]
        X_cal = windows[2][0]
        mode_config = config.for_mode(m)
        data = bin_windows(windows, m, mode_config)
        del windows  # the Datasets hold the binned rows; only the calibration features stay
        model, best[mode] = fit_mode(data, mode_config)
        bundle = EtaBundle(featurizer, {mode: model}, num_threads=config.num_threads)
        raw = shape(bundle.raw_from_features(X_cal, m), cal_b, m)
        model.conformal = conformal_offsets(
            raw.p10, raw.p50, raw.p90, cal_b.t_label_min, config.coverage
        )
        calibration[mode] = model.conformal
        if config.refit_with_calibration != "none":
            # Recent days matter most for tomorrow's routes: refit on every day before the
            # test window with the same rounds. The offsets were fitted for the bounds that
            # never saw the calibration days, so "p50" refits only the point and keeps the
            # calibrated bounds (coverage counts the bounds alone); "all" refits those too,
            # which over-covered on LaDe (0.84 against 0.80).
            alphas = QUANTILES if config.refit_with_calibration == "all" else (0.5,)
            n_all = data.n_fit + data.n_valid + data.n_cal
            model.boosters = model.boosters | train_quantiles(
                data.stacked, n_all, mode_config, best[mode], alphas
            )
        modes[mode] = model
    window = (str(history[s.DISPATCH_TIME].min()), str(history[s.DISPATCH_TIME].max()))
    bundle = EtaBundle(featurizer, modes, training_window=window, num_threads=1)
    return EtaTrainResult(
        bundle=bundle,
        split=split,
        best_iterations=best,
        fit_seconds=time.perf_counter() - start,
        n_train_rows={
            "fit": fit_b.n_targets,
            "valid": valid_b.n_targets,
            "calibration": cal_b.n_targets,
        },
        calibration=calibration,
    )


def with_booster(config: EtaConfig, **params: Any) -> EtaConfig:
    """A copy of ``config`` with some booster parameters replaced (used by tuning)."""
    return dataclasses.replace(config, booster=dataclasses.replace(config.booster, **params))
