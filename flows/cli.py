"""The ``memforge`` console script: the library's commands (``components.cli``) plus ``memforge run``.

``memforge run`` starts the Prefect pipeline flow, so it lives in the orchestration layer; every other command is
the library's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from components import cli
from components.stages.registry import GROUPS, STAGE_NAMES


def cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline flow (Prefect) over the DVC stages."""
    import os

    # The temporary server's telemetry heartbeat contends for its SQLite file; nothing leaves this machine.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import memforge_pipeline, validate_request

    overrides = cli.overrides(args.set)
    validate_request(args.stages or None, args.group, overrides, Path(args.params))  # before a server starts
    result = memforge_pipeline(
        stages=args.stages or None, group=args.group, params_overrides=overrides, params_file=args.params
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


def add_run_command(commands: argparse._SubParsersAction) -> None:
    """``memforge run``: the pipeline flow."""
    run = commands.add_parser("run", help="run the pipeline (Prefect flow over the DVC stages)")
    run.add_argument("--stages", nargs="*", choices=STAGE_NAMES, help="stages to run (default: every stage of --group)")
    run.add_argument("--group", choices=GROUPS, default="all", help="a group of stages (default: all)")
    run.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    run.set_defaults(func=cmd_run)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``memforge`` command."""
    return cli.main(argv, cli.build_parser(add_run_command))


if __name__ == "__main__":
    sys.exit(main())
