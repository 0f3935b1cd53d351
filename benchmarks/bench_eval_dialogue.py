"""eval_dialogue on the default CPU subset: sessions written per second, questions answered and judged per second.

    python benchmarks/bench_eval_dialogue.py --workspace PATH    # records results/eval_dialogue.json

``PATH`` is a finished pipeline workspace (its ``models/`` and ``data/`` are read, never written): a temporary
folder gets links to them, and the stage runs there as DVC runs it, ``python -m components.cli stage
eval_dialogue`` in a fresh process, with this repository's code and ``params.yaml`` (the default profile) and the
judges the issue names for throughput (``containment``, ``f1``). Its reports and MLflow store stay in the temporary
folder.

Read back from the run: the stage's wall time (process start to exit: imports, model loads and MLflow included);
per memory method (each writer and the expert teacher), the seconds spent writing (``write_seconds/<method>``,
model loading excluded) and the sessions it wrote; per method, the seconds spent answering
(``answer_seconds/<method>``: retrieval, prompts and one batched generate call) and the judges' seconds
(``judge_seconds``, all methods at once, shared out per answer).

Target (issue 10): the answer-and-judge step at least 10x faster than the memory-writing step per question, i.e.
for each writer (write seconds / questions) / (answer + judge seconds / questions) >= 10. The ``expert`` baseline
is reported too but not held to it: with the default ``expert.teacher: oracle`` it writes by rule, not by model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.evaluation.dialogue import MEMORY_BASELINES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "eval_dialogue.json"
ENV = {
    "GX_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
JUDGES = "[containment,f1]"
TARGET_RATIO = 10.0


def link_workspace(workspace: Path, into: Path) -> None:
    """``into/models`` and ``into/data`` point at the workspace's: the stage reads them where params expect."""
    for name in ("models", "data"):
        source = workspace / name
        if not source.is_dir():
            raise SystemExit(f"{source}: not found; give a finished pipeline workspace (models/ and data/)")
        (into / name).symlink_to(source.resolve(), target_is_directory=True)


def run_stage(folder: Path) -> tuple[float, float]:
    """The stage in a fresh process in ``folder``: wall and CPU seconds."""
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "components.cli",
        "--params",
        str(ROOT / "params.yaml"),
        "stage",
        "eval_dialogue",
        "-S",
        f"eval_dialogue.judges={JUDGES}",
    ]
    log = folder / "eval_dialogue.log"
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        proc = subprocess.Popen(command, cwd=folder, env=env, stdout=sink, stderr=sink)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"eval_dialogue failed; log: {log}\n{log.read_text(encoding='utf-8')[-3000:]}")
    return round(wall, 1), round(usage.ru_utime + usage.ru_stime, 1)


def run_metrics(folder: Path) -> dict[str, float]:
    """The metrics (timings included) of the eval_dialogue run in the folder's MLflow store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / '.mlflow' / 'mlflow.db'}")
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id], "tags.`memforge.stage` = 'eval_dialogue'")
        if runs:
            return dict(runs[0].data.metrics)
    raise SystemExit(f"no eval_dialogue run in {folder / '.mlflow'}")


def methods_of(report: dict) -> list[tuple[str, dict]]:
    return list(report["methods"].items())


def throughput(report: dict, metrics: dict[str, float], sessions: int) -> dict[str, object]:
    """Per method: sessions written per second; questions answered (and judged) per second; the target ratio."""
    questions = int(report["questions"])
    methods = list(report["methods"])
    judge_share = metrics["judge_seconds"] / (questions * len(methods))  # judged all at once: seconds per answer
    rows: dict[str, dict[str, float]] = {}
    for method in methods:
        answer_s = metrics[f"answer_seconds/{method}"]
        answer_judge_s = answer_s + judge_share * questions
        row = {
            "answer_s": answer_s,
            "questions_answered_per_s": round(questions / answer_s, 2),
            "questions_answered_and_judged_per_s": round(questions / answer_judge_s, 2),
        }
        write_s = metrics.get(f"write_seconds/{method}")
        if write_s is not None:
            row.update(
                write_s=write_s,
                sessions_written_per_s=round(sessions / write_s, 3),
                write_s_per_question=round(write_s / questions, 3),
                answer_judge_s_per_question=round(answer_judge_s / questions, 4),
                write_over_answer_judge=round(write_s / answer_judge_s, 1),
            )
        rows[method] = row
    ratios = [r["write_over_answer_judge"] for m, r in rows.items() if m not in MEMORY_BASELINES and "write_s" in r]
    return {
        "questions": questions,
        "conversations": int(report["conversations"]),
        "sessions_per_memory_method": sessions,
        "judge_s": metrics["judge_seconds"],
        "judged_per_s": round(questions * len(methods) / max(metrics["judge_seconds"], 1e-9), 1),
        "methods": rows,
        "accuracy": {m: {j: v["overall"] for j, v in e.items() if isinstance(v, dict)} for m, e in methods_of(report)},
        "evidence_recall_at_k": {
            m: e["evidence_recall_at_k"] for m, e in methods_of(report) if "evidence_recall_at_k" in e
        },
        "min_write_over_answer_judge": min(ratios),
        "target_ratio": TARGET_RATIO,
        "met": min(ratios) >= TARGET_RATIO,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a finished pipeline workspace")
    parser.add_argument("--no-record", action="store_true", help="print only; leave results/ alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memforge-bench-eval-dialogue-") as tmp:
        folder = Path(tmp)
        link_workspace(args.workspace, folder)
        load_before = os.getloadavg()[0]
        wall, cpu = run_stage(folder)
        report = json.loads((folder / "reports" / "eval_dialogue.json").read_text(encoding="utf-8"))
        result = {
            "command": "python benchmarks/bench_eval_dialogue.py --workspace PATH",
            "stage_command": f"python -m components.cli stage eval_dialogue -S eval_dialogue.judges={JUDGES}",
            "commit": subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip(),
            "stage_wall_s": wall,
            "stage_cpu_s": cpu,
            **throughput(report, run_metrics(folder), int(report["sessions"])),
            "score": report["score"],
            "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "recorded": time.strftime("%Y-%m-%d"),
        }
    print(json.dumps(result, indent=2))
    if not args.no_record:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
