"""The promotion flow: ``memforge promote`` as a Prefect flow, so the Prefect UI can run it (deployment ``promote``).

It is a registry action, not a DVC stage: it compares each model's ``challenger`` with its ``champion`` on the
metric and margin of ``params.register`` and moves ``champion`` only when the challenger is better by more than
the margin (``to_version`` rolls back instead), through the same library function as the command.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from components.config import load_params
from components.model_registry.promote import ALL_MODELS, MODEL_KEYS, promote_models
from flows.identity import flow_environment

# The models as a choice in the Prefect UI, from the registry's list.
ModelChoice = Literal[(*MODEL_KEYS, ALL_MODELS)]  # type: ignore[valid-type]


@flow(name="memforge-promote", log_prints=True)
def memforge_promote(
    model: ModelChoice = ALL_MODELS, to_version: int | None = None, params_file: str = "params.yaml"
) -> list[dict[str, Any]]:
    """Promote (or, with ``to_version``, roll back) each model's challenger; returns the decisions.

    Args:
        model: The registered model to promote: membuilder, memagent or all.
        to_version: Roll the model back to this registered version instead of comparing (one model only).
        params_file: The params file whose register section gives the metric and margin.
    """
    with flow_environment():  # the promotion's MLflow runs name and tag this flow run
        decisions = promote_models(load_params(params_file), model, to_version)
    for decision in decisions:
        print(f"{decision.model}: {decision.decision} ({decision.reason})")
    return [decision.to_dict() for decision in decisions]


if __name__ == "__main__":
    memforge_promote()
