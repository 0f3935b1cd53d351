"""The promotion flow: ``memforge promote`` as a Prefect flow, so the Prefect UI can run it (deployment ``promote``).

It is a registry action, not a DVC stage: it compares each model's ``challenger`` with its ``champion`` on the
metric and margin of ``params.register`` and moves ``champion`` only when the challenger is better by more than
the margin (``to_version`` rolls back instead), through the same library function as the command.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from components.config import load_params
from components.model_registry.promote import ALL_MODELS, promote_models


@flow(name="memforge-promote", log_prints=True)
def memforge_promote(
    model: str = ALL_MODELS, to_version: int | None = None, params_file: str = "params.yaml"
) -> list[dict[str, Any]]:
    """Promote (or, with ``to_version``, roll back) ``model``: membuilder, memagent or all; returns the decisions."""
    decisions = promote_models(load_params(params_file), model, to_version)
    for decision in decisions:
        print(f"{decision.model}: {decision.decision} ({decision.reason})")
    return [decision.to_dict() for decision in decisions]


if __name__ == "__main__":
    memforge_promote()
