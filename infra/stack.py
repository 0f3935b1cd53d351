"""memforge's local servers in one command: a Prefect server, a process worker and an MLflow tracking server.

    python infra/stack.py up        # start all three on loopback, register prefect.yaml's deployments
    python infra/stack.py env       # `export PREFECT_API_URL=... MLFLOW_TRACKING_URI=...` for `eval "$(...)"`
    python infra/stack.py status    # each process and server health
    python infra/stack.py down      # stop exactly what `up` started (its recorded process groups)

Everything binds to 127.0.0.1. The Prefect server keeps its database in ``--prefect-home`` (``.prefect/``; the
user's ``~/.prefect`` profile is never read or written), the MLflow server serves the repo's store
(``.mlflow/mlflow.db``, SQLite so the model registry works, and ``.mlflow/artifacts``: the store ``make ui`` and
``components/tracking`` use when ``MLFLOW_TRACKING_URI`` is unset). ``up`` records every process it starts (pid,
process group, start time, log) in ``<state-dir>/stack.json`` as it goes, so ``down`` finds them even after an
interrupted ``up``; an ``up`` that fails stops what it had started. Progress goes to stderr; stdout carries only
the ``export`` lines, so ``eval "$(python infra/stack.py up)"`` works too. Standard library only, but for naming
memforge's MLflow experiment (``experiment_page``: memforge's own code, installed in the environment).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STATE_FILE = "stack.json"
LOG_DIR = "stack-logs"
STOP_ORDER = ("prefect-worker", "mlflow-server", "prefect-server")  # clients first, then the servers
QUIET_ENV = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
# MLflow's job runner (a pool of huey consumers) serves GenAI features memforge does not use
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# the local worker asks for scheduled runs every second (Prefect's default: 10 s), so a run triggered from the UI starts
# at once; a loopback server bears the polling easily
WORKER_ENV = {"PREFECT_WORKER_QUERY_SECONDS": "1"}


class StackError(RuntimeError):
    """A stack that cannot start or stop, with what to do about it."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its state and which ports it binds (0: any free port)."""

    project_dir: Path = REPO_ROOT
    state_dir: Path = REPO_ROOT / ".memforge"
    prefect_home: Path = REPO_ROOT / ".prefect"
    mlflow_store: Path = REPO_ROOT / ".mlflow"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    pool: str = "memforge"
    deploy: bool = True
    startup_timeout_s: float = 240.0

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE


@dataclass
class StackState:
    """What ``up`` started: the servers' addresses and one record per process (pid, pgid, start time, log)."""

    prefect_api_url: str
    prefect_ui_url: str
    mlflow_uri: str
    prefect_home: str
    mlflow_store: str
    project_dir: str
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: list[str] = field(default_factory=list)
    mlflow_experiment_url: str = ""  # memforge's experiment in the MLflow UI, as model training

    def client_env(self) -> dict[str, str]:
        """The variables that point Prefect and MLflow clients (and ``memforge``) at this stack."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "PREFECT_UI_URL": self.prefect_ui_url,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
        }


def read_state(state_file: Path) -> StackState | None:
    if not state_file.exists():
        return None
    return StackState(**json.loads(state_file.read_text(encoding="utf-8")))


def write_state(state_file: Path, state: StackState) -> None:
    """Atomically, so an interrupted ``up`` never leaves a half-written record."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.__dict__, indent=2) + "\n", encoding="utf-8")
    tmp.replace(state_file)


