"""The learning check on whatever profile is applied (``params.yaml``): does training work?

Run ``make learning-check`` (the pipeline's stages this needs, then this script). It records where the figures were
measured (CPU, or which GPU) and writes ``results/learning_check_<profile>_<cpu|gpu>.json``.

MemBuilder (``--part membuilder``), on the pipeline's ``models/base``, ``models/sft``, ``data/qa`` and dialogues:

1. ADRPO runs from ``models/sft`` with the profile's ``params.adrpo`` (steps: ``adrpo.max_steps``; policy, learning
   rate, G, lengths, judge), one session per step on the rl sessions with the shortest agent prompts, once per
   attribution mode in ``--attribution`` (default: the profile's mode, then the other of ``retrieval_share``, the
   published rule, and ``answer_hits``, memforge's variant); each model goes to ``--workdir``, never ``models/``.
2. Mean ADRPO reward (format gate x containment task reward x (1 - lambda x length penalty), ``score_groups``
   exactly as in training) of base, sft and each adrpo model on a fixed set: ``--reward-sessions`` training
   sessions, four agent prompts each, G sampled completions per prompt at the training temperature with the same
   seed for every model; also the outputs that parse and apply (format gate passed). An ADRPO run that left the
   weights exactly as they were (every advantage 0) is reported with sft's figures.
3. Held-out session QA: the ``--qa-conversations`` eval-split conversations with the shortest sessions, cut to
   their first ``--qa-sessions`` sessions; each model writes the memory (greedy, the four agents, session by
   session); at most ``--qa-questions`` eval QA rows about those sessions are judged with the containment judge.
   The oracle expert writer is the reference.

MemAgent (``--part memagent``): RULER-HotpotQA substring exact match at the profile's evaluation lengths for the
base reader (``models/base``), the warmed-up reader (``checkpoints/memagent/warmup``, memforge's addition for small
models) and the GRPO reader (``models/memagent``), with the full-context baseline (the base model reading the input
cut to its window) beside them.

    make learning-check                                    # the pipeline's stages, then this script
    python benchmarks/learning_check.py --part membuilder  # one part (after the stages ran)
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

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# held-out QA sizes by machine: the CPU's fit its minutes; the GPU's are the issue-13 table's 80 questions
QA_SIZES = {
    "cpu": {"qa_conversations": 2, "qa_sessions": 2, "qa_questions": 0},
    "gpu": {"qa_conversations": 4, "qa_sessions": 6, "qa_questions": 80},
}
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


def device() -> str:
    """Where the figures are measured: the GPU's name, or the CPU with its core count."""
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return f"CPU: {platform.machine()}, {os.cpu_count()} cores (torch {torch.__version__})"


def applied_profile(params_file: Path) -> str:
    """The profile named in ``params.yaml``'s header (``# profile: NAME``), or ``edited``."""
    for line in params_file.read_text(encoding="utf-8").splitlines()[:5]:
        if line.startswith("# profile: "):
            return line.removeprefix("# profile: ").strip()
    return "edited"


def check_inputs(needed: list[tuple[Path, str]]) -> None:
    missing = [f"{path} (run: {command})" for path, command in needed if not path.exists()]
    if missing:
        raise SystemExit(
            "learning check: missing pipeline outputs (make learning-check runs them):\n  " + "\n  ".join(missing)
        )


def membuilder_inputs(params: Any) -> list[tuple[Path, str]]:
    return [
        (Path(params.model.output_dir), "dvc repro prepare_model"),
        (Path(params.adrpo.model_name_or_path), "dvc repro sft"),
        (Path(params.synth_qa.output_dir) / "prompts", "dvc repro synth_qa"),
        (Path(params.ingest.output_dir) / "eval.jsonl", "dvc repro ingest"),
        (Path(params.synth_qa.output_dir) / "eval.jsonl", "dvc repro synth_qa"),
    ]


def adrpo_run(params: Any, sessions: list[list[dict[str, Any]]], steps: int, mode: str, work: Path) -> dict[str, Any]:
    """One ADRPO run of ``steps`` steps with attribution ``mode`` from the profile's policy, into ``work/mode``."""
    from datasets import Dataset

    from components.training.adrpo import train_adrpo

    out = work / f"adrpo-{mode}"
    cfg = replace(
        params.adrpo,
        attribution=mode,
        max_steps=steps,
        save_steps=0,
        checkpoint_dir=str(out / "checkpoints"),
        output_dir=str(out / "model"),
        report_path=str(out / "adrpo.json"),
    )
    started = time.perf_counter()
    outcome = train_adrpo(cfg, Dataset.from_list([row for s in sessions for row in s]), cfg.output_dir, params.memory)
    seconds = time.perf_counter() - started
    moved = max_weight_change(params.adrpo.model_name_or_path, cfg.output_dir)
    print(
        f"adrpo[{mode}]: {outcome.steps} steps in {seconds:.0f} s; reward per step {outcome.reward_history()}; "
        f"largest weight change vs sft {moved:.3g}",
        flush=True,
    )
    return {
        "folder": cfg.output_dir,
        "steps": outcome.steps,
        "seconds": round(seconds, 1),
        "seconds_per_step": outcome.timings()["seconds_per_step"],
        "reward_per_step": outcome.reward_history(),
        "train_loss": outcome.train_loss,
        "max_abs_weight_change_vs_sft": moved,
    }


