"""The three attribution modes side by side: a few ADRPO steps each, same start, same seed, same sessions (CPU).

Modes (``components.rewards.attribution``): ``retrieval_share`` (MemBuilder's, the default: per rollout, the entry
type retrieved most often for the session's questions gets alpha), ``answer_hits`` (per session, the part(s) with
the most answer-bearing hits) and ``ablation`` (per session, by each part's task-reward drop when left out).

Setup (untimed): a synthetic corpus through the real ``ingest`` -> ``expert`` (oracle) -> ``synth_qa`` parts
(``bench_adrpo.build_prompts``, hashing embedder) and the tiny random model (``build_tiny_model``). Per mode, a fresh
copy of that model trains ``--steps`` ADRPO steps (``ADRPOTrainer``, containment judge), one session per step, the
same sessions in the same order, with the same seed.

The tiny model writes no valid memory operation, so every reward would be 0 and every weight would scale a zero
advantage. As ``tests/test_adrpo.py`` does, the completions are therefore swapped AT SCORING TIME ONLY for scripted
ones: agent p's rollout r scores ``pool[(r + index of p) % 4]`` with pool = (the expert's output for that prompt,
an empty operation, the expert's output, unparseable text), so rollouts differ in which parts wrote memory.
Generation, scoring, the advantage rewrite and the gradient step are real. Consequences, stated plainly:

* the rewards are the same in every mode by construction (weights scale advantages, never rewards); the mean
  reward is recorded as that check, not as a learning result (a learning comparison needs a model that writes
  valid memory: the GPU learning check);
* what differs between modes, and is recorded: the weight distribution per part (mean weight, share of rollouts in
  which the part's agent is the dominant one, weight histogram), the mean absolute attributed advantage, how far
  the weights moved from the start (L2 of the parameter change), and the step time.

    python benchmarks/compare_attribution.py          # records results/attribution_modes.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_adrpo import build_prompts

RESULTS = Path(__file__).resolve().parent / "results" / "attribution_modes.json"
MODES = ("retrieval_share", "answer_hits", "ablation")
UNPARSEABLE = "I will remember that."


def scripted_completion(row: dict[str, Any], rollout: int) -> str:
    """Agent ``row['part']``'s rollout ``rollout``: expert, empty, expert, unparseable, shifted by the part's index."""
    from components.memory.types import PARTS

    empty = '{"operation": "SKIP"}' if row["part"] == "core" else "[]"
    pool = (row["expert_output"], empty, row["expert_output"], UNPARSEABLE)
    return pool[(rollout + PARTS.index(row["part"])) % len(pool)]


def scripted_reward(cfg: Any, count_tokens: Any) -> Any:
    """An ``ADRPOReward`` scoring ``scripted_completion`` texts in place of the generated ones; keeps every step's
    ``GroupScores`` in ``history``."""
    from components.config import MemoryConfig
    from components.rewards import make_judge
    from components.training import adrpo

    class ScriptedReward(adrpo.ADRPOReward):
        history: list[Any]

        def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> list[float]:
            seen: Counter[str] = Counter()
            scripted = []
            for index in range(len(completions)):
                row = {key: kwargs[key][index] for key in ("prompt_id", "part", "expert_output")}
                scripted.append(scripted_completion(row, seen[row["prompt_id"]]))
                seen[row["prompt_id"]] += 1
            rewards = super().__call__(prompts, scripted, **kwargs)
            self.history.append(self.last.scores)
            return rewards

    reward = ScriptedReward(cfg, make_judge(cfg), count_tokens, MemoryConfig(embedder="hashing"))
    reward.history = []
    return reward


def run_mode(cfg: Any, rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Train ``steps`` ADRPO steps from a fresh copy of the model; the mode's figures."""
    import numpy as np
    from datasets import Dataset

    from components.llm.model_assets import load_model_folder, normalise_tokenizer
    from components.memory.types import PARTS
    from components.training import adrpo
    from components.training.adrpo_trainer import ADRPOTrainer
    from components.training.callbacks import TrainingLog, log_forwarder

    model, tokenizer = load_model_folder(cfg.model_name_or_path, "float32")
    normalise_tokenizer(model, tokenizer)
    tokenizer.padding_side = "left"
    start = {name: p.detach().clone() for name, p in model.named_parameters()}

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    reward = scripted_reward(cfg, count_tokens)
    log = TrainingLog()
    trainer = ADRPOTrainer(
        model=model,
        args=adrpo.grpo_args(replace(cfg, max_steps=steps)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[log_forwarder(None, log)],
        adrpo_reward=reward,
    )
    trainer.train()
    moved = math.sqrt(sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in trainer.model.named_parameters()))
    scores = [score for step in reward.history for score in step.flat()]
    per_rollout = [w for step in reward.history for group in step.groups for w in group.weights]
    step_logs = [e for e in log.entries if "adrpo/advantage_abs_mean" in e]
    weights: dict[str, Any] = {}
    for part in PARTS:
        values = [w[part] for w in per_rollout]
        weights[part] = {
            "mean": round(statistics.fmean(values), 4),
            "dominant_share": round(
                statistics.fmean(float(w[part] > 1 and w[part] == max(w.values())) for w in per_rollout), 4
            ),
            "histogram": {f"{k:g}": v for k, v in sorted(Counter(round(x, 4) for x in values).items())},
        }
    return {
        "steps": len(reward.history),
        "rollouts_weighted": len(per_rollout),
        "reward_mean": round(float(np.mean([s.reward for s in scores])), 4),
        "reward_mean_per_step": [round(step.stats()["reward_mean"], 4) for step in reward.history],
        "format_pass_rate": round(float(np.mean([s.format_ok for s in scores])), 4),
        "weights_per_part": weights,
        "advantage_abs_mean": round(statistics.fmean(e["adrpo/advantage_abs_mean"] for e in step_logs), 4),
        "parameter_change_l2": round(moved, 6),
        "memories_judged_per_step": round(statistics.fmean(s.memories_judged for s in reward.history), 1),
        "step_seconds_median": round(statistics.median(log.step_seconds), 3),
        "reward_seconds_median": round(statistics.median(reward.call_seconds), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="ADRPO steps per mode (one session each)")
    parser.add_argument("--generations", type=int, default=4, help="G: rollouts per agent prompt")
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-2, help="large: the tiny model must visibly move")
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=4, help="sessions per conversation")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    from components.config import ADRPOConfig
    from components.llm.tiny import build_tiny_model
    from components.training import adrpo

    results = {}
    with tempfile.TemporaryDirectory(prefix="compare-attribution-") as tmp:
        root = Path(tmp)
        rows = build_prompts(root / "data", args.conversations, args.sessions)
        model = build_tiny_model(root / "tiny")
        base = ADRPOConfig(
            model_name_or_path=str(model),
            num_generations=args.generations,
            learning_rate=args.learning_rate,
            max_completion_length=args.completion_tokens,
            max_prompt_length=4096,
            save_steps=0,
            seed=0,
            checkpoint_dir=str(root / "checkpoints"),
        )
        ordered, _ = adrpo.order_by_session(rows, seed=base.seed)
        batch = ordered[: 4 * args.steps]  # the same sessions, in the same order, for every mode
        for mode in MODES:
            results[mode] = run_mode(replace(base, attribution=mode), batch, args.steps)
            print(mode, json.dumps(results[mode]), flush=True)
    record = {
        "command": " ".join(["python benchmarks/compare_attribution.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU only",
        "torch_threads": args.threads,
        "note": "shared machine: the seconds are noisy. Completions are scripted at scoring time (see the module "
        "docstring): the rewards are identical across modes by construction; the weights, advantages, parameter "
        "change and step time are what the modes change.",
        "tiny_model": "build_tiny_model defaults (hidden 32, 2 layers)",
        "sessions": [f"{r['conversation_id']}:{r['session_id']}" for r in batch[::4]],
        "settings": {
            "num_generations": base.num_generations,
            "learning_rate": base.learning_rate,
            "max_completion_tokens": base.max_completion_length,
            "attribution_alpha": base.attribution_alpha,
            "judge": base.judge,
            "answer_top_k": base.answer_top_k,
            "seed": base.seed,
        },
        "modes": results,
    }
    if not args.no_record:
        RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
