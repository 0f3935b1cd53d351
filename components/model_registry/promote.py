"""Promotion: move a registered model's ``champion`` alias to its ``challenger`` when that is better by the margin.

``decide`` reads the registry and changes nothing: it compares the two versions' evaluation tags on the metric that
``params.register.<model>`` names, and never compares scores from different evaluation sets. ``apply_decision``
then records the decision (an MLflow run ``promote-<name>``, tags on the challenger version) and moves the alias
last. A failure before the move leaves the aliases as they were; the version's decision tag reads ``pending`` until
the move succeeded, so it never claims a move that did not happen.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal

from components.config import Params, RegisterConfig, RegisteredModelConfig, TrackingConfig
from components.errors import ConfigError, MemforgeError, ModelLoadError
from components.model_registry import tags
from components.model_registry.client import registry_call, registry_client
from components.model_registry.resolve import model_aliases, model_version
from components.tracking import stage_run

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

Decision = Literal[
    "promoted", "first_champion", "kept_champion", "within_margin", "incomparable", "rolled_back", "already_champion"
]
MOVES_CHAMPION: frozenset[str] = frozenset({"promoted", "first_champion", "rolled_back"})
PENDING = "pending"  # the decision tag of a version whose champion move has not happened (yet)

DECISION_TAG = f"{tags.PROMOTION}decision"
REASON_TAG = f"{tags.PROMOTION}reason"
CHALLENGER_SCORE_TAG = f"{tags.PROMOTION}challenger_score"
CHAMPION_SCORE_TAG = f"{tags.PROMOTION}champion_score"
CHAMPION_VERSION_TAG = f"{tags.PROMOTION}champion_version"  # the champion the decision was taken against
RUN_ID_TAG = f"{tags.PROMOTION}run_id"

ALL_MODELS = "all"
MODEL_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(RegisterConfig) if isinstance(getattr(RegisterConfig(), f.name), RegisteredModelConfig)
)  # the registered models params.register configures: membuilder, memagent


@dataclass(frozen=True)
class PromotionDecision:
    """What promotion decided for one registered model, and why."""

    model: str
    metric: str
    challenger_version: int  # the version considered: the challenger's, or the one rolled back to
    champion_version_before: int | None
    champion_version_after: int | None
    challenger_score: float | None
    champion_score: float | None
    decision: Decision
    reason: str
    run_id: str = ""  # the MLflow run that recorded it

    @property
    def moves_champion(self) -> bool:
        return self.decision in MOVES_CHAMPION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(challenger: float, champion: float, cfg: RegisteredModelConfig) -> tuple[Decision, str]:
    """Promoted only when the challenger is better by more than ``cfg.margin``; the reason states the numbers."""
    gain = challenger - champion if cfg.greater_is_better else champion - challenger
    scores = f"{cfg.metric}: challenger {challenger:g}, champion {champion:g}"
    if gain > cfg.margin:
        return "promoted", f"{scores}; better by {gain:g}, more than the margin {cfg.margin:g}"
    if gain > 0:
        return "within_margin", f"{scores}; better by {gain:g}, not more than the margin {cfg.margin:g}"
    better = "higher" if cfg.greater_is_better else "lower"
    return "kept_champion", f"{scores}; the challenger is not better ({better} is better)"


def version_tag(version: ModelVersion, tag: str, name: str) -> str:
    """A tag every registered version carries; missing is an error naming the model, version and tag."""
    value = (version.tags or {}).get(tag)
    if value is None or not str(value).strip():
        raise ModelLoadError(
            f"version {version.version} of registered model '{name}' has no tag '{tag}'; was it registered by "
            "the register stage?"
        )
    return str(value)


def score(version: ModelVersion, cfg: RegisteredModelConfig) -> float:
    """The version's ``cfg.metric`` from its evaluation tag, a finite number."""
    tag = tags.eval_metric_tag(cfg.metric)
    text = version_tag(version, tag, cfg.name)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ModelLoadError(
            f"version {version.version} of registered model '{cfg.name}': tag '{tag}' is {text!r}, not a finite number"
        )
    return value


