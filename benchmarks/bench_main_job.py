"""The main job on the embedded default: `memforge run` (what `make run` runs) from a clean clone, per stage.

    python benchmarks/bench_main_job.py                  # the whole flow; records results/main_job.json "after"
    python benchmarks/bench_main_job.py --mode stages    # each stage alone, in order: wall time and peak RSS

The repository's committed HEAD is cloned into a temporary folder and run there with this interpreter's
environment (its `bin` first on PATH, the clone first on PYTHONPATH so the clone's code runs, not an editable
install's) and the Makefile's exported variables, offline. Nothing of the working tree is touched.

* ``pipeline``: `memforge run` (Prefect's temporary server, one `dvc repro --single-item` task per stage). Each
  output line is time-stamped as it arrives: a task runs from its "running ... --single-item NAME" line to the next
  "Finished in state" line, so a stage's task time includes `dvc` and the stage process's start-up. The stage's
  own time is its MLflow run's (opened after the imports). ``outside_tasks_s`` is the rest: the flow's start
  (the temporary Prefect server), its MLflow parent run and its end.
* ``stages``: `python -m components.cli stage NAME` for every stage in order, each in a fresh process, without
  DVC or Prefect: wall time, CPU time and peak RSS per stage.

Target (issue 11): the whole pipeline within 12 minutes on 2 cores. Seconds vary with other jobs on the machine;
the 1-minute load average before and after each run is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "main_job.json"
MAKEFILE_ENV = {
    "GX_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}
TASK_START = re.compile(r"--single-item (\w+)")
TASK_END = "Finished in state"
TARGET_S = 12 * 60


def clone(ref: str, into: Path) -> tuple[Path, str]:
    """A clean clone of ``ref`` of this repository; its folder and commit."""
    target = into / "memforge"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True)
    subprocess.run(["git", "-C", str(target), "checkout", "--quiet", ref], check=True)
    commit = subprocess.run(
        ["git", "-C", str(target), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return target, commit


def run_environment(repo: Path, home: Path) -> dict[str, str]:
    """The environment `make run` gives `memforge run`, with the clone's code first and its own Prefect home."""
    env = dict(os.environ)
    env.update(MAKEFILE_ENV)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(repo)
    env["PREFECT_HOME"] = str(home / "prefect")
    return env


def stamped_lines(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[tuple[float, str]]:
    """Run ``command``; yield (seconds since start, line) for each output line and copy it to ``log``."""
    started = time.perf_counter()
    with (
        log.open("w", encoding="utf-8") as sink,
        subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.write(line)
            yield time.perf_counter() - started, line.rstrip()
        if proc.wait() != 0:
            raise SystemExit(f"{' '.join(command)} exited {proc.returncode}; log: {log}")


def task_seconds(lines: Iterator[tuple[float, str]]) -> tuple[dict[str, float], float]:
    """Per stage, the wall seconds of its Prefect task; and the whole run's seconds."""
    tasks: dict[str, float] = {}
    current: tuple[str, float] | None = None
    now = 0.0
    for now, line in lines:
        if current is None and (match := TASK_START.search(line)):
            current = (match.group(1), now)
        elif current is not None and TASK_END in line:
            tasks[current[0]] = round(now - current[1], 1)
            current = None
    return tasks, round(now, 1)


def mlflow_stage_seconds(repo: Path) -> dict[str, float]:
    """Each stage's MLflow run duration in the clone's local store (the latest run per stage)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / '.mlflow' / 'mlflow.db'}")
    seconds: dict[str, float] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
            stage = run.data.tags.get("memforge.stage")
            if stage and stage != "pipeline" and run.info.end_time:
                seconds[stage] = round((run.info.end_time - run.info.start_time) / 1000, 1)
    return seconds


def bench_pipeline(ref: str, workdir: Path) -> dict[str, object]:
    repo, commit = clone(ref, workdir)
    env = run_environment(repo, workdir)
    load_before = os.getloadavg()[0]
    tasks, total = task_seconds(stamped_lines(["memforge", "run"], repo, env, workdir / "memforge_run.log"))
    stages = mlflow_stage_seconds(repo)
    return {
        "mode": "pipeline",
        "command": "memforge run",
        "commit": commit,
        "total_s": total,
        "target_s": TARGET_S,
        "met": total <= TARGET_S,
        "task_s": tasks,
        "stage_mlflow_s": stages,
        "outside_tasks_s": round(total - sum(tasks.values()), 1),
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def bench_stages(ref: str, workdir: Path) -> dict[str, object]:
    repo, commit = clone(ref, workdir)
    env = run_environment(repo, workdir)
    sys.path.insert(0, str(repo))
    from components.stages.registry import STAGE_NAMES

    rows: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()[0]
    for stage in STAGE_NAMES:
        log = workdir / f"{stage}.log"
        started = time.perf_counter()
        with log.open("w", encoding="utf-8") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "components.cli", "stage", stage], cwd=repo, env=env, stdout=sink, stderr=sink
            )
            _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"stage {stage} failed; log: {log}")
        rows[stage] = {
            "wall_s": round(time.perf_counter() - started, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        }
        print(stage, rows[stage], flush=True)
    return {
        "mode": "stages",
        "command": "python -m components.cli stage NAME, each stage in order",
        "commit": commit,
        "total_s": round(sum(r["wall_s"] for r in rows.values()), 1),
        "stages": rows,
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


@contextlib.contextmanager
def scratch(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A temporary folder for clones and logs: kept (and named) when the benchmark fails or ``keep``, else removed."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    except BaseException:
        print(f"failed; the clones and logs are kept in {workdir}", file=sys.stderr)
        raise
    if keep:
        print(f"clones and logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def record(label: str, result: dict[str, object]) -> None:
    """Write ``result`` under ``label`` into results/main_job.json, keeping the other labels."""
    data = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    result["recorded"] = time.strftime("%Y-%m-%d")
    data[label] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("pipeline", "stages"), default="pipeline")
    parser.add_argument("--ref", default="HEAD", help="commit to clone and run")
    parser.add_argument("--label", help="key in results/main_job.json (default: after_<mode>)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    bench = bench_pipeline if args.mode == "pipeline" else bench_stages
    with scratch("memforge-main-job-", keep=args.keep) as workdir:
        result = bench(args.ref, workdir)
    record(args.label or f"after_{args.mode}", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
