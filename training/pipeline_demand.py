"""``doorstep train demand``: train, score on the most recent hold-out days, log, register, gate.

One ``DemandBundle`` holds the hourly model (``h``: the rest of today) and, when a daily table
is given, the daily one (``d``: the next 7 days). Each is trained on everything before the
hold-out window (with its own validation and calibration windows, ``train_demand``), then the
hold-out days are scored with the benchmark protocols (every day a rolling origin that sees the
volume before it) beside the baselines. The champion is scored on exactly the same rows: the
alias moves only if the new bundle has the lower MAE in every segment (``h.day_ahead``,
``h.intraday``, ``d.day_ahead``, ``d.week_ahead``; on the same rows WAPE is MAE times a
constant, so it orders versions identically) and its coverage is within tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml

from doorstep.config import from_dict, to_dict, use_experiment
from doorstep.demand_bundle import DemandBundle
from doorstep.demand_pyfunc import (
    BUNDLE_ARTIFACT,
    BUNDLE_FILE,
    DemandPyfunc,
    default_freq,
    load_demand_bundle,
    predict_history,
    signature,
)
from features import schema as s
from features.demand_features import DemandFeatureSpec, DemandPanel, spec_for
from training import demand_plots
from training.demand import DemandTrainConfig, DemandTrainResult, train_demand
from training.demand_backtest import (
    Fold,
    actuals,
    protocol_queries,
    protocols,
    score_fold,
    scored_zones,
)
from training.engine import EngineConfig
from training.registry import GateRule, PromotionDecision, promote_if_better
from training.tracking import (
    TAG_DATA_SOURCE,
    TAG_FEATURE_SET,
    TAG_MODEL_KIND,
    TAG_TEST_FROM,
    TAG_TRAINING_WINDOW,
    LoggedModel,
    _finite,
    _jsonable,
    flatten,
    log_bundle_model,
)

EXPERIMENT = "doorstep-demand"
REGISTERED_NAME = "doorstep-demand"
GATE_METRIC = "mae"
EXAMPLE_ZONES, EXAMPLE_DAYS = 2, 14
FREQ_KEYS = {"h": "hourly", "d": "daily"}
Scores = dict[str, dict[str, Any]]  # segment "h.day_ahead" -> metric -> value


@dataclass(frozen=True)
class DemandConfig:
    """Both frequencies' training settings and the holiday calendar; ``load_demand_config``
    fills what a YAML file leaves out from ``DemandTrainConfig.for_freq`` (each frequency has
    its own defaults)."""

    hourly: DemandTrainConfig = field(default_factory=lambda: DemandTrainConfig.for_freq("h"))
    daily: DemandTrainConfig = field(default_factory=lambda: DemandTrainConfig.for_freq("d"))
    holidays_country: str | None = None
    # The gate's P10-P90 coverage tolerance on the hold-out. Wider than the benchmark's 3
    # points on purpose: one hold-out week moves daily coverage by several points (every zone
    # shares a day's shocks), and discrete hourly counts over-cover (a zone whose P10 is 0
    # covers every zero; on the simulated city hourly coverage is 0.85-0.89 at nominal 0.80).
    # The 0.80 +- 0.03 target is checked by `doorstep benchmark demand` over a month.
    gate_coverage_tolerance: float = 0.10

    def for_freq(self, freq: str) -> DemandTrainConfig:
        return self.hourly if freq == "h" else self.daily


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_demand_config(path: str | Path | None) -> DemandConfig:
    """A ``DemandConfig`` from YAML (``hourly:``, ``daily:``, ``holidays_country:``); keys a
    section omits keep that frequency's defaults; an unknown key is refused by name."""
    if path is None:
        return DemandConfig()
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    known = {"hourly", "daily", "holidays_country", "gate_coverage_tolerance"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config key(s) {unknown}; known: {sorted(known)}")
    sections: dict[str, Any] = {}
    for freq, key in FREQ_KEYS.items():
        section = raw.get(key) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{path}: {key}: expected a mapping")
        base = to_dict(DemandTrainConfig.for_freq(freq))
        sections[key] = from_dict(DemandTrainConfig, _merge(base, section))
    top = {k: raw[k] for k in ("holidays_country", "gate_coverage_tolerance") if k in raw}
    return DemandConfig(**sections, **top)


@dataclass(frozen=True)
class TrainDemandOutcome:
    run_id: str
    model_uri: str
    version: str | None
    decision: PromotionDecision | None
    holdout_from: str
    metrics: Scores  # segment -> {"n_points", "model", "baselines", "by_horizon", "total"}


@dataclass(frozen=True)
class Holdout:
    """The hold-out days and the tables to score them on (each ends with the last day)."""

    start: pd.Timestamp
    end: pd.Timestamp  # exclusive
    tables: dict[str, pd.DataFrame]

    @property
    def fold(self) -> Fold:
        return Fold(self.start, self.start, self.end)


def make_holdout(tables: dict[str, pd.DataFrame], holdout_days: int) -> Holdout:
    """The last ``holdout_days`` whole days every table has."""
    if not tables:
        raise ValueError("hourly, daily: give at least one demand table")
    if holdout_days < 1:
        raise ValueError(f"holdout_days: must be >= 1, got {holdout_days}")
    last = min(pd.to_datetime(t[s.TS]).max().normalize() for t in tables.values())
    end = last + pd.Timedelta(days=1)
    start = end - pd.Timedelta(days=holdout_days)
    cut = {f: t[pd.to_datetime(t[s.TS]) < end] for f, t in tables.items()}
    return Holdout(start, end, cut)


def score_holdout(
    bundle: DemandBundle, holdout: Holdout
) -> tuple[Scores, dict[str, demand_plots.ScoredSeries]]:
    """Every protocol of every frequency the bundle and the hold-out share, and the scored
    rows of each (for the plots). Segments are named ``{freq}.{protocol}``."""
    scores: Scores = {}
    series: dict[str, demand_plots.ScoredSeries] = {}
    for freq, table in holdout.tables.items():
        if freq not in bundle.models:
            continue
        covariates = bundle.models[freq].featurizer.spec_.covariates
        fold = score_fold(bundle, table, freq, holdout.fold, covariates)
        scores |= {f"{freq}.{name}": p for name, p in fold.protocols.items()}
        panel = DemandPanel.from_table(table, freq, end=holdout.end, covariates=covariates)
        zones = scored_zones(panel, holdout.start)
        for protocol in protocols(freq, holdout.fold):
            q = protocol_queries(panel, protocol, zones)
            series[f"{freq}.{protocol.name}"] = demand_plots.ScoredSeries(
                zone=panel.zones[q.zone].to_numpy(dtype=object),
                ts=panel.ts_of(q.target),
                horizon=q.horizon,
                y=actuals(panel, q),
                pred=bundle.predict_queries(panel, q),
            )
    return scores, series


def gate_scores(scores: Scores) -> dict[str, dict[str, float | None]]:
    """What the gate compares: each segment's model metrics."""
    return {seg: dict(p["model"]) for seg, p in scores.items()}


def champion_scores(model_uri: str, holdout: Holdout) -> dict[str, dict[str, float | None]]:
    """The champion on the same hold-out rows; a champion this code cannot load (another
    feature set) scores nothing, so any challenger that passes the coverage check wins."""
    try:
        bundle = load_demand_bundle(model_uri)
    except (ValueError, TypeError):
        return {}
    return gate_scores(score_holdout(bundle, holdout)[0])


def run_metrics(scores: Scores) -> dict[str, float]:
    """``{seg}.model.*``, ``{seg}.baseline.{name}.*``, ``{seg}.by_horizon.{h}.*``,
    ``{seg}.total.*`` and ``{seg}.model.wape_ratio_to_best_baseline``."""
    out: dict[str, float] = {}
    for seg, p in scores.items():
        out |= {f"{seg}.model.{k}": v for k, v in _finite(p["model"]).items()}
        out[f"{seg}.n_points"] = float(p["n_points"])
        for name, m in p["baselines"].items():
            out |= {f"{seg}.baseline.{name}.{k}": v for k, v in _finite(m).items()}
        for h, m in p["by_horizon"].items():
            out |= {f"{seg}.by_horizon.{h}.{k}": v for k, v in _finite(m).items()}
        out |= {f"{seg}.total.{k}": v for k, v in _finite(p["total"]).items()}
        wapes = [m["wape"] for m in p["baselines"].values() if m["wape"] is not None]
        if p["model"]["wape"] is not None and wapes and min(wapes) > 0:
            out[f"{seg}.model.wape_ratio_to_best_baseline"] = p["model"]["wape"] / min(wapes)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def input_example(bundle: DemandBundle, holdout: Holdout) -> pd.DataFrame:
    """The busiest zones' last days before the hold-out, in the pyfunc's request form."""
    freq = default_freq(bundle)
    table = holdout.tables[freq]
    ts = pd.to_datetime(table[s.TS])
    recent = table[(ts < holdout.start) & (ts >= holdout.start - pd.Timedelta(days=EXAMPLE_DAYS))]
    busiest = recent.groupby(s.ZONE_ID)[s.VOLUME].sum().nlargest(EXAMPLE_ZONES).index
    example = recent[recent[s.ZONE_ID].isin(busiest)].sort_values([s.ZONE_ID, s.TS])
    return pd.DataFrame(
        {
            s.ZONE_ID: example[s.ZONE_ID].astype(str).to_numpy(dtype=object),
            s.TS: pd.to_datetime(example[s.TS])
            .dt.strftime("%Y-%m-%dT%H:%M:%S")
            .to_numpy(dtype=object),
            s.VOLUME: example[s.VOLUME].to_numpy(float),
        }
    )


DemandTrainer = Callable[
    [pd.DataFrame, str, pd.Timestamp, DemandFeatureSpec, DemandTrainConfig], DemandTrainResult
]
"""The training step: ``train_demand``'s signature (``table, freq, test_from, spec, config``)."""


def train_bundle(
    holdout: Holdout, config: DemandConfig, trainer: DemandTrainer = train_demand
) -> tuple[DemandBundle, dict[str, DemandTrainResult]]:
    """One model per frequency, trained before the hold-out by ``trainer``, in one bundle."""
    results = {}
    for freq, table in holdout.tables.items():
        before = table[pd.to_datetime(table[s.TS]) < holdout.start]
        spec = spec_for(freq, config.holidays_country)
        try:
            results[freq] = trainer(before, freq, holdout.start, spec, config.for_freq(freq))
        except ValueError as exc:
            raise ValueError(f"{FREQ_KEYS[freq]}: {exc}") from exc
    first = min(pd.to_datetime(t[s.TS]).min() for t in holdout.tables.values())
    bundle = DemandBundle(
        {f: r.bundle.models[f] for f, r in results.items()},
        training_window=(str(first), str(holdout.start)),
    )
    return bundle, results


@contextmanager
def engine_trainer(engine: EngineConfig, client: Any = None) -> Iterator[DemandTrainer]:
    """The training step for ``engine``: ``train_demand`` here, or on Dask (on ``client`` if
    given, else on ``engine``'s scheduler or a local cluster, closed on exit)."""
    if engine.engine == "pandas":
        yield train_demand
        return
    from training.dask_demand_pipeline import dask_trainer  # Dask is optional

    with dask_trainer(engine, client) as trainer:
        yield trainer


def run_params(config: DemandConfig, results: dict[str, DemandTrainResult]) -> dict[str, Any]:
    params = flatten("", {"holidays_country": str(config.holidays_country)}, {})
    for freq, r in results.items():
        key = FREQ_KEYS[freq]
        params |= flatten(key, to_dict(config.for_freq(freq)), {})
        params |= {
            f"{key}.head_chosen": r.head,
            f"{key}.best_iteration": r.best_iteration,
            f"{key}.split.valid_from": str(r.split.valid_from.date()),
            f"{key}.split.calibration_from": str(r.split.calib_from.date()),
        }
        params |= {f"{key}.rows.{k}": n for k, n in r.n_rows.items()}
        params |= {
            f"{key}.conformal.{k}": ",".join(f"{o:.3f}" for o in v)
            for k, v in r.calibration.items()
        }
    return params


def log_demand_model(
    bundle: DemandBundle,
    holdout: Holdout,
    scores: Scores,
    series: dict[str, demand_plots.ScoredSeries],
    params: dict[str, Any],
    *,
    data_source: str,
    nominal: float,
    registered_name: str | None,
) -> LoggedModel:
    """Log tags, params, metrics, plots, the evaluation JSON and the pyfunc into the active run."""
    tags = {
        TAG_MODEL_KIND: "demand",
        TAG_FEATURE_SET: bundle.feature_set,
        TAG_TRAINING_WINDOW: "/".join(bundle.training_window),
        TAG_TEST_FROM: str(holdout.start.date()),
        TAG_DATA_SOURCE: data_source,
        "frequencies": ",".join(bundle.models),
    }
    mlflow.set_tags(tags)
    mlflow.log_params(params)
    mlflow.log_metrics(run_metrics(scores))
    day_ahead = {k: v for k, v in series.items() if k.endswith("day_ahead")}
    mlflow.log_figure(demand_plots.forecast_bands(day_ahead), "plots/forecast_bands.png")
    mlflow.log_figure(demand_plots.error_by_horizon(scores), "plots/error_by_horizon.png")
    mlflow.log_figure(demand_plots.calibration(series, nominal), "plots/calibration.png")
    coverage = {k: demand_plots.coverage_by_bucket(v, k.split(".")[0]) for k, v in series.items()}
    mlflow.log_dict(
        _jsonable({"tags": tags, "segments": scores, "coverage": coverage}), "evaluation.json"
    )

    example = input_example(bundle, holdout)
    predict_history(bundle, example)  # fail here, not in MLflow's example validation
    return log_bundle_model(
        bundle,
        python_model=DemandPyfunc(),
        artifact=BUNDLE_ARTIFACT,
        file_name=BUNDLE_FILE,
        signature=signature(bundle),
        input_example=example,
        registered_name=registered_name,
        tags=tags,
    )


def default_gate(config: DemandConfig, frequencies: list[str]) -> GateRule:
    """Lower MAE in every segment; P10-P90 coverage within ``gate_coverage_tolerance``."""
    return GateRule(
        metric=GATE_METRIC,
        coverage_metric="coverage_p10_p90",
        nominal=config.for_freq(frequencies[0]).coverage,
        tolerance=config.gate_coverage_tolerance,
    )


def train_and_register_demand(
    hourly: pd.DataFrame | None,
    daily: pd.DataFrame | None,
    config: DemandConfig | None = None,
    *,
    data_source: str,
    holdout_days: int = 7,
    registered_name: str | None = REGISTERED_NAME,
    gate: GateRule | None = None,
    engine: EngineConfig | None = None,
    client: Any = None,
) -> TrainDemandOutcome:
    """Train the demand bundle (hourly and/or daily), score it on the last ``holdout_days``
    days beside the baselines, log it to MLflow, register it and apply the gate.

    ``engine`` picks where the boosters are trained (``engine_trainer``: pandas by default;
    with Dask on ``client`` if given); everything else runs here either way."""
    config = config or DemandConfig()
    engine = engine or EngineConfig()
    tables = {f: t for f, t in (("h", hourly), ("d", daily)) if t is not None}
    holdout = make_holdout(tables, holdout_days)
    with engine_trainer(engine, client) as trainer:
        bundle, results = train_bundle(holdout, config, trainer)
    scores, series = score_holdout(bundle, holdout)
    use_experiment(EXPERIMENT)
    with mlflow.start_run(run_name=f"demand-{holdout.start.date()}"):
        if engine.engine != "pandas":
            mlflow.set_tag("engine", engine.engine)
        logged = log_demand_model(
            bundle,
            holdout,
            scores,
            series,
            run_params(config, results),
            data_source=data_source,
            nominal=config.for_freq(next(iter(tables))).coverage,
            registered_name=registered_name,
        )
    decision = None
    if registered_name is not None and logged.model_version is not None:
        decision = promote_if_better(
            registered_name,
            logged.model_version,
            gate_scores(scores),
            lambda uri: champion_scores(uri, holdout),
            gate or default_gate(config, list(tables)),
        )
    return TrainDemandOutcome(
        run_id=logged.run_id,
        model_uri=logged.model_uri,
        version=logged.model_version,
        decision=decision,
        holdout_from=str(holdout.start.date()),
        metrics=scores,
    )