def export_lines(env: Mapping[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- ports and health -------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def claim_port(port: int, flag: str) -> int:
    """``port`` if nothing listens on it (a free one for 0), else a StackError naming it."""
    if port == 0:
        return free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            raise StackError(
                f"port {port} on {HOST} is busy ({exc.strerror}): stop what listens there "
                f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another with {flag}"
            ) from exc
    return port


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def healthy(url: str) -> bool:
    try:
        status, _ = http_get(url, timeout_s=3.0)
    except OSError:
        return False
    return status == 200


def health_urls(state: StackState) -> dict[str, str]:
    return {"prefect-server": f"{state.prefect_api_url}/health", "mlflow-server": f"{state.mlflow_uri}/health"}


def log_tail(path: str | Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


# ---- processes --------------------------------------------------------------------------------------------------


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell our process from a later one that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: ask the kernel whether the group still has a member
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def recorded_pids(state: StackState) -> dict[str, int]:
    return {name: int(record["pid"]) for name, record in state.processes.items()}


def spawn(name: str, argv: list[str], env: Mapping[str, str], cwd: Path, log_dir: Path) -> dict[str, Any]:
    """Start ``argv`` as the leader of a new session (its own process group), output to ``<log_dir>/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    say(f"started {name} (pid {process.pid}), log {log}")
    return {"pid": process.pid, "pgid": process.pid, "start_time": start_time(process.pid), "log": str(log),
            "argv": argv}  # fmt: skip


def stop_process(name: str, record: Mapping[str, Any], grace_s: float = 20.0) -> None:
    """SIGTERM the recorded process group, then SIGKILL what is left after ``grace_s``."""
    pid, pgid = int(record["pid"]), int(record["pgid"])
    recorded = record.get("start_time")
    now = start_time(pid)
    if recorded and now and now != recorded:
        say(f"{name}: pid {pid} now belongs to another process; left alone")
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not group_members(pgid):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + wait_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = group_members(pgid)
    if left:
        raise StackError(f"{name}: processes {left} of group {pgid} survived SIGKILL")
    say(f"stopped {name} (pid {pid})")


def stop_all(state: StackState) -> None:
    names = sorted(state.processes, key=lambda name: STOP_ORDER.index(name) if name in STOP_ORDER else -1)
    errors = []
    for name in names:
        try:
            stop_process(name, state.processes[name])
        except StackError as exc:
            errors.append(str(exc))
    if errors:
        raise StackError("; ".join(errors))


# ---- up ---------------------------------------------------------------------------------------------------------


def base_env(config: StackConfig) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_PROFILE")}
    env.update(QUIET_ENV)
    env["PREFECT_HOME"] = str(config.prefect_home)
    return env


def cli(venv_bin: Path, tool: str) -> str:
    """The tool next to this interpreter (the project's virtual environment), else the one on PATH."""
    candidate = venv_bin / tool
    return str(candidate) if candidate.exists() else tool


def wait_until(what: str, ready: Any, record: Mapping[str, Any], timeout_s: float) -> None:
    """Poll ``ready()`` until true; a StackError with the log's tail when the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if not group_members(int(record["pgid"])):
            raise StackError(f"{what} exited before it was ready; last lines of {record['log']}:\n"
                             f"{log_tail(record['log'])}")  # fmt: skip
        time.sleep(1.0)
    raise StackError(f"{what} did not come up within {timeout_s:.0f} s; last lines of {record['log']}:\n"
                     f"{log_tail(record['log'])}")  # fmt: skip


def ensure_pool(api_url: str, pool: str, prefect: str, env: Mapping[str, str], cwd: Path, log: Path) -> None:
    """Create the process work pool unless the server already has one by that name."""
    status, _ = http_json("GET", f"{api_url}/work_pools/{pool}")
    if status != 200:
        argv = [prefect, "--no-prompt", "work-pool", "create", pool, "--type", "process"]
        run_checked(f"creating work pool {pool}", argv, env, cwd, log)


def run_checked(
    what: str, argv: list[str], env: Mapping[str, str], cwd: Path, log: Path, timeout_s: float = 600
) -> None:
    say(f"{what}: {shlex.join(argv)}")
    with log.open("ab") as out:
        try:
            done = subprocess.run(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"{what} took over {timeout_s:.0f} s; last lines of {log}:\n{log_tail(log)}") from exc
    if done.returncode != 0:
        raise StackError(f"{what} failed (exit {done.returncode}); last lines of {log}:\n{log_tail(log)}")


def deployment_names(state: StackState) -> list[str]:
    """``flow/deployment`` for every deployment on the server."""
    status, flows = http_json("POST", f"{state.prefect_api_url}/flows/filter", {})
    _, deployments = http_json("POST", f"{state.prefect_api_url}/deployments/filter", {})
    if status != 200 or deployments is None:
        raise StackError(f"the Prefect API at {state.prefect_api_url} did not list the deployments")
    flow_names = {flow["id"]: flow["name"] for flow in flows}
    return sorted(f"{flow_names.get(d['flow_id'], '?')}/{d['name']}" for d in deployments)


def worker_online(state: StackState, pool: str) -> bool:
    status, workers = http_json("POST", f"{state.prefect_api_url}/work_pools/{pool}/workers/filter", {})
    return status == 200 and bool(workers)


def running_state(config: StackConfig) -> StackState | None:
    """The recorded stack when every process of it is alive and both servers answer, else None."""
    state = read_state(config.state_file)
    if state is None:
        return None
    alive = all(group_members(int(record["pgid"])) for record in state.processes.values())
    return state if alive and all(healthy(url) for url in health_urls(state).values()) else None


def up(config: StackConfig) -> StackState:
    """Start (or find running) the stack described by ``config``; on any failure, stop what was started."""
    current = running_state(config)
    if current is not None:
        say(f"already running (state in {config.state_file})")
        return current
    stale = read_state(config.state_file)
    if stale is not None:
        say(f"a previous stack in {config.state_file} is not healthy: stopping what is left of it")
        down(config)
    prefect_port = claim_port(config.prefect_port, "--prefect-port")
    mlflow_port = claim_port(config.mlflow_port, "--mlflow-port")
    state = StackState(
        prefect_api_url=f"http://{HOST}:{prefect_port}/api", prefect_ui_url=f"http://{HOST}:{prefect_port}",
        mlflow_uri=f"http://{HOST}:{mlflow_port}", prefect_home=str(config.prefect_home),
        mlflow_store=str(config.mlflow_store), project_dir=str(config.project_dir),
    )  # fmt: skip
    try:
        start_servers(config, state, prefect_port, mlflow_port)
        state.mlflow_experiment_url = experiment_page(state)
        write_state(config.state_file, state)
        register(config, state)
    except BaseException:
        with contextlib.suppress(StackError):
            stop_all(state)
        config.state_file.unlink(missing_ok=True)
        raise
    return state


def start_servers(config: StackConfig, state: StackState, prefect_port: int, mlflow_port: int) -> None:
    """Both servers at once (each takes a while to import), then wait for their health endpoints."""
    bin_dir = Path(sys.executable).parent
    log_dir = config.state_dir / LOG_DIR
    env = base_env(config) | {"PREFECT_API_URL": state.prefect_api_url, "PREFECT_UI_URL": state.prefect_ui_url}
    config.prefect_home.mkdir(parents=True, exist_ok=True)
    store = config.mlflow_store.resolve()
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    commands = {
        "prefect-server": [cli(bin_dir, "prefect"), "--no-prompt", "server", "start", "--host", HOST, "--port",
                           str(prefect_port), "--analytics-off"],
        "mlflow-server": [cli(bin_dir, "mlflow"), "server", "--host", HOST, "--port", str(mlflow_port),
                          "--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                          "--default-artifact-root", str(store / "artifacts")],
    }  # fmt: skip
    envs = {"prefect-server": env, "mlflow-server": env | MLFLOW_SERVER_ENV}
    for name, argv in commands.items():
        state.processes[name] = spawn(name, argv, envs[name], config.project_dir, log_dir)
        write_state(config.state_file, state)
    for name, url in health_urls(state).items():
        wait_until(name, lambda url=url: healthy(url), state.processes[name], config.startup_timeout_s)
        say(f"{name} is healthy: {url}")


def experiment_page(state: StackState) -> str:
    """memforge's experiment (``tracking.experiment`` in the project's params.yaml, created with its kind when
    missing) as an MLflow UI address in the model training view: the one step that uses memforge's own code."""
    from components.config import load_params
    from components.tracking.runs import experiment_ui_url

    tracking = load_params(Path(state.project_dir) / "params.yaml").tracking
    return experiment_ui_url(tracking, state.mlflow_uri) or ""


def register(config: StackConfig, state: StackState) -> None:
    """The work pool, its process worker, and prefect.yaml's deployments."""
    bin_dir = Path(sys.executable).parent
    prefect = cli(bin_dir, "prefect")
    env = base_env(config) | state.client_env()
    log_dir = config.state_dir / LOG_DIR
    ensure_pool(state.prefect_api_url, config.pool, prefect, env, config.project_dir, log_dir / "pool.log")
    argv = [prefect, "--no-prompt", "worker", "start", "--pool", config.pool, "--type", "process",
            "--name", f"memforge-local-{os.getpid()}"]  # fmt: skip
    state.processes["prefect-worker"] = spawn("prefect-worker", argv, env | WORKER_ENV, config.project_dir, log_dir)
    write_state(config.state_file, state)
    if config.deploy:
        deploy_argv = [prefect, "--no-prompt", "deploy", "--all"]
        run_checked("registering prefect.yaml's deployments", deploy_argv, env, config.project_dir,
                    log_dir / "deploy.log", timeout_s=config.startup_timeout_s * 2)  # fmt: skip
        state.deployments = deployment_names(state)
    wait_until("prefect-worker", lambda: worker_online(state, config.pool), state.processes["prefect-worker"],
               config.startup_timeout_s)  # fmt: skip
    write_state(config.state_file, state)


def down(config: StackConfig) -> bool:
    """Stop every recorded process group and remove the state file; False when nothing was recorded."""
    state = read_state(config.state_file)
    if state is None:
        return False
    stop_all(state)
    config.state_file.unlink(missing_ok=True)
    return True


def status_lines(state: StackState) -> Iterator[str]:
    urls = health_urls(state)
    for name, record in state.processes.items():
        alive = bool(group_members(int(record["pgid"])))
        health = "" if name not in urls else (" healthy" if healthy(urls[name]) else " not answering")
        yield f"{name:15} pid {record['pid']:>7} {'running' if alive else 'gone'}{health}  log {record['log']}"


def summary(state: StackState) -> str:
    lines = [
        f"Prefect UI  {state.prefect_ui_url}",
        f"MLflow UI   {state.mlflow_experiment_url or state.mlflow_uri}",
        f"deployments {', '.join(state.deployments) or '(none registered)'}",
        'point memforge and the prefect/mlflow CLIs at them: eval "$(python infra/stack.py env)"',
    ]
    return "\n".join(lines)


# ---- command line -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[str, StackConfig]:
    parser = argparse.ArgumentParser(prog="infra/stack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--state-dir", type=Path, default=StackConfig.state_dir, help="stack.json and the logs")
    parser.add_argument("--prefect-home", type=Path, default=StackConfig.prefect_home, help="Prefect's database")
    parser.add_argument("--mlflow-store", type=Path, default=StackConfig.mlflow_store, help="mlflow.db, artifacts/")
    parser.add_argument("--project-dir", type=Path, default=StackConfig.project_dir, help="where flows run")
    parser.add_argument("--prefect-port", type=int, default=StackConfig.prefect_port, help="0: any free port")
    parser.add_argument("--mlflow-port", type=int, default=StackConfig.mlflow_port, help="0: any free port")
    parser.add_argument("--pool", default=StackConfig.pool, help="the process work pool the worker polls")
    parser.add_argument("--no-deploy", action="store_true", help="skip `prefect deploy --all`")
    parser.add_argument("--startup-timeout", type=float, default=StackConfig.startup_timeout_s, help="seconds")
    args = parser.parse_args(argv)
    config = StackConfig(
        project_dir=args.project_dir.resolve(), state_dir=args.state_dir.resolve(),
        prefect_home=args.prefect_home.resolve(), mlflow_store=args.mlflow_store.resolve(),
        prefect_port=args.prefect_port, mlflow_port=args.mlflow_port, pool=args.pool, deploy=not args.no_deploy,
        startup_timeout_s=args.startup_timeout,
    )  # fmt: skip
    return args.command, config


def main(argv: list[str] | None = None) -> int:
    command, config = parse_args(argv)
    try:
        if command == "up":
            state = up(config)
            say(summary(state))
            print(export_lines(state.client_env()), end="")
        elif command == "down":
            if not down(config):
                say(f"nothing to stop: no {config.state_file}")
        elif command == "status":
            state = read_state(config.state_file)
            if state is None:
                say(f"not running: no {config.state_file}")
                return 1
            print("\n".join([*status_lines(state), summary(state)]))
        else:
            state = running_state(config)
            if state is None:
                say(f"no healthy stack recorded in {config.state_file}: run `make up` first")
                return 1
            print(export_lines(state.client_env()), end="")
    except StackError as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