def membuilder_check(params: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Base, sft, the ADRPO models of each attribution mode and the expert: mean reward and held-out QA."""
    from transformers import AutoTokenizer

    from components.stages.adrpo import prompts_path
    from components.training.adrpo import load_prompts

    check_inputs(membuilder_inputs(params))
    steps = args.steps or params.adrpo.max_steps
    generations = args.generations or params.adrpo.num_generations
    tokenizer = AutoTokenizer.from_pretrained(params.adrpo.model_name_or_path)
    rl = load_prompts(prompts_path(params), ("rl",)).to_list()
    train_sessions = shortest_sessions(rl, tokenizer, max(steps, args.reward_sessions))
    reward_sessions = train_sessions[: args.reward_sessions]
    print(f"train sessions: {[session_key(s[0]) for s in train_sessions]}", flush=True)

    modes = list(dict.fromkeys([params.adrpo.attribution, *args.attribution]))
    runs = {mode: adrpo_run(params, train_sessions[:steps], steps, mode, work) for mode in modes}
    models = {"base": params.model.output_dir, "sft": params.adrpo.model_name_or_path}
    models |= {adrpo_name(mode, params): run["folder"] for mode, run in runs.items()}
    # identical weights generate identical text from the same seed: measured once, reported as sft's
    unchanged = {adrpo_name(mode, params) for mode, run in runs.items() if run["max_abs_weight_change_vs_sft"] == 0.0}
    evaluated = {name: folder for name, folder in models.items() if name not in unchanged}

    rewards = {}
    for name, folder in evaluated.items():
        rewards[name] = reward_eval(folder, reward_sessions, params, generations)
        print(name, json.dumps({k: v for k, v in rewards[name].items() if k != "sample_outputs"}), flush=True)
    conversations = qa_conversations(
        Path(params.ingest.output_dir) / "eval.jsonl", args.qa_conversations, args.qa_sessions
    )
    rows = qa_rows(Path(params.synth_qa.output_dir) / "eval.jsonl", conversations)
    if args.qa_questions:
        rows = rows[: args.qa_questions]
    qa = {}
    for name, writer in [("expert", "expert"), *evaluated.items()]:
        qa[name] = qa_eval(writer, conversations, rows, params)
        print("qa", name, json.dumps(qa[name]), flush=True)
    note = "weights identical to sft (no rollout earned a reward, so every advantage was 0): sft's figures"
    for name in unchanged:
        rewards[name] = {**rewards["sft"], "note": note}
        qa[name] = {**qa["sft"], "note": note}
    cfg = params.adrpo
    return {
        "settings": {
            "base": params.model.name_or_path,
            "sft": {
                "steps": _card(params.adrpo.model_name_or_path).get("steps"),
                "epochs": params.sft.epochs,
                "learning_rate": params.sft.learning_rate,
            },
            "adrpo": {
                "steps": steps,
                "learning_rate": cfg.learning_rate,
                "num_generations": cfg.num_generations,
                "beta": cfg.beta,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "max_completion_length": cfg.max_completion_length,
                "judge": cfg.judge,
                "attribution_modes": modes,
                "embedder": params.memory.embedder,
            },
        },
        "adrpo_runs": {adrpo_name(mode, params): run for mode, run in runs.items()},
        "reward_set": {
            "sessions": [session_key(s[0]) for s in reward_sessions],
            "prompts": 4 * len(reward_sessions),
            "completions_per_prompt": generations,
            "sampled": 4 * len(reward_sessions) * generations,
            "temperature": cfg.temperature,
            "seed": SEED,
        },
        "mean_reward": rewards,
        "heldout_qa": {
            "conversations": [c.conversation_id for c in conversations],
            "sessions_per_conversation": args.qa_sessions,
            "questions": len(rows),
            "judge": "containment",
            "by_writer": qa,
        },
    }


def adrpo_name(mode: str, params: Any) -> str:
    """``adrpo`` for the profile's attribution mode, ``adrpo[mode]`` for a comparison run."""
    return "adrpo" if mode == params.adrpo.attribution else f"adrpo[{mode}]"


def memagent_check(params: Any, args: argparse.Namespace) -> dict[str, Any]:
    """RULER-HotpotQA sub-EM per length: base, warmed-up and GRPO readers, and the full-context baseline."""
    from components.evaluation.longcontext import evaluate, load_eval_samples, summarise
    from components.longcontext.build import EVAL_SET_FILES
    from components.training.reader_warmup import warmup_paths

    warmed_up, _ = warmup_paths(params.memagent.train.checkpoint_dir)
    readers = {
        "base": Path(params.model.output_dir),
        "warmed_up": warmed_up,
        "grpo": Path(params.memagent.train.output_dir),
    }
    hotpotqa = Path(params.longcontext.output_dir) / EVAL_SET_FILES["hotpotqa"]
    check_inputs(
        [
            (hotpotqa, "dvc repro longcontext_data"),
            *[(folder, "dvc repro memagent_train") for name, folder in readers.items() if name != "base"],
        ]
    )
    samples = load_eval_samples([hotpotqa], args.reader_questions)
    by_reader: dict[str, dict[str, float]] = {}
    for name, folder in readers.items():
        evaluated = replace(
            params,
            memagent=replace(
                params.memagent,
                eval=replace(params.memagent.eval, model_name_or_path=str(folder), baseline=name == "base"),
            ),
        )
        started = time.perf_counter()
        summary = summarise(evaluate(evaluated, samples))
        print(f"reader {name}: {time.perf_counter() - started:.0f} s", flush=True)
        for entry in summary:
            method = name if entry["method"] == "memagent" else "full_context"
            by_reader.setdefault(method, {})[str(entry["length"])] = entry["sub_em"]
            by_reader.setdefault(f"{method}/boxed", {})[str(entry["length"])] = entry["boxed"]
    lengths = sorted({s.length_docs for s in samples})
    return {
        "set": str(hotpotqa),
        "lengths_docs": lengths,
        "questions_per_length": len(samples) // max(len(lengths), 1),
        "metric": "sub_em (substring exact match, MemAgent's metric)",
        "readers": {name: str(folder) for name, folder in readers.items()},
        "sub_em": by_reader,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "membuilder", "memagent"), default="all")
    parser.add_argument("--steps", type=int, default=0, help="ADRPO steps per run (0 = the profile's adrpo.max_steps)")
    parser.add_argument(
        "--attribution",
        nargs="*",
        default=["retrieval_share", "answer_hits"],
        help="attribution modes run after the profile's own (repeats are run once)",
    )
    parser.add_argument("--reward-sessions", type=int, default=2, help="sessions of the fixed reward set")
    parser.add_argument(
        "--generations",
        type=int,
        default=0,
        help="completions per prompt in the reward set (0 = adrpo.num_generations)",
    )
    parser.add_argument("--qa-conversations", type=int, help="held-out conversations (default: CPU 2, GPU 4)")
    parser.add_argument("--qa-sessions", type=int, help="first sessions of each (default: CPU 2, GPU 6)")
    parser.add_argument("--qa-questions", type=int, help="cap on held-out questions (default: CPU all, GPU 80)")
    parser.add_argument("--reader-questions", type=int, default=0, help="HotpotQA questions per length (0 = all)")
    parser.add_argument("--workdir", default="/tmp/memforge-learning-check")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads on CPU (0 = torch's default)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.chdir(ROOT)
    from components.config import load_params

    params_file = ROOT / "params.yaml"
    params = load_params(params_file)
    profile = applied_profile(params_file)
    where = device()
    sizes = QA_SIZES["gpu" if where.startswith("GPU") else "cpu"]
    for name, value in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    print(f"learning check: profile {profile}; measured on {where}", flush=True)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "command": " ".join(["python benchmarks/learning_check.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "profile": profile,
        "measured_on": where,
        "python": platform.python_version(),
    }
    if args.part in ("all", "membuilder"):
        record["membuilder"] = membuilder_check(params, args, work)
    if args.part in ("all", "memagent"):
        record["memagent"] = memagent_check(params, args)
    record["seconds_total"] = round(time.perf_counter() - started, 1)
    print(json.dumps({k: v for k, v in record.items() if k != "membuilder"}, indent=1))
    if "membuilder" in record:
        print(json.dumps({k: record["membuilder"][k] for k in ("mean_reward", "heldout_qa")}, indent=1))
    print(f"measured on {where}")
    if not args.no_record:
        kind = "gpu" if where.startswith("GPU") else "cpu"
        path = RESULTS_DIR / f"learning_check_{profile}_{kind}.json"
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"recorded in {path.relative_to(ROOT)}")


def _card(folder: str) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / "memforge_model.json").read_text(encoding="utf-8")).get("sft", {})
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    main()
