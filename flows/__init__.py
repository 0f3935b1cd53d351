"""Prefect flows: each runs DVC stages, so `dvc repro` and a scheduled flow run the same code."""
