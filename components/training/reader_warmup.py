"""The reader's supervised warm-up before GRPO: memforge's addition for small models.

MemAgent's 7B reader writes ``\\boxed{}`` answers unprompted; a 135M model does not, so every GRPO reward is 0 and
multi-conversation GRPO has nothing to learn from. memagent_train therefore first fine-tunes the reader on the
reading trajectories of ``components.longcontext.warmup`` (built offline from the training questions: the memory
updated with the supporting facts as they are read, the final answer boxed), then starts GRPO from the warmed-up
weights.

Every step of every trajectory is one conversational prompt-completion example, trained with memforge's SFT
(``components.training.sft.train_sft``: TRL's ``SFTTrainer``, loss on the completion only, saved whole and checked)
under an ``SFTConfig`` made from ``memagent.warmup`` (precision and seed from ``memagent.train``). ``boxed_check``
then lets the warmed-up reader read a few training questions with the real reader (``components.agent.reader``) and
reports how many of its answers are boxed and right.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import MemAgentTrainConfig, ReaderConfig, ReaderWarmupConfig, SFTConfig
from components.errors import MemforgeError
from components.longcontext.warmup import WarmupTrajectory
from components.training.callbacks import OnLog
from components.training.memagent_rollout import TrainSample
from components.training.sft import SFTOutcome

METRIC_PREFIX = "warmup/"  # the warm-up's trainer logs and metrics in the stage's MLflow run
WARMUP_DIR = "warmup"  # the warmed-up reader, inside memagent.train.checkpoint_dir (kept and cleared with it)
WARMUP_METRICS_FILE = "warmup_metrics.json"  # beside it: its metrics, for a rerun that reuses it


def warmup_examples(trajectories: Sequence[WarmupTrajectory]) -> list[dict[str, Any]]:
    """One prompt-completion example per step of every trajectory (``part`` = ``update`` / ``answer``)."""
    return [
        {
            "prompt": [dict(m) for m in step.messages],
            "completion": [{"role": "assistant", "content": step.target}],
            "part": step.kind,
            "sample_id": trajectory.sample_id,
        }
        for trajectory in trajectories
        for step in trajectory.steps
    ]


def longest_example(examples: Sequence[dict[str, Any]], tokenizer: Any) -> int:
    """Tokens of the longest example, prompt and completion rendered with the chat template."""

    def length(example: dict[str, Any]) -> int:
        messages = [*example["prompt"], *example["completion"]]
        return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    return max((length(example) for example in examples), default=1)


def warmup_sft_config(
    warmup: ReaderWarmupConfig, train: MemAgentTrainConfig, output_dir: str | Path, max_length: int
) -> SFTConfig:
    """The SFT settings of the warm-up: ``memagent.warmup``'s optimisation, ``memagent.train``'s model, precision and
    seed; full fine-tuning, one log per step."""
    return SFTConfig(
        model_name_or_path=train.model_name_or_path,
        learning_rate=warmup.learning_rate,
        epochs=warmup.epochs,
        max_steps=warmup.max_steps,
        per_device_batch_size=warmup.per_device_batch_size,
        gradient_accumulation_steps=warmup.gradient_accumulation_steps,
        max_length=max_length,
        bf16=train.bf16,
        logging_steps=1,
        seed=train.seed,
        output_dir=str(output_dir),
    )


@dataclass(kw_only=True)
class WarmupOutcome:
    """What the warm-up did: the SFT run, the trajectories it trained on and the warmed-up reader's check."""

    sft: SFTOutcome
    trajectories: int
    facts: int
    facts_read: int
    check: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the stage's metrics (under ``warmup``): the SFT run's, the trajectories' and the check's."""
        sft = self.sft.metrics()
        return {
            "steps": sft["steps"],
            "train_loss": sft["train_loss"],
            "final_loss": sft["final_loss"],
            "examples": sft["examples"],
            "examples_update": sft.get("examples_update", 0.0),
            "examples_answer": sft.get("examples_answer", 0.0),
            "examples_over_length": sft["examples_over_length"],
            "trajectories": float(self.trajectories),
            "facts_read_fraction": self.facts_read / self.facts if self.facts else 0.0,
            **{f"check_{name}": value for name, value in self.check.items()},
        }


def warm_up_reader(
    warmup: ReaderWarmupConfig,
    train: MemAgentTrainConfig,
    trajectories: Sequence[WarmupTrajectory],
    output_dir: str | Path,
    on_log: OnLog | None = None,
) -> WarmupOutcome:
    """Fine-tune ``train.model_name_or_path`` on the trajectories' steps and save it to ``output_dir``.

    ``on_log(logs, step)`` receives every trainer log (loss, learning_rate, grad_norm, ...)."""
    from components.agent.reader import load_tokenizer
    from components.training.sft import build_sft_dataset, train_sft

    if not trajectories:
        raise MemforgeError("memagent_train: no warm-up trajectories; run the long-context data stage")
    examples = warmup_examples(trajectories)
    max_length = warmup.max_length or longest_example(examples, load_tokenizer(train.model_name_or_path))
    cfg = warmup_sft_config(warmup, train, output_dir, max_length)
    outcome = train_sft(cfg, build_sft_dataset(examples), output_dir, on_log)
    return WarmupOutcome(
        sft=outcome,
        trajectories=len(trajectories),
        facts=sum(len(t.facts) for t in trajectories),
        facts_read=sum(t.facts_read for t in trajectories),
    )


def boxed_check(
    model_dir: str | Path, reader: ReaderConfig, samples: Sequence[TrainSample], *, seed: int = 0
) -> dict[str, float]:
    """The reader in ``model_dir`` reads ``samples`` (greedy, transformers): the fraction of answers with a
    ``\\boxed{}`` and their mean reward (boxed exact match)."""
    from components.agent.reader import ReadRequest, build_reader_backend, read
    from components.agent.scoring import reward

    if not samples:
        return {}
    cfg = dataclasses.replace(reader, backend="transformers")  # a few questions: no vLLM engine for them
    backend, encode, decode = build_reader_backend(model_dir, cfg, seed=seed)
    try:
        requests = [ReadRequest(s.id, s.question, s.pieces()) for s in samples]
        results = read(requests, backend, cfg, encode, decode)
    finally:
        backend.close()
    answers = {s.id: s.answers for s in samples}
    return {
        "questions": float(len(results)),
        "boxed_fraction": sum(r.boxed is not None for r in results) / len(results),
        "reward_mean": sum(reward(r.answer, answers[r.id]) for r in results) / len(results),
    }


def warmup_paths(checkpoint_dir: str | Path) -> tuple[Path, Path]:
    """The warmed-up reader's folder and its metrics file inside ``checkpoint_dir``."""
    return Path(checkpoint_dir) / WARMUP_DIR, Path(checkpoint_dir) / WARMUP_METRICS_FILE


