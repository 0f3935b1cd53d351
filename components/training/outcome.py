"""What a training run reports: one base type for the sft, adrpo and memagent_train outcomes.

``metrics()`` is the stage's DVC metrics file: flat numbers that compare across runs and experiments (counts,
losses, final statistics). ``timings()`` holds the wall-clock measurements, which change on every run and so go to
MLflow only. ``summary()`` is the model card's section (``memforge_model.json``, under the outcome's ``kind``).
``history`` keeps every numeric trainer log with its step (per-step values reach MLflow as they are logged).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(kw_only=True)
class TrainingOutcome:
    """What every training run did: the model it wrote, how long it trained, what the trainer logged."""

    kind: ClassVar[str]  # the model card section and the card's ``kind``

    output_dir: str
    base_model: str
    steps: int
    train_loss: float
    history: list[dict[str, float]] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    total_params: int = 0
    saved_dtype: str = "float32"
    device: str = "cpu"

    @property
    def loss_history(self) -> list[dict[str, float]]:
        """``[{step, loss}]`` for the loss curve (a DVC plot and an MLflow figure)."""
        return [{"step": int(entry["step"]), "loss": entry["loss"]} for entry in self.history if "loss" in entry]

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics of the finished run (the DVC metrics file)."""
        return {"steps": float(self.steps), "train_loss": self.train_loss}

    def timings(self) -> dict[str, float]:
        """Wall-clock seconds of the whole run and the median step (the first step pays for warm-up); MLflow only."""
        steady = self.step_seconds[1:] or self.step_seconds
        return {
            "seconds": round(self.seconds, 3),
            "seconds_per_step": round(statistics.median(steady), 4) if steady else 0.0,
        }

    def summary(self) -> dict[str, Any]:
        """The model card's ``kind`` section."""
        return {
            "base_model": self.base_model,
            "steps": self.steps,
            "train_loss": self.train_loss,
            "total_params": self.total_params,
            "device": self.device,
        }


@dataclass(kw_only=True)
class GRPOOutcome(TrainingOutcome):
    """A GRPO run (adrpo, memagent_train): it may resume from a checkpoint, and it logs reward statistics, the last
    of which (``last_stats``) are reported as ``final_<name>``."""

    resumed_from: str | None = None
    last_stats: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        final = {f"final_{name}": value for name, value in self.last_stats.items()}
        return {**super().metrics(), "resumed": float(self.resumed_from is not None), **final}

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "resumed_from": self.resumed_from, "final": dict(self.last_stats)}


def last_stats(history: Iterable[Mapping[str, float]], prefix: str, extra: Iterable[str] = ()) -> dict[str, float]:
    """The last log entry holding ``prefix`` keys, as ``{name without prefix: value}``, plus that entry's ``extra``
    keys (TRL's own, e.g. ``clip_ratio/region_mean`` -> ``clip_ratio_region_mean``)."""
    logged = [entry for entry in history if any(key.startswith(prefix) for key in entry)]
    final = logged[-1] if logged else {}
    stats = {key[len(prefix) :]: value for key, value in final.items() if key.startswith(prefix)}
    stats.update({key.replace("/", "_"): final[key] for key in extra if key in final})
    return stats
