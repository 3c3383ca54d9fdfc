"""The demand model bundle: featurizer + boosters + conformal offsets, per frequency.

Training builds it, serving loads it; the prediction rule lives here so neither re-implements
it (and serving never imports ``training/``). Two heads give the uncalibrated quantiles:

* ``quantile``: three LightGBM quantile boosters on sqrt(volume). sqrt is monotone, so their
  quantiles are volume quantiles after squaring.
* ``count``: the Poisson booster's expected volume and a negative-binomial spread fitted on the
  validation window. Sparse hourly counts are mostly 0 or 1; a pinball loss only sees the sign
  of each residual there, the Poisson likelihood uses the counts themselves. Its P50 is the
  integer median of the Poisson at the expected volume (``FreqModel.point_size``; bundles from
  before it take the negative binomial's median, which sits lower on sparse counts).

Both heads can be anchored on a level feature (``FreqModel.level_feature``): the boosters then
learn corrections to a zone's recent level, so a forecast can follow a level no tree has seen.
Training keeps the head whose P50 has the lower MAE on the validation window; the P50 is the
point. The P10-P90 window (``FreqModel.window``) comes from either head and is calibrated by
conformal prediction, one offset per horizon bucket (Mondrian), on a score that is continuous
across rows even though the counts are not:

* ``count``: the negative-binomial quantiles at levels 0.1 - d and 0.9 + d. The score of a row
  is the smallest level shift d whose window covers its count (from the predictive CDF at the
  count), so d is fitted in probability space. Offsets on the count scale could not narrow a
  window whose P10 is 0: every zero count ties there (a PIT-style score for discrete
  predictive distributions; ties now fall only between rows with the same expected volume).
* ``quantile``: the quantile boosters' P10/P90 on the sqrt scale, shifted by d (conformalised
  quantile regression) before the square and the floor at zero, so zeros do not tie either.

Either way d may be negative (the window narrows), and the window always contains the P50.
The city total is bottom-up: the sum of the zones' expected volumes (expectations add up,
medians do not), with its own conformal window calibrated on the totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from doorstep.compat import FeatureSetMismatch
from features import schema as s
from features.demand_features import (
    FEATURE_SET,
    FEATURE_SETS,
    DemandFeaturizer,
    DemandPanel,
    DemandQueries,
    make_queries,
    period,
)

FloatArray = npt.NDArray[np.float64]
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
MEAN = "mean"
P10, P50, P90, HORIZON = "p10", "p50", "p90", "horizon"
LEVEL_FLOOR = 0.05  # parcels per period: the level of a zone with no history yet
QUIET_EVIDENCE = float(np.log(1e6))  # a zero run this unlikely means the zone has closed
MAX_STALE = pd.Timedelta(days=1)  # history may end at most this long before the origin
# Horizon buckets (periods ahead, 1 = the origin's own period) for Mondrian calibration.
HORIZON_EDGES: dict[str, tuple[int, ...]] = {"h": (2, 6, 12), "d": (1, 3)}
WINDOWS: tuple[str, ...] = ("count", "quantile")
MAX_LEVEL = 1.0 - 1e-6  # the highest quantile level a count window reaches (1.0 is infinite)


def horizon_bucket(horizon: npt.ArrayLike, freq: str) -> npt.NDArray[np.int64]:
    """Hourly: 0 = 1-2 periods ahead, 1 = 3-6, 2 = 7-12, 3 = 13+; daily: 0 = 1, 1 = 2-3, 2 = 4+."""
    return np.searchsorted(np.asarray(HORIZON_EDGES[freq]), np.asarray(horizon), side="left")


def n_buckets(freq: str) -> int:
    return len(HORIZON_EDGES[freq]) + 1


@dataclass(frozen=True)
class DemandPrediction:
    """Per query row: calibrated quantiles and the expected volume (parcels per period)."""

    p10: FloatArray
    p50: FloatArray
    p90: FloatArray
    mean: FloatArray


@dataclass
class FreqModel:
    """Everything for one frequency: features, boosters, head, calibration."""

    featurizer: DemandFeaturizer
    boosters: dict[float | str, lgb.Booster]
    head: str = "quantile"  # or "count"
    # a feature holding each row's expected level (e.g. "level_profile_28"): boosters then learn
    # corrections to it (log scale for the Poisson booster, sqrt scale for the quantile ones)
    # and forecasts can follow a level the trees never saw; None: boosters learn levels too
    level_feature: str | None = None
    nb_size: float = np.inf  # negative-binomial size of the count head (inf: Poisson)
    # the size whose integer median is the count head's P50 (training sets inf: the Poisson
    # median); None: nb_size, the rule of bundles from before it
    point_size: float | None = None
    # where P10/P90 come from: "count" or "quantile" (see the module docstring); None: a bundle
    # from before the window was chosen apart from the head (the head's window with sqrt-scale
    # offsets on its floored quantiles), kept so a registered champion predicts as it did
    window: str | None = None
    conformal: list[float] = field(default_factory=list)  # per offset_class (see window)
    # hourly: the calibration's origin hours; offsets are then per (the latest of these at or
    # before the origin's hour, horizon bucket): a 00:00 plan's first hours are the quiet
    # night, a 12:00 re-plan's the busy afternoon, so one offset per horizon cannot fit both
    origin_groups: tuple[int, ...] = ()
    total_conformal: list[float] = field(default_factory=list)  # per bucket, sqrt(total) scale

    @property
    def freq(self) -> str:
        return str(self.featurizer.spec_.freq)

    def log_offset(self, X: npt.NDArray[np.float32]) -> FloatArray:
        """The Poisson booster's fixed offset: log of the city's volume so far today over its
        usual volume by this hour (0 at midnight). A promotion or a post-holiday rebound
        shows in the morning far outside anything the trees saw; as an offset it scales the
        rest of the day directly, and the trees only learn corrections to it."""
        names = self.featurizer.spec_.feature_names()
        out = np.log(self.level(X)) if self.level_feature else np.zeros(len(X))
        if "total_today_ratio" not in names:
            return out
        r = X[:, names.index("total_today_ratio")].astype(np.float64)
        return out + np.where(np.isfinite(r) & (r > 0), np.log(np.where(r > 0, r, 1.0)), 0.0)

    def level(self, X: npt.NDArray[np.float32]) -> FloatArray:
        """The level feature per row, floored (a new zone has none yet)."""
        names = self.featurizer.spec_.feature_names()
        v = X[:, names.index(str(self.level_feature))].astype(np.float64)
        return np.maximum(np.nan_to_num(v, nan=LEVEL_FLOOR), LEVEL_FLOOR)

    def sqrt_base(self, X: npt.NDArray[np.float32]) -> FloatArray:
        """What the quantile boosters' sqrt-scale output is added to."""
        return np.sqrt(self.level(X)) if self.level_feature else np.zeros(len(X))

    def expected(self, X: npt.NDArray[np.float32], num_threads: int = 1) -> FloatArray:
        raw = self.boosters[MEAN].predict(X, num_threads=num_threads, raw_score=True)
        return np.exp(np.asarray(raw, dtype=np.float64) + self.log_offset(X))

    def raw(self, X: npt.NDArray[np.float32], num_threads: int = 1) -> FloatArray:
        """The head's uncalibrated P10, P50, P90 in parcels, never crossing, zero for a quiet
        zone: shape (n, 3). Training compares heads on its P50; bundles with ``window=None``
        are calibrated on exactly this."""
        if self.head == "count":
            mean = self.expected(X, num_threads)
            out = nb_quantiles(mean, self.nb_size)
            out[:, 1] = self.median_count(mean)
        else:
            out = np.maximum(self.quantile_roots(X, num_threads), 0.0) ** 2
        out[:, 0] = np.minimum(out[:, 0], out[:, 1])
        out[:, 2] = np.maximum(out[:, 2], out[:, 1])
        out[self.quiet(X)] = 0.0
        return out

    def quiet(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
        """Rows of zones gone quiet: a run of zeros a Poisson zone at its training-window rate
        would produce with probability below exp(-QUIET_EVIDENCE). The trees never saw a zone
        close, so this rule, not the boosters, forecasts zero for it (until a parcel comes)."""
        names = self.featurizer.spec_.feature_names()
        if "zero_run" not in names or "zone_mean" not in names:
            return np.zeros(len(X), dtype=bool)
        evidence = X[:, names.index("zero_run")] * X[:, names.index("zone_mean")]
        return np.nan_to_num(evidence.astype(np.float64)) >= QUIET_EVIDENCE

    def distribution(self, mean: FloatArray) -> Any:
        """The count head's predictive distribution per row (scipy, frozen, vectorised)."""
        return count_distribution(mean, self.nb_size)

    def median_count(self, mean: FloatArray) -> FloatArray:
        """The count head's P50: the integer median at ``point_size``."""
        size = self.nb_size if self.point_size is None else self.point_size
        return np.asarray(count_distribution(mean, size).ppf(0.5), dtype=np.float64)

    def quantile_roots(self, X: npt.NDArray[np.float32], num_threads: int = 1) -> FloatArray:
        """The quantile boosters' P10, P50, P90 on the sqrt scale, sorted, not floored: (n, 3)."""
        preds = [self.boosters[q].predict(X, num_threads=num_threads) for q in QUANTILES]
        return np.sort(np.column_stack(preds) + self.sqrt_base(X)[:, None], axis=1)

    def point(
        self, X: npt.NDArray[np.float32], mean: FloatArray, num_threads: int = 1
    ) -> FloatArray:
        """The P50 of the head (before the quiet-zone rule): the count head's integer median,
        or the squared, floored median quantile booster."""
        if self.head == "count":
            return self.median_count(mean)
        return np.maximum(self.quantile_roots(X, num_threads)[:, 1], 0.0) ** 2

    def bounds(
        self, X: npt.NDArray[np.float32], mean: FloatArray, offset: FloatArray, num_threads: int = 1
    ) -> tuple[FloatArray, FloatArray]:
        """P10 and P90 of the window shifted by ``offset`` per row (before the clamp to P50)."""
        if self.window == "count":
            dist = self.distribution(mean)
            lo = np.clip(QUANTILES[0] - offset, 0.0, 1.0)
            hi = np.clip(QUANTILES[2] + offset, 0.0, MAX_LEVEL)
            return np.maximum(dist.ppf(lo), 0.0), np.asarray(dist.ppf(hi), dtype=np.float64)
        roots = self.quantile_roots(X, num_threads)
        return np.maximum(roots[:, 0] - offset, 0.0) ** 2, np.maximum(
            roots[:, 2] + offset, 0.0
        ) ** 2

    def window_score(
        self, X: npt.NDArray[np.float32], y: FloatArray, num_threads: int = 1
    ) -> FloatArray:
        """Per row, the smallest offset whose window (clamped to contain the P50) covers the
        count ``y``; the conformal offset is a quantile of these. A side the P50 already
        covers scores -inf; a quiet zone's row (window fixed at 0) scores -inf if ``y`` is 0
        and +inf otherwise."""
        if self.window not in WINDOWS:
            raise ValueError(f"window: must be one of {list(WINDOWS)}, got {self.window!r}")
        y = np.asarray(y, dtype=np.float64)
        mean = self.expected(X, num_threads)
        p50 = self.point(X, mean, num_threads)
        if self.window == "count":
            dist = self.distribution(mean)
            lower = QUANTILES[0] - dist.cdf(y)
            upper = dist.cdf(y - 1) - QUANTILES[2]
        else:
            roots = self.quantile_roots(X, num_threads)
            lower, upper = roots[:, 0] - np.sqrt(y), np.sqrt(y) - roots[:, 2]
        score = np.maximum(np.where(y >= p50, -np.inf, lower), np.where(y <= p50, -np.inf, upper))
        quiet = self.quiet(X)
        score[quiet] = np.where(y[quiet] > 0, np.inf, -np.inf)
        return score

    def offset_class(
        self, X: npt.NDArray[np.float32], horizon: npt.ArrayLike
    ) -> npt.NDArray[np.int64]:
        """Each row's Mondrian class: its horizon bucket, within its origin group if any."""
        bucket = horizon_bucket(horizon, self.freq)
        if not self.origin_groups:
            return bucket
        hour = X[:, self.featurizer.spec_.feature_names().index("origin_hour")]
        group = np.searchsorted(np.asarray(self.origin_groups), hour, side="right") - 1
        return np.maximum(group, 0) * n_buckets(self.freq) + bucket

    def n_classes(self) -> int:
        return max(len(self.origin_groups), 1) * n_buckets(self.freq)

    def predict(
        self, X: npt.NDArray[np.float32], horizon: npt.ArrayLike, num_threads: int = 1
    ) -> DemandPrediction:
        quiet = self.quiet(X)
        mean = np.where(quiet, 0.0, self.expected(X, num_threads))
        if self.window is None:
            return self._predict_sqrt_offsets(X, horizon, mean, num_threads)
        offset = (
            np.asarray(self.conformal)[self.offset_class(X, horizon)]
            if self.conformal
            else np.zeros(len(X))
        )
        p50 = np.where(quiet, 0.0, self.point(X, mean, num_threads))
        p10, p90 = self.bounds(X, mean, offset, num_threads)
        p10, p90 = np.where(quiet, 0.0, p10), np.where(quiet, 0.0, p90)
        return DemandPrediction(np.minimum(p10, p50), p50, np.maximum(p90, p50), mean)

    def _predict_sqrt_offsets(
        self, X: npt.NDArray[np.float32], horizon: npt.ArrayLike, mean: FloatArray, num_threads: int
    ) -> DemandPrediction:
        """The rule of bundles with ``window=None``: sqrt-scale offsets on ``raw``."""
        raw = self.raw(X, num_threads)
        widen = (
            np.asarray(self.conformal)[horizon_bucket(horizon, self.freq)]
            if self.conformal
            else 0.0
        )
        p10 = np.maximum(np.sqrt(raw[:, 0]) - widen, 0.0) ** 2
        p90 = np.maximum(np.sqrt(raw[:, 2]) + widen, 0.0) ** 2
        p50 = raw[:, 1]
        return DemandPrediction(np.minimum(p10, p50), p50, np.maximum(p90, p50), mean)


def count_distribution(mean: FloatArray, size: float) -> Any:
    """Negative binomial with ``mean`` and ``size`` per row (Poisson if infinite); frozen scipy."""
    mu = np.maximum(np.asarray(mean, dtype=np.float64), 1e-9)
    if not np.isfinite(size):
        return stats.poisson(mu)
    return stats.nbinom(size, size / (size + mu))


def nb_quantiles(mean: FloatArray, size: float) -> FloatArray:
    """P10, P50, P90 of a negative binomial with ``mean`` and ``size`` (Poisson if infinite).

    P50 is the integer median (what minimises absolute error). P10 and P90 are interpolated
    within the integer step the quantile falls in, so windows vary continuously across rows and
    conformal calibration can reach its nominal coverage on counts.
    """
    mu = np.maximum(np.asarray(mean, dtype=np.float64), 1e-9)
    dist = count_distribution(mu, size)
    out = np.empty((len(mu), 3))
    for i, q in enumerate(QUANTILES):
        k = dist.ppf(q)
        if q == 0.5:
            out[:, i] = k
            continue
        below = dist.cdf(k - 1)
        frac = (q - below) / np.maximum(dist.pmf(k), 1e-12)
        out[:, i] = np.maximum(k - 1 + np.clip(frac, 0.0, 1.0), 0.0)
    return out


def total_window(mean_total: FloatArray, offset: FloatArray) -> tuple[FloatArray, FloatArray]:
    """P10/P90 of a total around its expected value on the sqrt scale."""
    root = np.sqrt(np.maximum(mean_total, 0.0))
    return np.maximum(root - offset, 0.0) ** 2, (root + offset) ** 2


@dataclass
class DemandBundle:
    """The demand forecaster for one or both frequencies; picklable, MLflow-loggable."""

    models: dict[str, FreqModel]
    feature_set: str = FEATURE_SET
    training_window: tuple[str, str] = ("", "")
    num_threads: int = 1

    def model(self, freq: str | None) -> FreqModel:
        if freq is None:
            if len(self.models) != 1:
                raise ValueError(f"freq: the bundle holds {sorted(self.models)}; say which")
            return next(iter(self.models.values()))
        if freq not in self.models:
            raise ValueError(f"freq: no {freq!r} model in this bundle (has {sorted(self.models)})")
        return self.models[freq]

    def predict_queries(self, panel: DemandPanel, queries: DemandQueries) -> DemandPrediction:
        m = self.model(panel.freq)
        return m.predict(m.featurizer.transform(panel, queries), queries.horizon, self.num_threads)

    def forecast(
        self,
        history: pd.DataFrame,
        origin: str | pd.Timestamp,
        horizon_periods: int | None = None,
        freq: str | None = None,
    ) -> pd.DataFrame:
        """Zone forecasts for the ``horizon_periods`` periods from ``origin`` (None: the rest
        of the origin's day) from the history's periods before ``origin``.

        Columns: zone_id, ts, horizon, p10, p50, p90, mean. Every zone with a period before the
        origin is forecast. The history is taken as complete up to the origin: a period it
        lacks counts as zero (a zone gone quiet), so a history that stops more than a day
        before the origin is refused rather than read as a day of zeros.
        """
        m = self.model(freq)
        origin = pd.Timestamp(origin)
        last = pd.to_datetime(history.loc[history[s.VOLUME].notna(), s.TS]).max()
        if pd.isna(last) or last + period(m.freq) < origin - MAX_STALE:
            raise ValueError(
                f"history: ends at {last}, more than {MAX_STALE} before the origin {origin}; "
                "pass the volume up to the origin"
            )
        spec = m.featurizer.spec_
        panel = DemandPanel.from_table(history, m.freq, end=origin, covariates=spec.covariates)
        queries = make_queries(panel, [origin], horizon_periods)
        pred = self.predict_queries(panel, queries)
        return pd.DataFrame(
            {
                s.ZONE_ID: panel.zones[queries.zone].astype("string"),
                s.TS: panel.ts_of(queries.target),
                HORIZON: queries.horizon,
                P10: pred.p10,
                P50: pred.p50,
                P90: pred.p90,
                MEAN: pred.mean,
            }
        )

    def total(self, zone_forecast: pd.DataFrame, freq: str | None = None) -> pd.DataFrame:
        """The bottom-up city (depot) total per period: ``mean`` is the sum of the zones'
        expected volumes; P10/P90 come from the total's own calibration."""
        m = self.model(freq)
        g = zone_forecast.groupby(s.TS, sort=True).agg(mean=(MEAN, "sum"), horizon=(HORIZON, "min"))
        offset = (
            np.asarray(m.total_conformal)[horizon_bucket(g[HORIZON].to_numpy(), m.freq)]
            if m.total_conformal
            else np.zeros(len(g))
        )
        mean = g[MEAN].to_numpy(float)
        p10, p90 = total_window(mean, offset)
        p10, p90 = np.minimum(p10, mean), np.maximum(p90, mean)
        return pd.DataFrame({s.TS: g.index, P10: p10, P50: mean, P90: p90, MEAN: mean}).reset_index(
            drop=True
        )


def check_feature_set(bundle: DemandBundle) -> None:
    """Serving refuses a bundle whose feature set or feature names it does not know."""
    if bundle.feature_set not in FEATURE_SETS:
        raise FeatureSetMismatch(
            f"feature_set: model uses {bundle.feature_set!r}, this code computes "
            f"{sorted(FEATURE_SETS)}"
        )
    for freq, m in bundle.models.items():
        if m.boosters[MEAN].feature_name() != m.featurizer.spec_.feature_names():
            raise FeatureSetMismatch(
                f"feature_set: the {freq} model's features differ from its spec"
            )
