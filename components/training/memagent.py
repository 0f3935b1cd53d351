"""MemAgent's multi-conversation GRPO, on TRL's ``GRPOTrainer`` (pinned: TRL 1.16).

The objective (MemAgent, arXiv 2507.02259)
-------------------------------------------
A *trajectory* answers one question: for every chunk of ``reader.chunk_tokens`` tokens of the question's input, one
*conversation* whose prompt is ``update_messages(question, memory, chunk)`` and whose completion is the new memory
(at most ``reader.memory_tokens`` tokens; it overwrites the old one), then one final conversation
``answer_messages(question, memory)`` -> the answer (at most ``reader.answer_tokens`` tokens). G =
``num_generations`` trajectories per question are sampled (temperature / top_p). The trajectory's reward is
``scoring.reward(answer, answers)`` (0/1 exact match of the last ``\\boxed{}``); its advantage is
``reward - mean(group rewards)`` (no division by the group's std, as in the paper), and that one advantage is
broadcast to every completion token of every conversation of the trajectory. The policy loss is TRL's: PPO clip
(``epsilon``), KL to the reference (``beta``), and loss type ``dapo`` by default, i.e. token-level normalisation over
all completion tokens of the step, which is the paper's multi-conversation DAPO objective.

How it plugs into TRL
---------------------
TRL's ``RepeatSampler`` hands ``_generate_and_score_completions(inputs)`` one generation batch: ``questions_per_step``
dataset rows (``sample_index``, ``sample_id``, ``answers``, ``prompt`` = the question), each repeated G times in a row.
``MemAgentTrainer`` (``components.training.memagent_trainer``, imported when training starts) overrides that hook,
with the TRL-free steps of ``components.training.memagent_rollout``:

1. ``rollout`` reads every question's input chunk by chunk, all trajectories in lock step (one batched generation
   per chunk step, then one for the answers). The chunks are streamed from ``TrainSample.pieces()`` and shared by the
   G trajectories of a question. Generation is TRL's own ``_tokenize_prompts`` (chat template) +
   ``_generate_single_turn`` (``unwrap_model_for_generation`` + ``model.generate`` with TRL's sampling config, or
   TRL's vLLM backend, which takes token-id prompts), with the completion limit switched between the memory and the
   answer length;
2. the answers are scored through TRL's reward hook ``_calculate_rewards`` (dataset columns such as ``answers`` reach
   the reward functions as keyword arguments; rewards are gathered over processes), by default with
   ``boxed_em_reward``;
3. ``group_advantages`` (reward - group mean over the G trajectories) and ``broadcast_advantages`` (one value per
   conversation row) give the per-row advantages;
4. the returned dict has one ROW PER CONVERSATION (a variable number per step): ``prompt_ids`` / ``prompt_mask``
   (left-padded), ``completion_ids`` / ``completion_mask`` (right-padded), ``advantages`` (B,),
   ``num_items_in_batch`` (completion tokens over all processes), ``old_per_token_logps`` (only when TRL would
   compute it: the generation batch is reused across optimizer steps) and ``ref_per_token_logps`` (when
   ``beta != 0``), both computed with TRL's ``_get_per_token_logps_and_entropies``. TRL's ``_compute_loss`` then
   computes the log-probs, ratios, clipping, KL, loss normalisation and its ``kl`` / ``clip_ratio/*`` / ``entropy``
   metrics unchanged.

``memagent_trainer.check_trl_hook`` verifies, at construction, that the installed TRL has every private method used
there with the expected signature. TRL's arguments come from ``components.training.arguments`` (shared with sft and
adrpo), and the trained reader is saved as every trained model is (``saving.save_trained``). Heavy imports (torch,
transformers, trl, datasets) happen inside functions.

Limits
------
* vLLM (``use_vllm``): rollouts go through TRL's ``VLLMGeneration`` (colocate by default), which takes token-id
  prompts, one completion per row; TRL's vLLM importance-sampling correction is switched off, because the hook does
  not pass vLLM's sampling log-probs on. Not exercised by the CPU tests.
* Several processes: rewards are gathered and each process holds whole groups, so advantages are right; but each
  process reads its own questions, so they make different numbers of generation calls, which generation paths with
  collectives (vLLM server, DeepSpeed ZeRO-3, FSDP) do not allow.
* Memory: TRL's loss runs one forward over all conversation rows of a step (``questions_per_step`` x G x
  (chunks + 1) rows); bound it with ``questions_per_step`` (activation checkpointing is on, as for every trainer).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from components.agent.prompts import answer_messages, update_messages
from components.config import MemAgentTrainConfig, ReaderConfig
from components.errors import MemforgeError
from components.llm.backends import Message
from components.training.arguments import grpo_arguments
from components.training.callbacks import OnLog, TrainingLog, log_forwarder
from components.training.checkpoints import latest_checkpoint
from components.training.memagent_rollout import METRIC_PREFIX, TrainSample
from components.training.outcome import GRPOOutcome, last_stats
from components.training.saving import gathered_state_dict, load_trainable, save_trained, saved_dtype_of

# ---------------------------------------------------------------------------------------------
# configuration, checks, entry point


def grpo_args(cfg: MemAgentTrainConfig, reader: ReaderConfig) -> Any:
    """``trl.GRPOConfig`` (``grpo_arguments``: precision, activation checkpointing, vLLM, logging, checkpoints in
    ``cfg.checkpoint_dir``, seed) with MemAgent's own fields: ``questions_per_step`` x G trajectories per optimizer
    step, questions shuffled, completions as long as the longer of a memory and an answer, no vLLM importance
    sampling (the hook does not pass vLLM's sampling log-probs on); the latest checkpoint kept, as ADRPO does."""
    return grpo_arguments(
        cfg,
        "memagent.train",
        max_completion_length=max(reader.memory_tokens, reader.answer_tokens),
        per_device_train_batch_size=cfg.questions_per_step * cfg.num_generations,
        shuffle_dataset=True,
        **({"vllm_importance_sampling_correction": False} if cfg.use_vllm else {}),
    )


def context_needed(update_overhead: int, answer_overhead: int, reader: ReaderConfig) -> int:
    """Longest conversation in tokens: template + question + chunk + memory (+ new memory), or the answer's."""
    update = update_overhead + reader.chunk_tokens + 2 * reader.memory_tokens
    answer = answer_overhead + reader.memory_tokens + reader.answer_tokens
    return max(update, answer)


def check_context(samples: Sequence[TrainSample], tokenizer: Any, reader: ReaderConfig, window: int | None) -> int:
    """The longest conversation any sample can need (prompts are bounded, so nothing is truncated); raise if it
    exceeds the model's ``window``."""

    def length(messages: list[Message]) -> int:
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return len(rendered["input_ids"])

    longest = 0
    for sample in samples:
        needed = context_needed(
            length(update_messages(sample.question, "", "")), length(answer_messages(sample.question, "")), reader
        )
        if window and needed > window:
            raise MemforgeError(
                f"memagent_train: sample {sample.id!r} can need {needed} tokens per conversation (template + question "
                f"+ chunk_tokens={reader.chunk_tokens} + 2 x memory_tokens={reader.memory_tokens}) but the model's "
                f"window is {window}; lower memagent.reader.chunk_tokens or memory_tokens"
            )
        longest = max(longest, needed)
    return longest


def sample_rows(samples: Sequence[TrainSample]) -> list[dict[str, Any]]:
    """Dataset rows (TRL needs a ``prompt`` column; the other columns reach reward functions as keyword arguments)."""
    return [
        {"prompt": s.question, "sample_index": i, "sample_id": s.id, "answers": list(s.answers)}
        for i, s in enumerate(samples)
    ]


def build_memagent_trainer(
    train_cfg: MemAgentTrainConfig,
    reader_cfg: ReaderConfig,
    samples: Sequence[TrainSample],
    *,
    callbacks: Sequence[Any] = (),
    reward_funcs: Sequence[Any] | None = None,
    start_from: str | None = None,
) -> Any:
    """A ``MemAgentTrainer`` on ``start_from`` (the warmed-up reader) or else ``train_cfg.model_name_or_path``
    (loaded in float32) and the samples."""
    from datasets import Dataset

    from components.training.memagent_trainer import MemAgentTrainer, check_trl_hook

    check_trl_hook()
    samples = list(samples)
    if len(samples) < train_cfg.questions_per_step:
        raise MemforgeError(
            f"memagent_train: {len(samples)} training question(s) but questions_per_step={train_cfg.questions_per_step}"
        )
    model, tokenizer, _ = load_trainable(start_from or train_cfg.model_name_or_path)
    tokenizer.padding_side = "left"
    check_context(samples, tokenizer, reader_cfg, getattr(model.config, "max_position_embeddings", None))
    return MemAgentTrainer(
        model=model,
        args=grpo_args(train_cfg, reader_cfg),
        train_dataset=Dataset.from_list(sample_rows(samples)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        reward_funcs=list(reward_funcs) if reward_funcs is not None else None,
        samples=samples,
        reader=reader_cfg,
        log_trajectories=train_cfg.log_trajectories,
    )


@dataclass(kw_only=True)
class MemAgentOutcome(GRPOOutcome):
    """What a memagent_train run did (``GRPOOutcome``: ``metrics()``, ``timings()``, the card's ``summary()``);
    ``trajectories`` holds sampled trajectories of the last step for an MLflow table; ``warmed_up_from`` is the
    warmed-up reader GRPO started from (None: from ``base_model`` itself)."""

    kind: ClassVar[str] = "memagent"

    questions: int
    trajectories: list[dict[str, Any]] = field(default_factory=list)
    warmed_up_from: str | None = None

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "questions": float(self.questions)}

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "questions": self.questions, "warmed_up_from": self.warmed_up_from}


