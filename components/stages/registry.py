"""The one list of memforge's stages, in pipeline order.

The CLI (``memforge stage NAME``), the Prefect pipeline flow, the Prefect deployments (by group) and the test
that keeps ``dvc.yaml`` consistent all read this registry. A stage named here is a module
``components.stages.<name>`` with ``run(params, tracked) -> StageResult``; ``params`` lists the ``params.yaml``
sections it reads, which are both its DVC ``params`` and the params logged to its MLflow run.

This module is plain data: importing it costs nothing and imports no stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.errors import ConfigError

Group = Literal["all", "membuilder", "memagent", "evaluation"]
GROUPS: tuple[Group, ...] = ("all", "membuilder", "memagent", "evaluation")


@dataclass(frozen=True)
class Stage:
    """One DVC stage: its name, what it does, the params sections it reads and the systems it belongs to."""

    name: str
    summary: str
    params: tuple[str, ...]
    groups: tuple[Group, ...]
    gpu: bool = False  # trains or generates with the model: the part a GPU worker speeds up

    @property
    def module(self) -> str:
        """The module holding the stage's ``run``."""
        return f"components.stages.{self.name}"


BOTH: tuple[Group, ...] = ("membuilder", "memagent")
STAGES: tuple[Stage, ...] = (
    Stage("prepare_model", "materialise the base model in models/base", ("model",), BOTH),
    Stage("ingest", "validate and split the dialogue sources", ("ingest",), ("membuilder",)),
    Stage(
        "expert",
        "teacher memory trajectories for warm-up and RL",
        ("expert", "memory", "backends.teacher"),
        ("membuilder",),
        gpu=True,
    ),
    Stage(
        "synth_qa",
        "session-level synthetic QA behind a data-quality gate",
        ("synth_qa", "memory.embedder", "backends.teacher", "expert.splits"),
        ("membuilder",),
    ),
    Stage("sft", "supervised warm-up of the memory agents", ("sft",), ("membuilder",), gpu=True),
    Stage(
        "adrpo",
        "GRPO with dense, attributed rewards (MemBuilder)",
        ("adrpo", "memory", "backends.answerer", "backends.judge"),
        ("membuilder",),
        gpu=True,
    ),
    Stage(
        "longcontext_data",
        "RULER-style long-context sets",
        ("longcontext",),
        ("memagent",),
    ),
    Stage(
        "memagent_train",
        "multi-conversation GRPO of the MemAgent reader",
        ("memagent.reader", "memagent.train"),
        ("memagent",),
        gpu=True,
    ),
    Stage(
        "eval_longcontext",
        "accuracy against input length, reader vs full context",
        ("memagent.reader", "memagent.eval", "model.max_context_tokens"),
        ("memagent", "evaluation"),
        gpu=True,
    ),
    Stage(
        "eval_dialogue",
        "dialogue QA from memory: trained writers against baselines",
        (
            "eval_dialogue",
            "ingest.output_dir",
            "memory",
            "expert.teacher",
            "backends.teacher",
            "backends.answerer",
            "backends.judge",
            "model.max_context_tokens",
        ),
        ("membuilder", "evaluation"),
        gpu=True,
    ),
    # Both trained models and both evaluations: part of the whole pipeline only.
    Stage(
        "register",
        "log both trained models to the MLflow registry (alias challenger)",
        (
            "register",
            "memory",
            "eval_dialogue",
            "memagent.reader",
            "memagent.eval",
            "backends.answerer",
            "backends.judge",
        ),
        (),
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def get_stage(name: str) -> Stage:
    """The stage called ``name``; a ``ConfigError`` listing the stages when there is none."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage '{name}'; stages: {', '.join(STAGE_NAMES)}")


def select_stages(names: list[str] | tuple[str, ...] | None = None, group: Group = "all") -> list[str]:
    """Stage names to run, in pipeline order: ``names`` when given (each checked), else every stage of ``group``."""
    if group not in GROUPS:
        raise ConfigError(f"unknown stage group '{group}'; groups: {', '.join(GROUPS)}")
    if names:
        chosen = {get_stage(name).name for name in names}
        return [name for name in STAGE_NAMES if name in chosen]
    return [stage.name for stage in STAGES if group == "all" or group in stage.groups]