def _optional_score(version: ModelVersion, cfg: RegisteredModelConfig) -> float | None:
    return score(version, cfg) if tags.eval_metric_tag(cfg.metric) in (version.tags or {}) else None


def decide(client: MlflowClient, cfg: RegisteredModelConfig, to_version: int | None = None) -> PromotionDecision:
    """The decision for ``cfg.name``: challenger vs champion, or a rollback to ``to_version``. Reads only."""
    aliases = model_aliases(client, cfg.name)
    champion = aliases.get(tags.CHAMPION)
    if to_version is not None:
        return _rollback(client, cfg, to_version, champion)
    if tags.CHALLENGER not in aliases:
        known = ", ".join(sorted(aliases)) or "none"
        raise ModelLoadError(
            f"registered model '{cfg.name}' has no alias '{tags.CHALLENGER}' (aliases: {known}); run the register "
            "stage first"
        )
    number = aliases[tags.CHALLENGER]
    challenger = model_version(client, cfg.name, number)
    challenger_score = score(challenger, cfg)
    planned = PromotionDecision(
        cfg.name, cfg.metric, number, champion, champion, challenger_score, None, "kept_champion", ""
    )
    if champion is None:
        reason = f"no champion yet: version {number} becomes the champion"
        return replace(planned, champion_version_after=number, decision="first_champion", reason=reason)
    if champion == number:
        reason = f"version {number} is already the champion; nothing changes"
        return replace(planned, champion_score=challenger_score, decision="already_champion", reason=reason)
    current = model_version(client, cfg.name, champion)
    challenger_set = version_tag(challenger, tags.EVAL_SET_DIGEST, cfg.name)
    champion_set = version_tag(current, tags.EVAL_SET_DIGEST, cfg.name)
    if challenger_set != champion_set:
        reason = (
            f"evaluated on different evaluation sets (challenger {challenger_set}, champion {champion_set}): "
            "the scores are not compared and nothing changes"
        )
        return replace(planned, champion_score=_optional_score(current, cfg), decision="incomparable", reason=reason)
    champion_score = score(current, cfg)
    decision, reason = compare(challenger_score, champion_score, cfg)
    after = number if decision == "promoted" else champion
    return replace(
        planned, champion_version_after=after, champion_score=champion_score, decision=decision, reason=reason
    )


def _rollback(
    client: MlflowClient, cfg: RegisteredModelConfig, to_version: int, champion: int | None
) -> PromotionDecision:
    target = model_version(client, cfg.name, to_version)
    current = model_version(client, cfg.name, champion) if champion is not None else None
    target_score = _optional_score(target, cfg)
    champion_score = _optional_score(current, cfg) if current is not None else None
    if champion == to_version:
        decision: Decision = "already_champion"
        reason = f"version {to_version} is already the champion; nothing changes"
    else:
        decision = "rolled_back"
        was = f"version {champion}" if champion is not None else "none"
        reason = f"champion set to version {to_version} on request (was {was})"
    return PromotionDecision(
        cfg.name, cfg.metric, to_version, champion, to_version, target_score, champion_score, decision, reason
    )


def _score_text(value: float | None) -> str:
    return "" if value is None else repr(value)


def _version_tags(planned: PromotionDecision) -> dict[str, str]:
    """The challenger version's promotion tags; the decision reads ``pending`` while a champion move is to come."""
    return {
        DECISION_TAG: PENDING if planned.moves_champion else planned.decision,
        REASON_TAG: planned.reason,
        CHALLENGER_SCORE_TAG: _score_text(planned.challenger_score),
        CHAMPION_SCORE_TAG: _score_text(planned.champion_score),
        CHAMPION_VERSION_TAG: "" if planned.champion_version_before is None else str(planned.champion_version_before),
        RUN_ID_TAG: planned.run_id,
    }


