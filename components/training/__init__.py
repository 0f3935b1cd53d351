"""Training: supervised warm-up (SFT) on expert trajectories. Heavy libraries are imported inside the functions."""

from components.training.sft import (
    SFTOutcome,
    build_sft_dataset,
    build_sft_trainer,
    fit_examples,
    train_sft,
    trajectory_examples,
)

__all__ = [
    "SFTOutcome",
    "build_sft_dataset",
    "build_sft_trainer",
    "fit_examples",
    "train_sft",
    "trajectory_examples",
]
