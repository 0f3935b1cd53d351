"""Honest learning check of ADRPO on the default CPU profile (SmolLM2-135M-Instruct): base vs sft vs adrpo.

Inputs are the pipeline's own outputs under the repository root (``params.yaml`` paths): ``models/base``,
``models/sft`` (the warm-up), ``data/qa/prompts`` (rl split), ``data/dialogues/eval.jsonl`` and ``data/qa/eval.jsonl``.
Produce them first with ``memforge stage prepare_model`` / ``ingest`` / ``expert`` / ``synth_qa`` / ``sft``.

1. ADRPO run: ``params.adrpo`` (policy ``models/sft``, its learning rate, G, lengths, judge, attribution) for
   ``--steps`` steps, one session per step, on the ``--steps`` rl sessions with the shortest agent prompts (CPU
   time grows with prompt length); the model goes to ``--workdir``, never to ``models/adrpo``.
2. Mean ADRPO reward (format gate x containment task reward x (1 - lambda x length penalty), ``score_groups``
   exactly as in training) of base, sft and adrpo on a fixed set: the first ``--reward-sessions`` of those
   training sessions, four agent prompts each, G sampled completions per prompt at the training temperature with
   the same seed for every model. Also the share of outputs that parse and apply (format gate passed). When the
   ADRPO run left the weights exactly as they were (no rollout earned a reward, so every advantage was 0), adrpo's
   figures are sft's: same weights and seed, same text.
3. Held-out session QA: for the ``--qa-conversations`` eval-split conversations with the shortest sessions, cut to
   their first ``--qa-sessions`` sessions, each model writes the memory (greedy, as the four agents, session by
   session: ``build_memories`` with an ``LLMTeacher``); the eval-split QA rows about those sessions are then judged
   with the containment judge on the final memory. The oracle/heuristic expert writer is the reference.

    python benchmarks/learning_check_adrpo.py        # records results/learning_check_adrpo.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = Path(__file__).resolve().parent / "results" / "learning_check_adrpo.json"
SEED = 1234


def session_key(row: dict[str, Any]) -> str:
    return f"{row['conversation_id']}:{row['session_id']}"


def shortest_sessions(rows: list[dict[str, Any]], tokenizer: Any, count: int) -> list[list[dict[str, Any]]]:
    """The ``count`` sessions (all four agent rows each, in PARTS order) with the fewest prompt tokens in total."""
    from components.memory.types import PARTS

    by_session: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        by_session[session_key(row)][row["part"]] = row
    sizes = []
    for key, parts in by_session.items():
        if set(parts) != set(PARTS):
            continue
        tokens = sum(
            len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"])
            for r in parts.values()
        )
        sizes.append((tokens, key))
    chosen = [key for _, key in sorted(sizes)[:count]]
    return [[by_session[key][part] for part in PARTS] for key in chosen]


def reward_eval(model_dir: str, sessions: list[list[dict[str, Any]]], params: Any, generations: int) -> dict[str, Any]:
    """Sample G completions per agent prompt with ``model_dir`` and score them as ADRPO does."""
    from components.config import BackendConfig
    from components.llm.backends import SamplingParams, create_backend
    from components.memory.embedder import EmbeddingCache, create_embedder
    from components.rewards import groups_from_batch, make_judge, score_groups

    cfg = params.adrpo
    rows = [row for session in sessions for row in session]
    backend = create_backend(BackendConfig(model=model_dir, batch_size=8, seed=SEED))
    started = time.perf_counter()
    try:
        sampling = SamplingParams(cfg.max_completion_length, cfg.temperature, cfg.top_p, n=generations, seed=SEED)
        generated = backend.generate([row["prompt"] for row in rows], sampling)
        seconds = time.perf_counter() - started
        batch_rows = [row for row in rows for _ in range(generations)]
        texts = [g.text for gens in generated for g in gens]
        cache = EmbeddingCache(create_embedder(params.memory))
        groups, _ = groups_from_batch(batch_rows, texts, cache=cache, memory_config=params.memory)
        scores = score_groups(groups, make_judge(cfg), cfg, backend.count_tokens)
    finally:
        backend.close()
    stats = scores.stats()
    flat = scores.flat()
    errors: dict[str, int] = defaultdict(int)
    for score in flat:
        if score.error:
            errors[score.error.split(":", 1)[0]] += 1
    samples = {
        part: next((t for r, t in zip(batch_rows, texts, strict=True) if r["part"] == part), "")
        for part in ("core", "semantic")
    }
    return {
        "completions": len(flat),
        "valid_outputs": sum(s.format_ok for s in flat),
        "reward_mean": round(stats["reward_mean"], 4),
        "reward_std": round(stats["reward_std"], 4),
        "task_reward_mean": round(stats["task_reward_mean"], 4),
        "format_failure_rate": round(stats["format_failure_rate"], 4),
        "format_failure_rate_per_part": {
            p: round(stats[f"format_failure_rate_{p}"], 4) for p in ("core", "episodic", "semantic", "procedural")
        },
        "reward_mean_per_part": {
            p: round(stats[f"reward_mean_{p}"], 4) for p in ("core", "episodic", "semantic", "procedural")
        },
        "failures_by_stage": dict(errors),
        "generation_seconds": round(seconds, 1),
        "sample_outputs": {part: text[:300] for part, text in samples.items()},
    }


def qa_conversations(path: Path, count: int, sessions: int) -> list[Any]:
    """The ``count`` eval conversations with the least text in their first ``sessions`` sessions, cut there."""
    from components.dialogue.loaders import load_jsonl

    conversations = [item.conversation for item in load_jsonl(path)]
    cut = [replace(c, sessions=c.sessions[:sessions]) for c in conversations]
    size = {c.conversation_id: sum(len(t.text) for s in c.sessions for t in s.turns) for c in cut}
    return sorted(cut, key=lambda c: (size[c.conversation_id], c.conversation_id))[:count]


def qa_rows(path: Path, conversations: list[Any]) -> list[dict[str, Any]]:
    """Eval QA rows whose session and evidence sessions lie in the (cut) conversations."""
    from components.io import iter_jsonl

    kept = {c.conversation_id: {s.session_id for s in c.sessions} for c in conversations}
    rows = []
    for _, row in iter_jsonl(path):
        sessions = kept.get(row["conversation_id"])
        if sessions and row["session_id"] in sessions and set(row.get("evidence_sessions") or []) <= sessions:
            rows.append(row)
    return rows


def qa_eval(writer: str, conversations: list[Any], rows: list[dict[str, Any]], params: Any) -> dict[str, Any]:
    """Build each conversation's memory with ``writer`` (a model folder, or 'expert'), judge the QA rows on it."""
    from components.config import BackendConfig
    from components.llm.backends import create_backend
    from components.memory.construction import bank_factory, build_memories
    from components.memory.teachers import LLMTeacher, make_teacher
    from components.rewards import ContainmentJudge, JudgeItem

    backend = None
    if writer == "expert":
        teacher = make_teacher(replace(params, expert=replace(params.expert, teacher="oracle")))
    else:
        backend = create_backend(
            BackendConfig(model=writer, batch_size=8, max_new_tokens=params.adrpo.max_completion_length)
        )
        teacher = LLMTeacher(backend)
    ok: list[bool] = []
    started = time.perf_counter()
    try:
        banks = build_memories(
            conversations,
            teacher,
            bank_factory(params),
            params.memory.top_k,
            on_step=lambda step: ok.extend(o.ok for o in step.outcomes.values()),
        )
    finally:
        if backend is not None:
            backend.close()
    seconds = time.perf_counter() - started
    bank_of = {c.conversation_id: bank for c, bank in zip(conversations, banks, strict=True)}
    items = [
        JudgeItem(bank_of[r["conversation_id"]], r["question"], r["answer"], str(r.get("session_date", ""))[:10])
        for r in rows
    ]
    verdicts = ContainmentJudge(params.adrpo.answer_top_k).judge(items)
    return {
        "questions": len(items),
        "correct": sum(v.correct for v in verdicts),
        "accuracy": round(sum(v.correct for v in verdicts) / max(len(items), 1), 4),
        "agent_outputs_applied": f"{sum(ok)}/{len(ok)}",
        "memory_entries": sum(
            len(bank.entries(part)) for bank in banks for part in ("episodic", "semantic", "procedural")
        ),
        "core_chars": sum(len(bank.core) for bank in banks),
        "write_seconds": round(seconds, 1),
    }


