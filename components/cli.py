"""The library's commands: single stages (what ``dvc.yaml`` calls), params, data, memory and model tools.

The ``memforge`` console script is ``flows.cli``, which adds the pipeline (``memforge run``) on top of these; the
library never imports the orchestration layer. Heavy libraries are imported inside the commands that need them,
so ``memforge --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components.config import DEFAULT_PARAMS_FILE, load_params, parse_override
from components.errors import MemforgeError, Terminated
from components.secrets import scrub
from components.stages.registry import STAGE_NAMES

DESCRIPTION = "Train language models that remember (MemBuilder, MemAgent): DVC stages, a Prefect flow, MLflow runs."


def overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``-S key=value`` pairs as a dict of typed values."""
    return dict(parse_override(pair) for pair in pairs)


def cmd_stage(args: argparse.Namespace) -> int:
    """Run one DVC stage with params.yaml (what `dvc repro` calls)."""
    from components.stages.runner import run_stage

    result = run_stage(args.name, load_params(args.params, overrides(args.set)))
    print(json.dumps({"stage": args.name, **result.logged_metrics()}, indent=2, default=str))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    """Show, check, render, or apply a profile to params.yaml."""
    from components.config import apply_profile, list_profiles, render_params, to_dict

    if args.action == "apply":
        if not args.profile:
            raise MemforgeError(f"name a profile: {', '.join(list_profiles())}")
        apply_profile(args.profile, args.params)
        print(f"wrote {args.params} for profile '{args.profile}'")
    elif args.action == "profiles":
        print("\n".join(list_profiles()))
    elif args.action == "render":
        sys.stdout.write(render_params(load_params(args.params)))
    else:  # show / check
        params = load_params(args.params)
        if args.action == "show":
            print(json.dumps(to_dict(params), indent=2))
        else:
            print(f"{args.params}: ok")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic multi-session corpus as memforge JSON Lines."""
    from dataclasses import replace

    from components.dialogue.schema import conversation_to_dict
    from components.dialogue.synthetic import iter_conversations
    from components.io import atomic_writer, dumps_jsonl_record
    from components.progress import progress

    cfg = load_params(args.params).ingest.synthetic
    cfg = replace(cfg, seed=args.seed if args.seed is not None else cfg.seed)
    if args.sessions_per_conversation:
        cfg = replace(cfg, sessions_per_conversation=args.sessions_per_conversation)
    with atomic_writer(args.out) as handle, progress("synth", unit="conversations", total=args.conversations) as bar:
        for conversation in iter_conversations(cfg, args.conversations):
            handle.write(dumps_jsonl_record(conversation_to_dict(conversation)))
            bar.advance()
    print(f"wrote {args.conversations} conversations to {args.out}")
    return 0


def cmd_memory_build(args: argparse.Namespace) -> int:
    """Build a memory for one ingested conversation, print it and save it."""
    from dataclasses import replace

    from components.dialogue.loaders import load_jsonl
    from components.memory.construction import SessionStep, bank_factory, build_memories
    from components.memory.render import render_memory
    from components.memory.teachers import make_teacher

    params = load_params(args.params, overrides(args.set))
    if args.model:
        params = replace(
            params, backends=replace(params.backends, teacher=replace(params.backends.teacher, model=args.model))
        )
    params = replace(params, expert=replace(params.expert, teacher=args.teacher))
    items = list(load_jsonl(args.dialogues))
    chosen = [i.conversation for i in items if args.conversation in (None, i.conversation.conversation_id)]
    if not chosen:
        raise MemforgeError(f"{args.dialogues}: no conversation with id {args.conversation!r}")
    conversation = chosen[0]
    teacher = make_teacher(params)

    def report(step: SessionStep) -> None:
        failed = {part: outcome.error for part, outcome in step.outcomes.items() if not outcome.ok}
        status = "ok" if not failed else "; ".join(f"{part} {error}" for part, error in failed.items())
        print(f"session {step.session.session_id} ({step.session.timestamp}): {status}", file=sys.stderr)

    make_bank = bank_factory(params, getattr(teacher, "backend", None))
    (bank,) = build_memories([conversation], teacher, make_bank, params.memory.top_k, on_step=report)
    print(render_memory(bank))
    out = args.out or Path(f"memory-{conversation.conversation_id}.json")
    bank.save(out)
    print(f"saved {out}", file=sys.stderr)
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    """Read a file of any length with the MemAgent reader and answer a question from its memory."""
    from components.agent.reader import read_file
    from components.model_registry.resolve import resolve_model

    params = load_params(args.params, overrides(args.set))
    model = resolve_model(args.model or params.memagent.eval.model_name_or_path, params.tracking)

    def trace(step: Any) -> None:
        if args.show_memory and step.kind == "update":
            print(f"--- memory after chunk {step.step} ({step.memory_tokens} tokens)\n{step.memory}", file=sys.stderr)

    result = read_file(args.question, args.file, model, params.memagent.reader, on_step=trace)
    summary = {
        "answer": result.boxed if result.boxed is not None else result.answer,
        "chunks": result.chunks,
        "input_tokens": result.input_tokens,
        "seconds": round(result.seconds, 2),
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a local model behind an OpenAI-compatible endpoint."""
    from components.llm.server import serve
    from components.model_registry.resolve import resolve_model

    model = resolve_model(args.model, load_params(args.params).tracking)
    serve(model, host=args.host, port=args.port, api_key_env=args.api_key_env, model_name=args.model)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Move each model's champion alias to its challenger when better by the margin, or roll back; print why."""
    from components.model_registry.promote import promote_models

    decisions = promote_models(load_params(args.params, overrides(args.set)), args.model, args.to_version)
    print(json.dumps([decision.to_dict() for decision in decisions], indent=2))
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    """Print the commands that train a GRPO stage on several GPUs (accelerate, optionally a vLLM server)."""
    from components.training.launch import launch_plan

    plan = launch_plan(
        load_params(args.params, overrides(args.set)),
        args.stage,
        args.config,
        gpus=args.gpus,
        vllm_gpus=args.vllm_gpus,
        vllm_tensor_parallel=args.vllm_tensor_parallel,
        vllm_port=args.vllm_port,
        overrides=args.set,
        params_file=args.params,
    )
    if plan.server is not None:
        print(f"# vLLM server: start it first and wait until {plan.server_url}/health/ answers")
        print(plan.server.shell())
    print(f"# trainer: {plan.stage} with {plan.config}")
    print(plan.trainer.shell())
    return 0


