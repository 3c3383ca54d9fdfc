"""Train the demand bundle: time-split windows, LightGBM boosters, conformal calibration.

Windows (by the origin's local day, never a random split; a window's rows forecast only
periods inside it):
    fit   = [first day + warmup, valid start)         boosters
    valid = [calib start - valid_days, calib start)   early stopping, then refit on fit + valid
    cal   = [test_from - calib_days, test_from)       conformal offsets per horizon bucket
Features are point-in-time (only periods before each row's origin), so one panel of everything
before ``test_from`` serves every window. The boosters never see the calibration days.
Hourly training origins are spread over the day (00:00 plans the whole day, later origins see
what has arrived so far); calibration uses the protocol's own cutoffs, with one set of offsets
per cutoff (``FreqModel.origin_groups``).

Two heads are fitted on the same rows and the one whose P50 has the lower validation MAE is kept
(``doorstep.demand_bundle`` says why there are two): LightGBM quantile boosters on sqrt(volume),
or a Poisson booster with a negative-binomial spread. The Poisson booster is always kept: the
bottom-up total is the sum of its expected volumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from doorstep.demand_bundle import (
    MEAN,
    QUANTILES,
    WINDOWS,
    DemandBundle,
    FreqModel,
    horizon_bucket,
    n_buckets,
)
from features import schema as s
from features.demand import check_freq
from features.demand_features import (
    CATEGORICAL,
    DemandFeatureSpec,
    DemandFeaturizer,
    DemandPanel,
    DemandQueries,
    make_queries,
    spec_for,
)
from training.eta import BoosterParams

FloatArray = npt.NDArray[np.float64]
HEADS: tuple[str, ...] = ("auto", "quantile", "count")
POOLED_SLACK = 0.01  # a group over-covered by less keeps its classes' own offsets
MIN_BUCKET_ROWS = 30  # fewer calibration rows in a horizon bucket: use the pooled offset


@dataclass(frozen=True)
class DemandTrainConfig:
    """How to train the demand model; defaults run on one machine (``for_freq`` sizes the
    windows: hourly data is usually a few weeks deep, daily data months)."""

    # demand series are fewer and noisier than ETA rows: smaller trees; every setting pinned
    # here (not inherited from the ETA defaults) as chosen on the demand dev splits
    booster: BoosterParams = field(
        default_factory=lambda: BoosterParams(
            learning_rate=0.05,
            num_leaves=31,
            min_child_samples=50,
            feature_fraction=0.8,
            bagging_fraction=0.8,
            lambda_l2=1.0,
            max_bin=255,
            n_estimators=600,
            early_stopping_rounds=40,
        )
    )
    calib_days: int = 28
    valid_days: int = 14
    warmup_days: int = 7
    origin_hours: tuple[int, ...] = (0, 4, 8, 10, 12, 14, 16, 20)  # hourly training origins
    calib_origin_hours: tuple[int, ...] = (0, 8, 12, 16)  # the intraday protocol's cutoffs
    daily_horizon: int = 7
    coverage: float = 0.8
    head: str = "auto"  # "quantile", "count", or "auto": the lower validation MAE of the P50
    # where P10/P90 come from: "count" or "quantile" (FreqModel.window). On the Changshu dev
    # splits (test May, June, July 2024) the quantile window's coverage was 0.785/0.771/0.755,
    # the count window's 0.768/0.704/0.832 (it follows the count head's mean, which lagged
    # June's growth); on a synthetic hourly city (seed 11) both gave 0.83 day-ahead, 0.79 intraday
    window: str = "quantile"
    level_feature: str | None = None  # see FreqModel.level_feature
    max_train_rows: int = 200_000
    seed: int = 7
    # one thread: OpenMP threads spin-wait, and on a shared 2-core machine two threads were
    # 9x slower per boosting round than one
    num_threads: int = 1

    @classmethod
    def for_freq(cls, freq: str, **kw: Any) -> DemandTrainConfig:
        """Hourly data is usually a few weeks deep (shorter windows), daily data months. Both
        anchor the boosters on a level feature: on three Changshu splits before August 2024
        (May, June, July) anchoring on ``level_profile_14`` gave mean day-ahead WAPE 0.288
        against 0.320 unanchored (trees cannot forecast a level above the ones they saw); on
        the synthetic city it was neutral (MASE 0.713 vs 0.715). Daily calibration is the
        last 14 days (boosters see data up to two weeks before the test): on the same splits
        day-ahead WAPE over the best baseline averaged 0.903 / 0.895 / 0.904 / 0.907 with 7 /
        14 / 21 / 28 calibration days, mean |coverage - 0.80| 0.016 / 0.018 / 0.016 / 0.030.
        The daily anchor is ``ewm_mean_5`` (an exponentially weighted level, half-life 5
        days, no weekday profile: Changshu zones have almost none, and the same-weekday
        mean of 4 weeks scored worse than a plain 14-day mean as a forecast on those splits):
        mean ratio to the best baseline 0.865 against 0.895 with ``level_profile_14``
        (``roll_mean_14`` 0.883; half-lives 3 / 4 / 7: 0.873 / 0.863 / 0.872).
        The hourly anchor is ``class_level``: the 4-week level times the zone's ratio for
        the target's class of day and its day-type hour shape (``day_classes``). On the
        hourly dev city (seed 11, test from 2021-06-07) the anchor on ``level_profile_672``
        forecast the holiday break's city total 5-19% high and the two days after it 24-28%
        low (the trees see one break in the training weeks); with ``class_level`` the
        day-ahead city-total WAPE went from 0.207 to 0.175 and its P10-P90 coverage from 0.57
        to 0.66, intraday 0.157 -> 0.145, while the zones' MASE stayed within the LightGBM
        seeds' spread (seed 7: 0.7428 -> 0.7451, seed 8: 0.7420 -> 0.7418). The hourly head
        is the count head (the Poisson median of the expected volume), not the validation
        week's pick: on the hourly dev cities (seeds 11, 12, 13) ``auto`` picked the quantile
        head in 6 of 8 runs by a validation MAE 0.1-0.3% lower, and in all 8 the count head's
        P50 scored better on the test days (e.g. with the low-rank shapes: 0.7348 / 0.6475 /
        0.6609 against 0.7444 / 0.6514 / 0.6653). For near-Poisson counts the median read off
        a well-estimated mean is the more efficient estimate; an L1 fit sees only signs."""
        if check_freq(freq) == "h":
            defaults: dict[str, Any] = {
                "calib_days": 14,
                "valid_days": 7,
                "level_feature": "class_level",
                "head": "count",
            }
        else:
            defaults = {"level_feature": "ewm_mean_5", "calib_days": 14}
        return cls(**{**defaults, **kw})


@dataclass(frozen=True)
class DemandSplit:
    """First day of each window (local days; each window ends where the next starts)."""

    fit_from: pd.Timestamp
    valid_from: pd.Timestamp
    calib_from: pd.Timestamp
    test_from: pd.Timestamp


@dataclass(frozen=True)
class DemandTrainResult:
    bundle: DemandBundle
    split: DemandSplit
    best_iteration: int
    head: str
    validation_mae: dict[str, float]
    fit_seconds: float
    n_rows: dict[str, int]
    calibration: dict[str, list[float]]


def make_split(
    table: pd.DataFrame, test_from: str | pd.Timestamp, config: DemandTrainConfig
) -> DemandSplit:
    test = pd.Timestamp(test_from)
    if test != test.normalize():
        raise ValueError(f"test_from: must be a day start, got {test}")
    first = pd.Timestamp(table[s.TS].min()).normalize()
    need = config.warmup_days + 7 + config.valid_days + config.calib_days
    have = (test - first).days
    if have < need:
        raise ValueError(
            f"need at least {need} days before test_from for warm-up, fit, validation and "
            f"calibration; got {have}"
        )
    calib = test - pd.Timedelta(days=config.calib_days)
    valid = calib - pd.Timedelta(days=config.valid_days)
    return DemandSplit(first + pd.Timedelta(days=config.warmup_days), valid, calib, test)


def window_queries(
    panel: DemandPanel,
    start: pd.Timestamp,
    end: pd.Timestamp,
    hours: tuple[int, ...],
    horizon: int | None,
) -> DemandQueries:
    """Rows whose origins fall in [start, end) (at ``hours`` for hourly data) and whose
    targets are before ``end``."""
    days = pd.date_range(start, end - pd.Timedelta(days=1), freq="D")
    if panel.freq == "h":
        origins = pd.DatetimeIndex([d + pd.Timedelta(hours=h) for d in days for h in hours])
    else:
        origins = days
    q = make_queries(panel, origins, horizon)
    return q.take(q.target < panel.index_of(end))


def _lgb_params(
    p: BoosterParams, objective: str, alpha: float, config: DemandTrainConfig
) -> dict[str, Any]:
    return {
        "objective": objective,
        "alpha": alpha,
        "learning_rate": p.learning_rate,
        "num_leaves": p.num_leaves,
        "min_child_samples": p.min_child_samples,
        "feature_fraction": p.feature_fraction,
        # no max_bag_rows cap here: demand's fit windows hold at most max_train_rows (200k by
        # default), and a cap from that bound would starve small tables (a bound, not a size)
        "bagging_fraction": p.bagging_fraction,
        "bagging_freq": 1,
        "lambda_l2": p.lambda_l2,
        "max_bin": p.max_bin,
        "seed": config.seed,
        "num_threads": config.num_threads,
        "verbosity": -1,
    }


def _datasets(
    names: list[str], X: list[Any], y: list[FloatArray], init: list[FloatArray] | None = None
) -> lgb.Dataset:
    cats = [n for n in CATEGORICAL if n in names]
    score = np.concatenate(init) if init is not None else None
    return lgb.Dataset(
        np.vstack(X),
        np.concatenate(y),
        init_score=score,
        feature_name=names,
        categorical_feature=cats,
        free_raw_data=False,
    )


def _early_stopped(
    params: dict[str, Any],
    names: list[str],
    X: tuple[Any, Any],
    y: tuple[FloatArray, FloatArray],
    config: DemandTrainConfig,
    init: tuple[FloatArray, FloatArray] | None = None,
) -> tuple[lgb.Booster, int]:
    """A booster on the fit rows, early-stopped on the validation rows; and its best round."""
    dtrain = _datasets(names, [X[0]], [y[0]], None if init is None else [init[0]])
    dvalid = lgb.Dataset(X[1], y[1], init_score=None if init is None else init[1], reference=dtrain)
    b = config.booster
    stop: list[Any] = [lgb.early_stopping(b.early_stopping_rounds, verbose=False)]
    booster = lgb.train(params, dtrain, b.n_estimators, valid_sets=[dvalid], callbacks=stop)
    return booster, max(booster.best_iteration or b.n_estimators, 10)


def fit_nb_size(y: FloatArray, mean: FloatArray) -> float:
    """Negative-binomial size (var = mu + mu^2 / size) by maximum likelihood on a grid;
    infinite (Poisson) when no finite size fits better."""
    mu = np.maximum(mean, 1e-9)
    grid = np.geomspace(0.3, 300.0, 41)
    ll = [stats.nbinom.logpmf(y, r, r / (r + mu)).sum() for r in grid]
    best = int(np.argmax(ll))
    return float(grid[best]) if ll[best] > stats.poisson.logpmf(y, mu).sum() else float("inf")


def point_size(y: FloatArray, mean: FloatArray, nb_size: float) -> float:
    """The size whose integer median is the count head's P50: the Poisson's (inf), whatever
    the fitted negative binomial (whose median sits lower on sparse counts). Day-ahead MASE
    0.743 vs 0.745 on a synthetic hourly dev city (seed 11), WAPE 0.860x vs 0.865x best
    baseline on the Changshu dev splits; picking per model by validation MAE chose the
    negative binomial on the hourly city and lost that. Takes the validation rows so every
    engine (``training.dask_demand_train``) calls it the same way."""
    return float(np.inf)


def conformal_quantile(score: FloatArray, coverage: float) -> float:
    """The finite-sample ``ceil((n + 1) coverage) / n`` quantile of the scores."""
    n = len(score)
    if n == 0:
        return 0.0
    level = min(1.0, np.ceil((n + 1) * coverage) / n)
    q = float(np.quantile(score, level, method="higher"))
    if np.isfinite(q):
        return q
    # more rows than 1 - coverage can never be covered (or all are always covered)
    finite = score[np.isfinite(score)]
    return float(finite.max() if q > 0 else finite.min()) if len(finite) else 0.0


def class_offsets(
    score: FloatArray, cls: npt.ArrayLike, n_classes: int, coverage: float
) -> list[float]:
    """Conformal offset per Mondrian class (pooled where a class has few rows)."""
    cls = np.asarray(cls)
    pooled = conformal_quantile(score, coverage)
    out = []
    for c in range(n_classes):
        sc = score[cls == c]
        out.append(conformal_quantile(sc, coverage) if len(sc) >= MIN_BUCKET_ROWS else pooled)
    return out


def pooled_group_offsets(
    score: FloatArray, cls: npt.ArrayLike, n_classes: int, per_group: int, coverage: float
) -> list[float]:
    """Offsets per Mondrian class (``per_group`` consecutive classes form a group, e.g. the
    horizon buckets of one origin group) such that each group's pooled coverage is
    ``coverage``: every class of a group is calibrated at one level, the lowest at which the
    group's rows are covered at ``coverage``.

    Why: at a zone-hour's few parcels most night rows' count equals their P50 of 0, which
    any window contains, so a night bucket covers 0.92-0.98 however narrow its window; with
    every bucket calibrated to 0.80 on its own a 00:00 plan covered 0.83-0.85 over its 24
    hours on the hourly dev cities (seeds 11, 12, 13). The busy hours then take the level
    that makes the whole day's coverage nominal."""
    cls = np.asarray(cls)
    out = class_offsets(score, cls, n_classes, coverage)

    def covered(level: float, rows: npt.NDArray[np.bool_]) -> tuple[float, list[float]]:
        offs = class_offsets(score, cls, n_classes, level)
        return float(np.mean(score[rows] <= np.asarray(offs)[cls[rows]])), offs

    for g in range(n_classes // per_group):
        members = range(g * per_group, (g + 1) * per_group)
        rows = (cls >= members.start) & (cls < members.stop)
        if rows.sum() < MIN_BUCKET_ROWS or covered(coverage, rows)[0] <= coverage + POOLED_SLACK:
            continue  # not over-covered beyond the finite-sample margin: classes keep theirs
        lo, hi = 0.0, coverage  # covered(lo) may be above coverage too: then lo is kept
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if covered(mid, rows)[0] >= coverage:
                hi = mid
            else:
                lo = mid
        offs = covered(hi, rows)[1]
        for c in members:
            out[c] = offs[c]
    return out


def mondrian_offsets(
    score: FloatArray, horizon: npt.ArrayLike, freq: str, coverage: float
) -> list[float]:
    """Conformal offset per horizon bucket (pooled where a bucket has few rows)."""
    return class_offsets(score, horizon_bucket(horizon, freq), n_buckets(freq), coverage)


def calibrate(
    model: FreqModel, panel: DemandPanel, q: DemandQueries, coverage: float, num_threads: int
) -> None:
    """Conformal offsets for the zones' window (``FreqModel.window_score``: continuous across
    rows, so they can narrow as well as widen), and a window for the bottom-up total."""
    X = model.featurizer.transform(panel, q)
    y = panel.values[q.zone, q.target]
    rows = pd.DataFrame(
        {
            "score": model.window_score(X, y, num_threads),
            "cls": model.offset_class(X, q.horizon),
            "m": model.predict(X, q.horizon, num_threads).mean,
            "y": y,
            "o": q.origin,
            "t": q.target,
        }
    )
    set_offsets(model, rows, coverage)


def set_offsets(model: FreqModel, rows: pd.DataFrame, coverage: float) -> None:
    """``calibrate``'s offsets from the calibration rows' window ``score``, Mondrian class
    ``cls``, expected volume ``m``, count ``y``, origin ``o`` and target ``t`` (either engine
    computes the rows): the zones' per class, the total's per horizon bucket on per-period sums."""
    score, cls = rows["score"].to_numpy(), rows["cls"].to_numpy()
    if model.origin_groups:  # hourly: see pooled_group_offsets
        model.conformal = pooled_group_offsets(
            score, cls, model.n_classes(), n_buckets(model.freq), coverage
        )
    else:
        model.conformal = class_offsets(score, cls, model.n_classes(), coverage)
    g = rows.groupby(["o", "t"])[["y", "m"]].sum()
    h = g.index.get_level_values("t") - g.index.get_level_values("o") + 1
    tscore = np.abs(np.sqrt(g["y"].to_numpy()) - np.sqrt(np.maximum(g["m"].to_numpy(), 0.0)))
    model.total_conformal = mondrian_offsets(tscore, h, model.freq, coverage)


def _subsample(q: DemandQueries, keep: int, rng: np.random.Generator) -> DemandQueries:
    if len(q) <= keep:
        return q
    mask = np.zeros(len(q), dtype=bool)
    mask[rng.choice(len(q), size=keep, replace=False)] = True
    return q.take(mask)


class HeadFitter(Protocol):
    """The primitives ``fit_heads_with`` orchestrates, over one engine's fit / validation rows.
    ``alpha`` None is the Poisson (mean) booster, else the quantile booster at ``alpha``."""

    def early_stopped(self, alpha: float | None) -> tuple[lgb.Booster, int]:
        """A booster on the fit rows at its best validation round, and the rounds to refit."""
        ...

    def refit(self, alpha: float | None, rounds: int) -> lgb.Booster:
        """A booster on fit + validation rows for ``rounds`` rounds."""
        ...

    def valid_expected(self, model: FreqModel) -> tuple[FloatArray, FloatArray]:
        """The validation rows' counts and ``model``'s expected volume for them."""
        ...

    def valid_mae(self, model: FreqModel) -> float:
        """``model``'s P50 mean absolute error on the validation rows."""
        ...


def fit_heads_with(
    fitter: HeadFitter, featurizer: DemandFeaturizer, config: DemandTrainConfig
) -> tuple[FreqModel, int, dict[str, float]]:
    """Early-stop each head's boosters on the validation rows, keep the head whose P50 has the
    lower validation MAE (the point every metric scores; the window is calibrated later
    anyway), refit its boosters (and the Poisson one) on fit + valid."""
    count = FreqModel(featurizer, {}, head="count", level_feature=config.level_feature)
    mean_fit, mean_best = fitter.early_stopped(None)
    count.boosters[MEAN] = mean_fit
    y_val, mean_val = fitter.valid_expected(count)
    count.nb_size = fit_nb_size(y_val, mean_val)
    count.point_size = point_size(y_val, mean_val, count.nb_size)
    losses, best = {}, {"count": mean_best}
    if config.head in ("count", "auto"):
        losses["count"] = fitter.valid_mae(count)
    quantile = FreqModel(
        featurizer, {MEAN: mean_fit}, head="quantile", level_feature=config.level_feature
    )
    if config.head in ("quantile", "auto") or config.window == "quantile":
        for alpha in QUANTILES:
            quantile.boosters[alpha], best[f"q{alpha:g}"] = fitter.early_stopped(alpha)
        if config.head != "count":
            losses["quantile"] = fitter.valid_mae(quantile)
    model = min((count, quantile), key=lambda m: losses.get(m.head, np.inf))
    model.window = config.window
    if featurizer.spec_.freq == "h":
        model.origin_groups = tuple(sorted(config.calib_origin_hours))
    model.boosters[MEAN] = fitter.refit(None, mean_best)
    model.nb_size, model.point_size = count.nb_size, count.point_size
    if model.head == "quantile" or model.window == "quantile":
        for alpha in QUANTILES:
            model.boosters[alpha] = fitter.refit(alpha, best[f"q{alpha:g}"])
    return model, best["count" if model.head == "count" else "q0.5"], losses


class _ArrayFitter:
    """``HeadFitter`` on in-memory matrices: the Poisson booster starts from the level offset,
    the quantile boosters learn the sqrt count over the level's sqrt."""

    def __init__(
        self,
        featurizer: DemandFeaturizer,
        names: list[str],
        X: tuple[Any, Any],
        y: tuple[FloatArray, FloatArray],
        config: DemandTrainConfig,
    ) -> None:
        base = FreqModel(featurizer, {}, head="count", level_feature=config.level_feature)
        self.names, self.X, self.y, self.config = names, X, y, config
        self.offset = (base.log_offset(X[0]), base.log_offset(X[1]))
        self.z = (np.sqrt(y[0]) - base.sqrt_base(X[0]), np.sqrt(y[1]) - base.sqrt_base(X[1]))
        self._full_z: lgb.Dataset | None = None

    def _params(self, alpha: float | None) -> dict[str, Any]:
        if alpha is None:
            return _lgb_params(self.config.booster, "poisson", 0.5, self.config)
        return _lgb_params(self.config.booster, "quantile", alpha, self.config)

    def early_stopped(self, alpha: float | None) -> tuple[lgb.Booster, int]:
        if alpha is None:
            return _early_stopped(
                self._params(None), self.names, self.X, self.y, self.config, self.offset
            )
        return _early_stopped(self._params(alpha), self.names, self.X, self.z, self.config)

    def refit(self, alpha: float | None, rounds: int) -> lgb.Booster:
        if alpha is None:
            both = _datasets(self.names, list(self.X), list(self.y), list(self.offset))
            return lgb.train(self._params(None), both, rounds)
        if self._full_z is None:  # one Dataset for every quantile, binned once
            self._full_z = _datasets(self.names, list(self.X), list(self.z))
        return lgb.train(self._params(alpha), self._full_z, rounds)

    def valid_expected(self, model: FreqModel) -> tuple[FloatArray, FloatArray]:
        return self.y[1], model.expected(self.X[1], self.config.num_threads)

    def valid_mae(self, model: FreqModel) -> float:
        p50 = model.raw(self.X[1], self.config.num_threads)[:, 1]
        return float(np.mean(np.abs(p50 - self.y[1])))


def fit_heads(
    featurizer: DemandFeaturizer,
    names: list[str],
    X: tuple[Any, Any],
    y: tuple[FloatArray, FloatArray],
    config: DemandTrainConfig,
) -> tuple[FreqModel, int, dict[str, float]]:
    """``fit_heads_with`` on the fit / validation matrices ``X`` and counts ``y``."""
    return fit_heads_with(_ArrayFitter(featurizer, names, X, y, config), featurizer, config)


@dataclass(frozen=True)
class DemandWindows:
    """What ``train_demand`` fits on: the split, the fitted featurizer, the panel of every
    period before ``test_from``, and the fit / validation matrices (tuning reuses them)."""

    split: DemandSplit
    featurizer: DemandFeaturizer
    panel: DemandPanel
    names: list[str]
    X: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
    y: tuple[FloatArray, FloatArray]
    q_cal: DemandQueries


def checked_names(freq: str, spec: DemandFeatureSpec, config: DemandTrainConfig) -> list[str]:
    """The spec's feature names, once the spec, head, window and level feature are checked to
    fit together (both engines check before any work)."""
    if spec.freq != freq:
        raise ValueError(f"spec: built for freq {spec.freq!r}, training asked for {freq!r}")
    if config.head not in HEADS:
        raise ValueError(f"head: must be one of {list(HEADS)}, got {config.head!r}")
    if config.window not in WINDOWS:
        raise ValueError(f"window: must be one of {list(WINDOWS)}, got {config.window!r}")
    names = spec.feature_names()
    if config.level_feature is not None and config.level_feature not in names:
        raise ValueError(f"level_feature {config.level_feature!r}: not one of the spec's features")
    return names


def demand_windows(
    table: pd.DataFrame,
    freq: str,
    test_from: str | pd.Timestamp,
    spec: DemandFeatureSpec,
    config: DemandTrainConfig,
) -> DemandWindows:
    """The time split, zone statistics fitted before ``test_from``, and the feature matrices."""
    names = checked_names(freq, spec, config)
    rng = np.random.default_rng(config.seed)
    split = make_split(table, test_from, config)
    history = table[pd.to_datetime(table[s.TS]) < split.test_from]
    featurizer = DemandFeaturizer(spec).fit(history)
    panel = DemandPanel.from_table(history, freq, end=split.test_from, covariates=spec.covariates)
    horizon = None if freq == "h" else config.daily_horizon
    hours = config.origin_hours
    q_fit = _subsample(
        window_queries(panel, split.fit_from, split.valid_from, hours, horizon),
        config.max_train_rows,
        rng,
    )
    q_val = _subsample(
        window_queries(panel, split.valid_from, split.calib_from, hours, horizon),
        config.max_train_rows // 3,
        rng,
    )
    q_cal = window_queries(
        panel, split.calib_from, split.test_from, config.calib_origin_hours, horizon
    )
    X = (featurizer.transform(panel, q_fit), featurizer.transform(panel, q_val))
    y = (panel.values[q_fit.zone, q_fit.target], panel.values[q_val.zone, q_val.target])
    return DemandWindows(split, featurizer, panel, names, X, y, q_cal)


def train_demand(
    table: pd.DataFrame,
    freq: str,
    test_from: str | pd.Timestamp,
    spec: DemandFeatureSpec | None = None,
    config: DemandTrainConfig | None = None,
) -> DemandTrainResult:
    """Fit zone statistics, boosters and calibration on the periods before ``test_from``."""
    freq = check_freq(freq)
    config = config or DemandTrainConfig.for_freq(freq)
    spec = spec or spec_for(freq)
    start = time.perf_counter()
    w = demand_windows(table, freq, test_from, spec, config)
    model, best, losses = fit_heads(w.featurizer, w.names, w.X, w.y, config)
    calibrate(model, w.panel, w.q_cal, config.coverage, config.num_threads)
    window = (str(w.panel.start), str(w.split.test_from))
    bundle = DemandBundle({freq: model}, training_window=window, num_threads=1)
    return DemandTrainResult(
        bundle=bundle,
        split=w.split,
        best_iteration=best,
        head=model.head,
        validation_mae=losses,
        fit_seconds=time.perf_counter() - start,
        n_rows={"fit": len(w.y[0]), "valid": len(w.y[1]), "calibration": len(w.q_cal)},
        calibration={"zones": model.conformal, "total": model.total_conformal},
    )