def train_memagent(
    train_cfg: MemAgentTrainConfig,
    reader_cfg: ReaderConfig,
    samples: Sequence[TrainSample],
    on_log: OnLog | None = None,
    *,
    start_from: str | None = None,
) -> MemAgentOutcome:
    """Train the reader with multi-conversation GRPO; save it (model + tokenizer) to ``train_cfg.output_dir``.

    GRPO starts from ``start_from`` (the warmed-up reader, ``components.training.reader_warmup``) when given, else
    from ``train_cfg.model_name_or_path``, which stays the model card's base model either way. Checkpoints go to
    ``train_cfg.checkpoint_dir`` every ``save_steps`` steps; a rerun resumes from the latest one.
    ``on_log(logs, step)`` receives every trainer log (TRL's keys and ``memagent/...``).
    """
    started = time.perf_counter()
    samples = list(samples)
    if not samples:
        raise MemforgeError("memagent_train: no training questions; run the long-context data stage")
    log = TrainingLog()
    trainer = build_memagent_trainer(
        train_cfg, reader_cfg, samples, callbacks=[log_forwarder(on_log, log)], start_from=start_from
    )
    resume = latest_checkpoint(train_cfg.checkpoint_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    log.check_finite(
        result.training_loss,
        who="memagent_train",
        learning_rate_key="memagent.train.learning_rate",
        learning_rate=train_cfg.learning_rate,
        output_dir=train_cfg.output_dir,
    )
    model, tokenizer = trainer.model, trainer.processing_class
    outcome = MemAgentOutcome(
        output_dir=str(train_cfg.output_dir),
        base_model=str(train_cfg.model_name_or_path),
        questions=len(samples),
        steps=int(trainer.state.global_step),
        train_loss=float(result.training_loss),
        resumed_from=resume,
        step_seconds=log.step_seconds,
        history=log.entries,
        last_stats=last_stats(log.entries, METRIC_PREFIX, extra=("kl", "clip_ratio/region_mean", "entropy")),
        trajectories=list(trainer.memagent_last.get("records", [])),
        total_params=sum(p.numel() for p in model.parameters()),
        saved_dtype=saved_dtype_of(Path(train_cfg.model_name_or_path)),
        device=str(trainer.args.device),
        warmed_up_from=start_from,
    )
    weights = gathered_state_dict(trainer)
    del trainer  # frees the optimizer state before the saved model is reloaded and checked
    window = int(getattr(model.config, "max_position_embeddings", 0) or reader_cfg.chunk_tokens)
    save_trained(model, tokenizer, outcome, fallback_context_tokens=window, state_dict=weights)
    outcome.seconds = time.perf_counter() - started
    return outcome
