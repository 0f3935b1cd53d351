"""Supervised warm-up (SFT) on expert trajectories with TRL's ``SFTTrainer``.

Each trajectory record (``data/trajectories/{split}.jsonl``, written by the expert stage) holds, per memory part
whose teacher output parsed, the agent prompt (chat messages) and the teacher's JSON text. Every such
(session, part) becomes one conversational prompt-completion example::

    {"prompt": [system, user], "completion": [{"role": "assistant", "content": <teacher JSON>}]}

TRL renders both with the tokenizer's chat template and computes the loss on the completion tokens only (prompt
positions get label -100). Examples longer than ``sft.max_length`` are fitted before TRL sees them (``fit_prompt``,
the one cut ADRPO applies to its prompts too): the longest prompt message (the transcript) loses tokens from its
middle, marked by ``CUT_MARKER``, so the system prompt, the session header with the memories, the end of the
transcript, the final instruction and the whole completion are kept (TRL's own truncation keeps the start only,
which would cut the completion off and drop the example).

``train_sft`` fine-tunes fully or with LoRA (merged before saving), then writes model + tokenizer (chat template
kept) and a ``memforge_model.json`` card into a temp folder beside ``output_dir``, reloads and smoke-tests it
there, and only then swaps it in (``atomic_directory``): ``output_dir`` loads with plain ``from_pretrained``.

Heavy imports (torch, transformers, trl, peft, datasets) happen inside functions.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from components.config import SFTConfig
from components.errors import InputError, MemforgeError
from components.memory.types import PARTS
from components.training.arguments import trainer_arguments
from components.training.callbacks import OnLog, TrainingLog, log_forwarder
from components.training.outcome import TrainingOutcome
from components.training.saving import gathered_state_dict, load_trainable, save_trained

logger = logging.getLogger(__name__)

CUT_MARKER = "\n[... cut ...]\n"
MIN_KEPT_TOKENS = 32  # a prompt message is never cut below this many tokens
_CUT_SLACK_TOKENS = 4  # re-tokenisation at the cut may merge or split a few tokens
_FIT_ATTEMPTS = 3


# ---------------------------------------------------------------------------------------------
# examples


def trajectory_examples(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """One prompt-completion example per (session, part) with a teacher output, in file order then ``PARTS`` order.

    Besides ``prompt`` and ``completion`` each example carries ``part``, ``split``, ``conversation_id`` and
    ``session_id`` (strings; the trainer drops them). A missing file or a malformed record is an ``InputError``
    naming the file and line.
    """
    from components.io import iter_jsonl

    examples: list[dict[str, Any]] = []
    for path in paths:
        for line_no, record in iter_jsonl(path):
            examples.extend(_record_examples(record, path, line_no))
    return examples


def _record_examples(record: Any, path: str | os.PathLike[str], line_no: int) -> list[dict[str, Any]]:
    where = f"line {line_no}"
    if not isinstance(record, dict):
        raise InputError(path, f"expected a trajectory object, got {type(record).__name__}", record=where)
    prompts, outputs = record.get("prompts"), record.get("outputs")
    if not isinstance(prompts, dict) or not isinstance(outputs, dict):
        raise InputError(path, "a trajectory record needs 'prompts' and 'outputs' objects", record=where)
    unknown = sorted(set(outputs) - set(PARTS))
    if unknown:
        raise InputError(path, f"unknown memory part(s) in 'outputs': {', '.join(unknown)}", record=where)
    examples = []
    for part in PARTS:
        if part not in outputs:
            continue  # the teacher's output for this part failed to parse: not written, nothing to learn
        output = outputs[part]
        if not isinstance(output, str):
            raise InputError(path, f"outputs.{part} must be a string, got {type(output).__name__}", record=where)
        examples.append(
            {
                "prompt": _messages(prompts.get(part), path, f"{where}, prompts.{part}"),
                "completion": [{"role": "assistant", "content": output}],
                "part": part,
                "split": str(record.get("split", "")),
                "conversation_id": str(record.get("conversation_id", "")),
                "session_id": str(record.get("session_id", "")),
            }
        )
    return examples


def _messages(value: Any, path: str | os.PathLike[str], where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InputError(path, "expected a non-empty list of chat messages", record=where)
    messages = []
    for index, message in enumerate(value):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise InputError(path, f"message {index} is not a {{'role': str, 'content': str}} object", record=where)
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] == "assistant":
        raise InputError(path, "the prompt ends with an assistant message", record=where)
    return messages


def build_sft_dataset(examples: Sequence[Mapping[str, Any]]) -> Any:
    """The examples as a ``datasets.Dataset`` (TRL's conversational prompt-completion layout)."""
    if not examples:
        raise MemforgeError("no SFT examples: the trajectory files hold no teacher outputs; run the expert stage")
    from datasets import Dataset

    return Dataset.from_list([dict(example) for example in examples])


# ---------------------------------------------------------------------------------------------
# fitting long examples to max_length


@dataclass(frozen=True)
class FitReport:
    """How many examples (or ADRPO prompts) were already short enough, shortened in the prompt, or still too long."""

    fitted: int = 0
    shortened: int = 0
    over_length: int = 0  # still longer than max_length (completion alone too long): TRL cuts the completion's end
    max_tokens_before: int = 0
    max_tokens_after: int = 0


def _chat_tokens(tokenizer: Any, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> int:
    encoded = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return len(encoded["input_ids"])


def fit_prompt(
    prompt: Sequence[Mapping[str, str]],
    tokenizer: Any,
    max_length: int,
    completion: Sequence[Mapping[str, str]] = (),
) -> tuple[list[dict[str, str]], str, int, int]:
    """The one prompt cut, shared by SFT and ADRPO: ``prompt`` fitted so that it takes at most ``max_length``
    tokens, followed by ``completion`` or, without one, by the generation prompt (as TRL's GRPO renders it).

    Returns (prompt, status, tokens before, tokens after). Status is ``fitted`` (unchanged), ``shortened`` (prompt
    messages, longest first, lost tokens from their middle, replaced by ``CUT_MARKER``: on an agent prompt the
    user message loses the middle of its transcript, so the system prompt, the session header with the memories,
    the newest turns and the final instruction are kept) or ``over_length`` (cannot fit without cutting the
    completion or a message below ``MIN_KEPT_TOKENS``; returned unchanged).
    """
    original = [dict(m) for m in prompt]
    prompt = [dict(m) for m in prompt]
    completion = [dict(m) for m in completion]

    def measure(messages: list[dict[str, str]]) -> int:
        return _chat_tokens(tokenizer, messages + completion, add_generation_prompt=not completion)

    before = total = measure(prompt)
    if total <= max_length:
        return prompt, "fitted", before, total
    marker = len(tokenizer(CUT_MARKER, add_special_tokens=False)["input_ids"])
    for _ in range(_FIT_ATTEMPTS * len(prompt)):
        ids_by_message = [tokenizer(m["content"], add_special_tokens=False)["input_ids"] for m in prompt]
        index = max(range(len(prompt)), key=lambda i: len(ids_by_message[i]))
        ids = ids_by_message[index]
        keep = max(len(ids) - (total - max_length) - marker - _CUT_SLACK_TOKENS, MIN_KEPT_TOKENS)
        if keep + marker >= len(ids):
            break  # even the longest message is already as short as it may get
        head = keep // 2
        tail = keep - head
        prompt[index] = {
            **prompt[index],
            "content": tokenizer.decode(ids[:head], skip_special_tokens=False)
            + CUT_MARKER
            + tokenizer.decode(ids[len(ids) - tail :], skip_special_tokens=False),
        }
        total = measure(prompt)
        if total <= max_length:
            return prompt, "shortened", before, total
    return original, "over_length", before, before


def fit_example(example: Mapping[str, Any], tokenizer: Any, max_length: int) -> tuple[dict[str, Any], str, int, int]:
    """``example`` with its ``prompt`` fitted to ``max_length`` tokens (``fit_prompt``; its ``completion`` counted
    when it has one, as an SFT example does, an ADRPO prompt row not): (example, status, tokens before, after).

    An ``over_length`` example is left unchanged (for SFT: TRL's truncation then keeps the start).
    """
    prompt, status, before, after = fit_prompt(
        example["prompt"], tokenizer, max_length, example.get("completion") or ()
    )
    return ({**example, "prompt": prompt} if status == "shortened" else dict(example)), status, before, after


def fit_examples(
    examples: Sequence[Mapping[str, Any]], tokenizer: Any, max_length: int
) -> tuple[list[dict[str, Any]], FitReport]:
    """Every example fitted to ``max_length`` (see ``fit_example``), with counts."""
    counts: Counter[str] = Counter()
    fitted, longest_before, longest_after = [], 0, 0
    for example in examples:
        result, status, before, after = fit_example(example, tokenizer, max_length)
        fitted.append(result)
        counts[status] += 1
        longest_before, longest_after = max(longest_before, before), max(longest_after, after)
    report = FitReport(counts["fitted"], counts["shortened"], counts["over_length"], longest_before, longest_after)
    return fitted, report


# ---------------------------------------------------------------------------------------------
# outcome


@dataclass(kw_only=True)
class SFTOutcome(TrainingOutcome):
    """What a fine-tuning run did (``TrainingOutcome``: ``metrics()``, ``timings()``, the card's ``summary()``)."""

    kind: ClassVar[str] = "sft"

    use_lora: bool
    examples: int
    examples_trained: int
    examples_per_part: dict[str, int]
    fit: FitReport
    epochs: float
    trainable_params: int
    tokens: float = 0.0

    @property
    def final_loss(self) -> float:
        """The last logged loss (NaN when none was logged)."""
        points = self.loss_history
        return points[-1]["loss"] if points else float("nan")

    def metrics(self) -> dict[str, float]:
        return {
            **super().metrics(),
            "examples": float(self.examples),
            "examples_trained": float(self.examples_trained),
            "examples_shortened": float(self.fit.shortened),
            "examples_over_length": float(self.fit.over_length),
            "epochs": round(self.epochs, 4),
            "final_loss": self.final_loss,
            "trainable_params": float(self.trainable_params),
            "total_params": float(self.total_params),
            "trainable_fraction": self.trainable_params / max(self.total_params, 1),
            "use_lora": float(self.use_lora),
            "tokens": self.tokens,
            **{f"examples_{part}": float(n) for part, n in self.examples_per_part.items()},
        }

    def summary(self) -> dict[str, Any]:
        return {
            **super().summary(),
            "use_lora": self.use_lora,
            "examples": self.examples,
            "examples_trained": self.examples_trained,
            "examples_per_part": dict(self.examples_per_part),
            "fit": asdict(self.fit),
            "epochs": self.epochs,
            "final_loss": self.final_loss,
            "trainable_params": self.trainable_params,
        }


# ---------------------------------------------------------------------------------------------
# training


def trl_config(cfg: SFTConfig, scratch_dir: str | os.PathLike[str]) -> Any:
    """``trl.SFTConfig`` for ``cfg`` (``trainer_arguments``: precision, activation checkpointing, logging, seed; no
    checkpoints) plus SFT's own fields: the loss on completion tokens only, ``max_length`` (TRL keeps the start of
    a longer example, which ``fit_examples`` has made rare), the schedule, warm-up and clipping, epochs, steps and
    batch shape."""
    from trl import SFTConfig as TRLSFTConfig

    return trainer_arguments(
        TRLSFTConfig,
        output_dir=scratch_dir,
        seed=cfg.seed,
        bf16=cfg.bf16,
        logging_steps=cfg.logging_steps,
        completion_only_loss=True,
        max_length=cfg.max_length,
        truncation_mode="keep_start",
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a share of the total steps
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
    )


def lora_config(cfg: SFTConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def build_sft_trainer(
    cfg: SFTConfig,
    dataset: Any,
    model: Any,
    tokenizer: Any,
    scratch_dir: str | os.PathLike[str],
    callbacks: Sequence[Any] = (),
) -> Any:
    """The ``SFTTrainer`` (dataset tokenised, labels built, LoRA applied when ``cfg.use_lora``)."""
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=trl_config(cfg, scratch_dir),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg) if cfg.use_lora else None,
        callbacks=list(callbacks),
    )


def _count_params(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def train_sft(
    cfg: SFTConfig,
    dataset: Any,
    output_dir: str | os.PathLike[str],
    on_log: OnLog | None = None,
) -> SFTOutcome:
    """Fine-tune ``cfg.model_name_or_path`` on ``dataset`` and save the result atomically into ``output_dir``.

    ``on_log(logs, step)`` receives every trainer log (loss, learning_rate, grad_norm, mean_token_accuracy, ...).
    On any failure ``output_dir`` is left as it was and no temp folder remains.
    """
    import tempfile

    from datasets import Dataset

    if dataset is None or len(dataset) == 0:
        raise MemforgeError("no SFT examples to train on")
    started = time.perf_counter()
    model, tokenizer, saved_dtype = load_trainable(cfg.model_name_or_path)
    rows = dataset.to_list()
    examples_per_part = dict(Counter(str(row.get("part", "")) for row in rows))
    fitted, fit = fit_examples(rows, tokenizer, cfg.max_length)
    if fit.over_length:
        logger.warning(
            "sft: %d example(s) stay longer than max_length=%d even with the prompt cut; TRL truncates their "
            "completion's end",
            fit.over_length,
            cfg.max_length,
        )
    log = TrainingLog()
    tokens: list[float] = []

    def forward(logs: dict[str, float], step: int) -> None:
        if "num_tokens" in logs:
            tokens.append(logs["num_tokens"])
        if on_log is not None:
            on_log(logs, step)

    with tempfile.TemporaryDirectory(prefix="memforge-sft-") as scratch:
        trainer = build_sft_trainer(
            cfg, Dataset.from_list(fitted), model, tokenizer, scratch, [log_forwarder(forward, log)]
        )
        if len(trainer.train_dataset) == 0:
            raise MemforgeError(
                f"no SFT example fits sft.max_length={cfg.max_length} tokens with a completion token left "
                f"({len(rows)} examples, longest {fit.max_tokens_before} tokens); raise sft.max_length"
            )
        trainable, _ = _count_params(trainer.model)
        result = trainer.train()
    log.check_finite(
        result.training_loss,
        who="sft",
        learning_rate_key="sft.learning_rate",
        learning_rate=cfg.learning_rate,
        output_dir=str(output_dir),
    )
    trained = trainer.model.merge_and_unload() if cfg.use_lora else trainer.model
    _, total = _count_params(trained)
    outcome = SFTOutcome(
        output_dir=str(output_dir),
        base_model=str(cfg.model_name_or_path),
        use_lora=cfg.use_lora,
        examples=len(rows),
        examples_trained=len(trainer.train_dataset),
        examples_per_part=examples_per_part,
        fit=fit,
        steps=int(trainer.state.global_step),
        epochs=float(trainer.state.epoch or 0.0),
        train_loss=float(result.training_loss),
        history=log.entries,
        step_seconds=log.step_seconds,
        trainable_params=trainable,
        total_params=total,
        tokens=tokens[-1] if tokens else 0.0,
        device=str(trainer.args.device),
        saved_dtype=saved_dtype,
    )
    weights = None if cfg.use_lora else gathered_state_dict(trainer)  # a merged LoRA model is saved as it is
    del trainer, model  # frees the optimizer state before the saved model is reloaded and checked
    save_trained(trained, tokenizer, outcome, fallback_context_tokens=cfg.max_length, state_dict=weights)
    outcome.seconds = time.perf_counter() - started
    return outcome