def _set_version_tags(client: MlflowClient, planned: PromotionDecision, values: Mapping[str, str]) -> None:
    version = str(planned.challenger_version)
    what = f"tagging version {version} of registered model '{planned.model}'"
    for key, value in values.items():
        registry_call(client, what, lambda k=key, v=value: client.set_model_version_tag(planned.model, version, k, v))


def _run_params(cfg: RegisteredModelConfig, planned: PromotionDecision) -> dict[str, Any]:
    return {
        "model": cfg.name,
        "metric": cfg.metric,
        "greater_is_better": cfg.greater_is_better,
        "margin": cfg.margin,
        "challenger_version": planned.challenger_version,
        "champion_version_before": planned.champion_version_before,
    }


def apply_decision(
    client: MlflowClient, planned: PromotionDecision, cfg: RegisteredModelConfig, tracking: TrackingConfig
) -> PromotionDecision:
    """Record ``planned`` (MLflow run, version tags) and move the champion alias last when it says so."""
    with stage_run(f"promote-{cfg.name}", tracking, params_section=_run_params(cfg, planned)) as run:
        planned = replace(planned, run_id=run.run_id)
        run.set_tags({"memforge.stage": "promote"})
        scores = {"challenger_score": planned.challenger_score, "champion_score": planned.champion_score}
        run.log_metrics({key: value for key, value in scores.items() if value is not None})
        if planned.decision != "already_champion":  # its tags keep the decision that made it champion
            _set_version_tags(client, planned, _version_tags(planned))
        if planned.moves_champion:
            version = str(planned.challenger_version)
            registry_call(
                client,
                f"moving alias '{tags.CHAMPION}' of registered model '{planned.model}' to version {version}",
                lambda: client.set_registered_model_alias(planned.model, tags.CHAMPION, version),
            )
            try:
                _set_version_tags(client, planned, {DECISION_TAG: planned.decision})
            except ModelLoadError as exc:
                raise ModelLoadError(
                    f"the champion moved to version {version}, but recording it failed: {exc}"
                ) from None
        run.set_tags({DECISION_TAG: planned.decision, REASON_TAG: planned.reason})
        run.log_dict(planned.to_dict(), "promotion.json")
    return planned


def promote(
    client: MlflowClient, cfg: RegisteredModelConfig, to_version: int | None = None, *, tracking: TrackingConfig
) -> PromotionDecision:
    """Decide for ``cfg.name`` (challenger vs champion, or roll back to ``to_version``), record it, apply it."""
    return apply_decision(client, decide(client, cfg, to_version), cfg, tracking)


def registered_models(register: RegisterConfig, model: str = ALL_MODELS) -> list[RegisteredModelConfig]:
    """The configs of ``model`` (a key of ``params.register``: membuilder, memagent) or of every model (``all``)."""
    if model == ALL_MODELS:
        return [getattr(register, key) for key in MODEL_KEYS]
    if model not in MODEL_KEYS:
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join([*MODEL_KEYS, ALL_MODELS])}")
    return [getattr(register, model)]


def promote_models(params: Params, model: str = ALL_MODELS, to_version: int | None = None) -> list[PromotionDecision]:
    """``memforge promote``: decide for every chosen model first (any bad input fails before a change), then apply.

    ``to_version`` (a rollback) needs a single model.
    """
    configs = registered_models(params.register, model)
    if to_version is not None and len(configs) != 1:
        raise ConfigError(f"a rollback to version {to_version} needs one model: {', '.join(MODEL_KEYS)}")
    client = registry_client(params.tracking)
    plans = [(cfg, decide(client, cfg, to_version)) for cfg in configs]
    applied: list[PromotionDecision] = []
    for cfg, planned in plans:
        try:
            applied.append(apply_decision(client, planned, cfg, params.tracking))
        except MemforgeError as exc:
            if not applied:
                raise
            done = ", ".join(f"{d.model} {d.decision}" for d in applied)
            raise ModelLoadError(f"{exc} (applied before this failure: {done})") from None
    return applied