def max_weight_change(before: str, after: str) -> float:
    """Largest absolute difference between two model folders' weights (same architecture)."""
    from safetensors.torch import load_file

    first, second = (
        load_file(str(Path(before) / "model.safetensors")),
        load_file(str(Path(after) / "model.safetensors")),
    )
    return max(float((first[name].float() - second[name].float()).abs().max()) for name in first)


def check_inputs(params: Any) -> None:
    needed = [
        (Path(params.model.output_dir), "memforge stage prepare_model"),
        (Path(params.adrpo.model_name_or_path), "memforge stage sft"),
        (Path(params.synth_qa.output_dir) / "prompts", "memforge stage synth_qa"),
        (Path(params.ingest.output_dir) / "eval.jsonl", "memforge stage ingest"),
        (Path(params.synth_qa.output_dir) / "eval.jsonl", "memforge stage synth_qa"),
    ]
    missing = [f"{path} (run: {command})" for path, command in needed if not path.exists()]
    if missing:
        raise SystemExit("learning check: missing pipeline outputs:\n  " + "\n  ".join(missing))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="ADRPO steps (one rl session each)")
    parser.add_argument("--reward-sessions", type=int, default=2, help="sessions of the fixed reward set")
    parser.add_argument("--generations", type=int, default=2, help="sampled completions per prompt (reward set)")
    parser.add_argument("--qa-conversations", type=int, default=2)
    parser.add_argument("--qa-sessions", type=int, default=2, help="first sessions of each QA conversation")
    parser.add_argument("--workdir", default="/tmp/memforge-learning-check")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: on a shared 2-core machine 2 threads thrash)"
    )
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)

    from datasets import Dataset
    from transformers import AutoTokenizer

    from components.config import load_params
    from components.stages.adrpo import prompts_path
    from components.training.adrpo import load_prompts, train_adrpo

    params = load_params("params.yaml")
    check_inputs(params)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(params.adrpo.model_name_or_path)
    rl = load_prompts(prompts_path(params), ("rl",)).to_list()
    train_sessions = shortest_sessions(rl, tokenizer, max(args.steps, args.reward_sessions))
    reward_sessions = train_sessions[: args.reward_sessions]
    print(f"train sessions: {[session_key(s[0]) for s in train_sessions]}", flush=True)

    cfg = replace(
        params.adrpo,
        max_steps=args.steps,
        save_steps=0,
        checkpoint_dir=str(work / "checkpoints"),
        output_dir=str(work / "adrpo"),
        report_path=str(work / "adrpo.json"),
    )
    adrpo_started = time.perf_counter()
    outcome = train_adrpo(
        cfg, Dataset.from_list([row for s in train_sessions for row in s]), cfg.output_dir, params.memory
    )
    adrpo_seconds = time.perf_counter() - adrpo_started
    print(
        f"adrpo: {outcome.steps} steps in {adrpo_seconds:.0f} s; reward per step {outcome.reward_history()}", flush=True
    )

    moved = max_weight_change(params.adrpo.model_name_or_path, cfg.output_dir)
    print(f"adrpo vs sft: largest absolute weight change {moved:.3g}", flush=True)
    models = {"base": params.model.output_dir, "sft": params.adrpo.model_name_or_path, "adrpo": cfg.output_dir}
    # identical weights generate identical text from the same seed: measured once, reported for both
    evaluated = {name: folder for name, folder in models.items() if not (name == "adrpo" and moved == 0.0)}
    rewards = {}
    for name, folder in evaluated.items():
        rewards[name] = reward_eval(folder, reward_sessions, params, args.generations)
        print(name, json.dumps({k: v for k, v in rewards[name].items() if k != "sample_outputs"}), flush=True)

    conversations = qa_conversations(
        Path(params.ingest.output_dir) / "eval.jsonl", args.qa_conversations, args.qa_sessions
    )
    rows = qa_rows(Path(params.synth_qa.output_dir) / "eval.jsonl", conversations)
    qa = {}
    for name, writer in [("expert", "expert"), *evaluated.items()]:
        qa[name] = qa_eval(writer, conversations, rows, params)
        print("qa", name, json.dumps(qa[name]), flush=True)
    if "adrpo" not in evaluated:
        note = "weights identical to sft (no rollout earned a reward, so every advantage was 0): sft's figures"
        rewards["adrpo"] = {**rewards["sft"], "note": note}
        qa["adrpo"] = {**qa["sft"], "note": note}
    total = time.perf_counter() - started

    record = {
        "command": " ".join(["python benchmarks/learning_check_adrpo.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU only",
        "torch_threads": args.threads,
        "note": "shared machine: other CPU jobs ran at the same time; the seconds are noisy",
        "seconds_total": round(total, 1),
        "profile": {
            "base": params.model.name_or_path,
            "sft": {
                "steps": _card(params.adrpo.model_name_or_path).get("steps"),
                "learning_rate": params.sft.learning_rate,
            },
            "adrpo": {
                "steps": outcome.steps,
                "learning_rate": cfg.learning_rate,
                "num_generations": cfg.num_generations,
                "beta": cfg.beta,
                "max_completion_length": cfg.max_completion_length,
                "judge": cfg.judge,
                "attribution": cfg.attribution,
                "embedder": params.memory.embedder,
            },
        },
        "adrpo_run": {
            "sessions": [session_key(s[0]) for s in train_sessions[: args.steps]],
            "seconds": round(adrpo_seconds, 1),
            "seconds_per_step": outcome.metrics()["seconds_per_step"],
            "reward_per_step": outcome.reward_history(),
            "train_loss": outcome.train_loss,
            "max_abs_weight_change_vs_sft": moved,
        },
        "reward_set": {
            "sessions": [session_key(s[0]) for s in reward_sessions],
            "prompts": 4 * len(reward_sessions),
            "completions_per_prompt": args.generations,
            "temperature": cfg.temperature,
            "seed": SEED,
        },
        "mean_reward": rewards,
        "heldout_qa": {
            "conversations": [c.conversation_id for c in conversations],
            "sessions_per_conversation": args.qa_sessions,
            "judge": "containment",
            "by_writer": qa,
        },
    }
    print(json.dumps({k: record[k] for k in ("mean_reward", "heldout_qa")}, indent=1))
    if not args.no_record:
        RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _card(folder: str) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / "memforge_model.json").read_text(encoding="utf-8")).get("sft", {})
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    main()
