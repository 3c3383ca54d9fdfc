"""Champion/challenger gate and rollback on the MLflow model registry, for any model kind.

Serving loads ``models:/<name>@champion``; nothing else moves that alias. A new version
becomes champion only if it beats the current champion on the *same* recent hold-out rows
in every segment (ETA modes, later demand horizons) and its interval coverage is within
tolerance; otherwise it is parked as ``challenger`` with the reason. Every promotion is
appended to the registered-model tag ``champion_history`` so ``rollback`` can put the
previous champion back in one step, without anyone remembering version numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mlflow import MlflowClient

from doorstep.compat import FeatureSetMismatch
from doorstep.config import tracking_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
DECISION_TAG = "gate_decision"
HISTORY_KEEP = 50  # versions kept in the tag (tag values are only guaranteed 5000 bytes)

Scores = Mapping[str, Mapping[str, float | None]]  # segment (mode) -> metric -> value


@dataclass(frozen=True)
class GateRule:
    """Lower ``metric`` in every segment; ``coverage_metric`` within ``tolerance`` of
    ``nominal`` in every segment (``coverage_metric=None`` for point models)."""

    metric: str = "mae_min"
    coverage_metric: str | None = "coverage_p10_p90"
    nominal: float = 0.80
    tolerance: float = 0.03


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    champion_version: str | None  # the champion after the decision
    previous_champion: str | None  # the champion before it


@dataclass(frozen=True)
class RollbackResult:
    name: str
    from_version: str
    to_version: str


@dataclass(frozen=True)
class AliasedVersion:
    """One alias of a registered model, for ``doorstep models list``."""

    alias: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str] = field(default_factory=dict)


class RollbackError(RuntimeError):
    """There is no earlier champion to go back to."""


def model_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def _client(client: MlflowClient | None) -> MlflowClient:
    return client if client is not None else MlflowClient(tracking_uri=tracking_uri())


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version as text (the SQL store hands versions back as ints)."""
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def champion_history(name: str, client: MlflowClient | None = None) -> list[str]:
    """Versions that were champion, oldest first (the last one is the current champion)."""
    tags = _client(client).get_registered_model(name).tags
    return [v for v in tags.get(HISTORY_TAG, "").split(",") if v]


def _value(scores: Scores, segment: str, metric: str) -> float:
    value = scores.get(segment, {}).get(metric)
    return float(value) if value is not None and math.isfinite(float(value)) else math.nan


def coverage_failures(scores: Scores, gate: GateRule) -> list[str]:
    """Segments whose coverage is missing or outside ``nominal +- tolerance``."""
    if gate.coverage_metric is None:
        return []
    out = []
    for segment in sorted(scores):
        cov = _value(scores, segment, gate.coverage_metric)
        if not abs(cov - gate.nominal) <= gate.tolerance + 1e-12:
            out.append(
                f"{segment} coverage {cov:.3f} outside {gate.nominal:.2f}+-{gate.tolerance:.2f}"
            )
    return out


def metric_failures(challenger: Scores, champion: Scores, gate: GateRule) -> list[str]:
    """Segments where the challenger is not strictly better (a segment the champion cannot
    score counts as a win: the challenger adds it)."""
    out = []
    for segment in sorted(challenger):
        new = _value(challenger, segment, gate.metric)
        old = _value(champion, segment, gate.metric) if segment in champion else math.inf
        if not new < old:
            out.append(f"{segment} {gate.metric} {new:.3f} not below champion's {old:.3f}")
    return out


def _promote(client: MlflowClient, name: str, version: str, reason: str) -> None:
    history = [v for v in champion_history(name, client) if v != version] + [version]
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[-HISTORY_KEEP:]))
    aliases = _aliases(client, name)
    if aliases.get(CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    client.set_model_version_tag(name, version, DECISION_TAG, f"promoted: {reason}")


def promote_if_better(
    name: str,
    version: str,
    challenger_scores: Scores,
    champion_scorer: Callable[[str], Scores],
    gate: GateRule | None = None,
    client: MlflowClient | None = None,
) -> PromotionDecision:
    """Make ``version`` the champion if it passes ``gate``, else alias it ``challenger``.

    ``champion_scorer(model_uri)`` must score the champion on the same rows that produced
    ``challenger_scores`` (the caller loads the champion and evaluates the same batch); it is
    given a pinned ``models:/name/version`` URI so the alias cannot move under it. A champion
    it cannot score because this code computes other features (``FeatureSetMismatch``: the
    feature set changed in an upgrade) is replaced: serving would refuse it as well.
    """
    gate = gate or GateRule()
    client = _client(client)
    if not challenger_scores:
        raise ValueError("challenger_scores: empty; score at least one segment")
    current = _aliases(client, name).get(CHAMPION)
    if current == version:
        return PromotionDecision(False, f"version {version} is already champion", current, current)
    failures = coverage_failures(challenger_scores, gate)
    if current is None:
        reason = "no champion yet"
    else:
        try:
            champion_scores = champion_scorer(model_uri(name, current))
        except FeatureSetMismatch as exc:
            champion_scores = None
            reason = f"champion {current} cannot be served by this code ({exc})"
        if champion_scores is not None:
            failures += metric_failures(challenger_scores, champion_scores, gate)
            reason = f"beats champion {current} in every segment: " + "; ".join(
                f"{seg} {gate.metric} {_value(challenger_scores, seg, gate.metric):.3f} < "
                f"{_value(champion_scores, seg, gate.metric):.3f}"
                for seg in sorted(challenger_scores)
                if seg in champion_scores
            )
    if failures:
        reason = "; ".join(failures)
        client.set_registered_model_alias(name, CHALLENGER, version)
        client.set_model_version_tag(name, version, DECISION_TAG, f"challenger: {reason}")
        return PromotionDecision(False, reason, current, current)
    _promote(client, name, version, reason)
    return PromotionDecision(True, reason, version, current)


def rollback(name: str, client: MlflowClient | None = None) -> RollbackResult:
    """Point ``champion`` back at the previous champion still in the registry."""
    client = _client(client)
    current = _aliases(client, name).get(CHAMPION)
    if current is None:
        raise RollbackError(f"{name}: no champion, nothing to roll back")
    history = champion_history(name, client)
    if not history or history[-1] != current:  # the alias was moved by hand
        history = [v for v in history if v != current] + [current]
    existing = {str(mv.version) for mv in client.search_model_versions(f"name = '{name}'")}
    earlier = [v for v in history[:-1] if v in existing and v != current]
    if not earlier:
        raise RollbackError(
            f"{name}: champion {current} has no earlier champion to roll back to "
            f"(history: {','.join(history)})"
        )
    target = earlier[-1]
    client.set_registered_model_alias(name, CHAMPION, target)
    client.set_registered_model_tag(
        name, HISTORY_TAG, ",".join(history[: history.index(target) + 1])
    )
    client.set_model_version_tag(name, current, DECISION_TAG, f"rolled back to {target}")
    return RollbackResult(name=name, from_version=current, to_version=target)


def current_versions(name: str, client: MlflowClient | None = None) -> dict[str, AliasedVersion]:
    """Alias -> version, run, source and tags of a registered model."""
    client = _client(client)
    out: dict[str, AliasedVersion] = {}
    for alias, version in sorted(_aliases(client, name).items()):
        mv = client.get_model_version(name, str(version))
        out[alias] = AliasedVersion(
            alias=alias,
            version=str(mv.version),
            run_id=mv.run_id,
            source=str(mv.source),
            tags=dict(mv.tags),
        )
    return out