def finished_warmup(checkpoint_dir: str | Path) -> dict[str, float] | None:
    """The metrics of a warm-up finished in ``checkpoint_dir`` (its reader saved whole, its metrics written), else
    None."""
    import json

    from components.llm.model_assets import MODEL_CARD_FILE

    folder, metrics = warmup_paths(checkpoint_dir)
    if not (folder / MODEL_CARD_FILE).is_file() or not metrics.is_file():
        return None
    try:
        found = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def record_finished_warmup(checkpoint_dir: str | Path, metrics: dict[str, float]) -> None:
    """Mark the warm-up in ``checkpoint_dir`` finished by writing its metrics (the main process only), so that a
    rerun of the same run reuses the warmed-up reader (``finished_warmup``)."""
    from components.distributed import is_main_process
    from components.io import write_json_atomic

    if is_main_process():
        write_json_atomic(warmup_paths(checkpoint_dir)[1], metrics)


def trajectory_rows(trajectories: Sequence[WarmupTrajectory], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` trajectories as rows of an MLflow table."""
    return [
        {
            "sample_id": t.sample_id,
            "question": t.question,
            "gold": t.answer,
            "facts": " | ".join(t.facts),
            "facts_read": t.facts_read,
            "steps": len(t.steps),
            "final_memory": t.memory,
            "answer_target": t.steps[-1].target,
        }
        for t in trajectories[:limit]
    ]