def build_parser(*extensions: Callable[[Any], None]) -> argparse.ArgumentParser:
    """The ``memforge`` parser; each of ``extensions`` is called with the subcommands object to add its own."""
    parser = argparse.ArgumentParser(prog="memforge", description=DESCRIPTION)
    parser.add_argument("--params", default=DEFAULT_PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    stage = sub.add_parser("stage", help="run one stage (what dvc.yaml calls)")
    stage.add_argument("name", choices=STAGE_NAMES)
    stage.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    stage.set_defaults(func=cmd_stage)

    params = sub.add_parser("params", help="check, show, render params.yaml or apply a profile")
    params.add_argument("action", choices=["check", "show", "render", "profiles", "apply"])
    params.add_argument("profile", nargs="?", help="profile name for 'apply'")
    params.set_defaults(func=cmd_params)

    memory = sub.add_parser("memory", help="memory tools")
    memory_sub = memory.add_subparsers(dest="memory_command", required=True)
    build = memory_sub.add_parser("build", help="build a memory for one ingested conversation, print and save it")
    build.add_argument("--dialogues", type=Path, default=Path("data/dialogues/eval.jsonl"), help="JSON Lines file")
    build.add_argument("--conversation", default=None, help="conversation id (default: the first)")
    build.add_argument("--teacher", choices=["llm", "oracle", "heuristic"], default="llm", help="who writes memory")
    build.add_argument(
        "--model", default="", help="model folder or hub id for --teacher llm (default: backends.teacher)"
    )
    build.add_argument("--out", type=Path, default=None, help="where to save the memory (JSON)")
    build.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    build.set_defaults(func=cmd_memory_build)

    read = sub.add_parser("read", help="read a file of any length chunk by chunk (MemAgent) and answer a question")
    read.add_argument("--question", required=True, help="the question to answer from the file")
    read.add_argument("--file", required=True, type=Path, help="a UTF-8 text file, streamed")
    read.add_argument(
        "--model",
        default="",
        help="model folder, hub id, or models:/NAME@ALIAS or models:/NAME/VERSION (default: "
        "memagent.eval.model_name_or_path)",
    )
    read.add_argument("--show-memory", action="store_true", help="print the memory after every chunk (stderr)")
    read.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    read.set_defaults(func=cmd_read)

    serve = sub.add_parser("serve", help="serve a local model behind an OpenAI-compatible endpoint")
    serve.add_argument(
        "--model", default="models/base", help="model folder, or models:/NAME@ALIAS or models:/NAME/VERSION"
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key-env", default="", help="env var holding the key clients must send")
    serve.set_defaults(func=cmd_serve)

    from components.model_registry.promote import ALL_MODELS, MODEL_KEYS

    promote = sub.add_parser("promote", help="promote challenger to champion in the MLflow registry, or roll back")
    promote.add_argument(
        "--model", choices=[*MODEL_KEYS, ALL_MODELS], default=ALL_MODELS, help="a model of params.register, or all"
    )
    promote.add_argument("--to-version", type=int, metavar="N", help="roll back: make version N the champion")
    promote.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    promote.set_defaults(func=cmd_promote)

    from components.training.launch import ACCELERATE_CONFIGS, DEFAULT_VLLM_PORT, STAGE_SECTIONS

    launch = sub.add_parser("launch", help="print the multi-GPU commands for a GRPO stage (accelerate, vLLM server)")
    launch.add_argument("stage", choices=list(STAGE_SECTIONS))
    launch.add_argument("--config", choices=ACCELERATE_CONFIGS, default="ddp", help="infra/accelerate config")
    launch.add_argument("--gpus", type=int, required=True, help="GPUs of the machine, vLLM server's included")
    launch.add_argument("--vllm-gpus", type=int, default=0, help="GPUs for a `trl vllm-serve` (0 = no server)")
    launch.add_argument("--vllm-tensor-parallel", type=int, default=1, help="vLLM GPUs per model copy")
    launch.add_argument("--vllm-port", type=int, default=DEFAULT_VLLM_PORT)
    launch.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    launch.set_defaults(func=cmd_launch)

    synth = sub.add_parser("synth", help="write a synthetic dialogue corpus (JSON Lines)")
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--conversations", type=int, default=100)
    synth.add_argument("--sessions-per-conversation", type=int, default=0, help="0 = params value")
    synth.add_argument("--seed", type=int, default=None)
    synth.set_defaults(func=cmd_synth)
    for extend in extensions:
        extend(sub)
    return parser


def configure_logging(verbose: bool) -> None:
    """memforge's own progress at INFO; third-party libraries (GX, MLflow, DVC) only at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("memforge", "components", "flows"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
        return
    # libraries that set their own levels or handlers: an error should be the last and near-only line
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow resets its loggers when first imported


QUIET_LOGGERS = ("httpx", "mlflow", "alembic", "great_expectations", "urllib3", "filelock", "transformers")


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` with ``parser`` (default: the library's commands) and run the command; 2 on a memforge error."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    install_termination_handler()
    try:
        return func(args)
    except MemforgeError as exc:
        print(f"memforge: error: {scrub(str(exc))}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"memforge: {exc}; staging removed, MLflow run closed as KILLED", file=sys.stderr)
        return 128 + exc.signum


def install_termination_handler() -> None:
    """SIGTERM (``timeout``, Prefect cancellation, ``kill``) ends a command as Ctrl-C does: it raises
    ``Terminated`` in the main thread, so staging folders are removed and the MLflow run is closed as KILLED."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, terminate)


if __name__ == "__main__":
    sys.exit(main())
