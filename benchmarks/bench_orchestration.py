"""Orchestration overhead: the pipeline on the default profile by `dvc repro` alone and through a Prefect deployment
on the local stack (`make up`), in one run, each from its own clean clone of the committed HEAD (one commit for
both, read at the start).

    python benchmarks/bench_orchestration.py          # records results/orchestration.json
    python benchmarks/bench_orchestration.py --keep   # keeps the clones (the dvc repro one holds a fresh dvc.lock)

1. Clone A: `dvc repro` (every stage), then `dvc repro` again, three times: nothing changed, so the no-op time.
2. Clone B: `python infra/stack.py up` (a Prefect server, a process worker and an MLflow server on free loopback
   ports, prefect.yaml's deployments registered from the clone), then a run of `memforge-pipeline/default`
   triggered through the Prefect API as the UI's Run button does, timed from the trigger to its final state (the
   worker's polling, the flow's start and every task included); then three more runs, in which DVC skips every
   stage: the no-op flow run, with where its seconds went (to the flow's start, the flow, each task) from the
   Prefect API.
   `infra/stack.py down` at the end, whatever happened.

Overhead is (deployment - dvc repro) / dvc repro. Targets (issue 14): under 10 %, no-op flow run under 10 s (the
median of the three no-op runs; each is recorded).
Both runs use this interpreter's environment with the clone first on PYTHONPATH (as bench_main_job.py), offline.
Seconds vary with other work on the machine: the 1-minute load average around each run is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_main_job import MAKEFILE_ENV, ROOT, clone, scratch

RESULTS = ROOT / "benchmarks" / "results" / "orchestration.json"
DEPLOYMENT = "memforge-pipeline/default"
OVERHEAD_TARGET = 0.10
NOOP_FLOW_TARGET_S = 10.0
RUN_TIMEOUT_S = 3 * 3600
NOOP_REPEATS = 3  # no-op runs of each kind; the median is compared with the target
BIN = Path(sys.executable).parent


def environment(repo: Path) -> dict[str, str]:
    """This interpreter's tools first on PATH, the clone's code first on PYTHONPATH, the Makefile's settings."""
    env = {**os.environ, **MAKEFILE_ENV}
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(repo)
    return env


def timed(argv: list[str], repo: Path, env: dict[str, str], log: Path) -> float:
    """Run ``argv`` in ``repo`` (output to ``log``); its wall seconds. Exits naming the log when it fails."""
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as sink:
        done = subprocess.run(argv, cwd=repo, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode} in {repo}; log: {log}")
    return round(time.perf_counter() - started, 1)


def bench_dvc(workdir: Path, ref: str) -> dict[str, Any]:
    """`dvc repro` from a clean clone of ``ref``, then no-op `dvc repro`s."""
    repo, commit = clone(ref, workdir / "dvc")
    env = environment(repo)
    load = os.getloadavg()[0]
    full = timed([str(BIN / "dvc"), "repro"], repo, env, workdir / "dvc_repro.log")
    noops = [
        timed([str(BIN / "dvc"), "repro"], repo, env, workdir / f"dvc_repro_noop{i}.log") for i in range(NOOP_REPEATS)
    ]
    print(f"dvc repro: {full} s; no-op dvc repro: {noops} s", flush=True)
    return {"clone": str(repo), "commit": commit, "pipeline_s": full, "noop_s": statistics.median(noops),
            "noop_runs_s": noops,
            "load_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}  # fmt: skip


def stack(repo: Path, env: dict[str, str], command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``python infra/stack.py COMMAND`` of the clone (its state, databases and deployments inside the clone)."""
    argv = [sys.executable, str(repo / "infra" / "stack.py"), command, *extra]
    return subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=900, check=False)


def run_deployment_timed(api_url: str) -> tuple[float, str, dict[str, Any]]:
    """Trigger the deployment through the Prefect API and wait for a final state: its wall seconds, its state and
    where the seconds went (``breakdown``)."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        started = time.perf_counter()
        flow_run = run_deployment(DEPLOYMENT, parameters={}, timeout=0)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                state = client.read_flow_run(flow_run.id).state
                if state is not None and state.is_final():
                    wall = round(time.perf_counter() - started, 1)
                    return wall, str(state.type.value), breakdown(client, flow_run.id, flow_run.created)
                time.sleep(0.5)
    raise SystemExit(f"flow run {flow_run.id} did not finish within {RUN_TIMEOUT_S} s")


def breakdown(client: Any, flow_run_id: Any, created: Any) -> dict[str, Any]:
    """Where a flow run's seconds went, from the Prefect API: from its creation to the flow starting (the worker's
    polling and the flow process's start-up), the flow itself, and each task run."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run = client.read_flow_run(flow_run_id)
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {
        "to_start_s": round((run.start_time - created).total_seconds(), 1),
        "flow_s": round((run.end_time - run.start_time).total_seconds(), 1),
        "tasks_s": {task.name: round(task.total_run_time.total_seconds(), 1) for task in tasks},
    }


def bench_deployment(workdir: Path, ref: str) -> dict[str, Any]:
    """The default deployment on the local stack from a clean clone of ``ref``, then no-op runs of it."""
    repo, commit = clone(ref, workdir / "prefect")
    env = environment(repo)
    up = stack(repo, env, "up", "--prefect-port", "0", "--mlflow-port", "0")
    try:
        if up.returncode != 0:
            raise SystemExit(f"infra/stack.py up failed:\n{up.stderr}")
        state = json.loads((repo / ".memforge" / "stack.json").read_text(encoding="utf-8"))
        load = os.getloadavg()[0]
        full, full_state, _ = run_deployment_timed(state["prefect_api_url"])
        noops = [run_deployment_timed(state["prefect_api_url"]) for _ in range(NOOP_REPEATS)]
        seconds = [wall for wall, _, _ in noops]
        print(f"deployment: {full} s ({full_state}); no-op flow runs: {seconds} s", flush=True)
        states = {full_state, *(final for _, final, _ in noops)}
        if states != {"COMPLETED"}:
            raise SystemExit(f"flow runs ended {sorted(states)}; logs in {repo / '.memforge'}")
        return {"clone": str(repo), "commit": commit, "pipeline_s": full, "noop_s": statistics.median(seconds),
                "noop_runs_s": seconds, "noop_breakdowns": [parts for _, _, parts in noops],
                "load_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}  # fmt: skip
    finally:
        down = stack(repo, env, "down")
        if down.returncode != 0:
            print(f"infra/stack.py down failed:\n{down.stderr}", file=sys.stderr)


def summary(dvc: dict[str, Any], flow: dict[str, Any]) -> dict[str, Any]:
    overhead = (flow["pipeline_s"] - dvc["pipeline_s"]) / dvc["pipeline_s"]
    return {
        "dvc_repro": {key: value for key, value in dvc.items() if key != "clone"},
        "deployment": {key: value for key, value in flow.items() if key != "clone"},
        "overhead": round(overhead, 4),
        "overhead_target": OVERHEAD_TARGET,
        "noop_flow_target_s": NOOP_FLOW_TARGET_S,
        "met": overhead < OVERHEAD_TARGET and flow["noop_s"] < NOOP_FLOW_TARGET_S,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "recorded": time.strftime("%Y-%m-%d"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the clones (their paths are printed)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave results/ as it is")
    args = parser.parse_args()
    with scratch("memforge-orchestration-", keep=args.keep) as workdir:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        ref = head.stdout.strip()  # both parts run this commit, whatever is committed meanwhile
        result = summary(bench_dvc(workdir, ref), bench_deployment(workdir, ref))
    if not args.no_record:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
