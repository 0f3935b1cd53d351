"""Checkpoints that resume only the run they belong to.

DVC keeps a training stage's checkpoint folder between runs (``persist: true``), so a killed run resumes from its
last checkpoint. A checkpoint written under other settings or other inputs must not be resumed: the folder holds a
fingerprint (``memforge_run.json``: the training params that shape the run plus digests of its inputs), and
``claim_checkpoint_dir`` clears the folder when the fingerprint differs. Settings that only extend or observe a run
(``max_steps``, ``save_steps``, logging, output paths) are left out, so raising ``max_steps`` continues training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from components.distributed import is_main_process, wait_for_everyone
from components.io import write_json_atomic

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "memforge_run.json"
NOT_SHAPING = frozenset(
    {"max_steps", "save_steps", "log_completions", "log_trajectories", "checkpoint_dir", "output_dir", "report_path"}
)


def latest_checkpoint(folder: str | os.PathLike[str]) -> str | None:
    """The highest ``checkpoint-N`` folder under ``folder`` (where TRL saved it), or None."""
    path = Path(folder)
    if not path.is_dir():
        return None
    found = [(int(p.name.split("-")[1]), p) for p in path.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return str(max(found)[1]) if found else None


def input_digest(path: str | Path) -> str:
    """A digest of a file or folder as it is now (DVC's md5 scheme)."""
    from components.tracking.runs import dvc_digest

    return dvc_digest(path)


def run_fingerprint(section: Mapping[str, Any], inputs: Iterable[str | Path]) -> dict[str, Any]:
    """The params that shape a run (``section`` without ``NOT_SHAPING`` keys) and the digests of its inputs."""
    params = {k: v for k, v in sorted(section.items()) if k not in NOT_SHAPING}
    return {"params": params, "inputs": {str(p): input_digest(p) for p in inputs}}


def claim_checkpoint_dir(folder: str | Path, fingerprint: Mapping[str, Any]) -> bool:
    """Make ``folder`` this run's checkpoint folder; True when its existing checkpoints may be resumed.

    Checkpoints from a run with another fingerprint (or none) are deleted, with a warning naming what changed. In a
    multi-process launch every process reads the folder as it was and so answers alike; then the main process alone
    clears and marks it, and the others wait until it has.
    """
    path = Path(folder)
    marker = path / FINGERPRINT_FILE
    wanted = json.loads(json.dumps(fingerprint, default=str))
    occupied = path.is_dir() and any(path.iterdir())
    found = _read_fingerprint(marker) if occupied else None
    resumable = occupied and found == wanted
    wait_for_everyone()  # every process has read the folder before the main one changes it
    if not resumable and is_main_process():
        if occupied:
            logger.warning("%s: checkpoints of another run (%s); starting afresh", path, _difference(found, wanted))
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, wanted)
    wait_for_everyone()
    return resumable


def _read_fingerprint(marker: Path) -> Any:
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _difference(found: Any, wanted: Mapping[str, Any]) -> str:
    if not isinstance(found, Mapping):
        return f"no readable {FINGERPRINT_FILE}"
    changed = [
        f"{part}.{key}"
        for part in ("params", "inputs")
        for key in sorted(set(found.get(part, {})) | set(wanted.get(part, {})))
        if found.get(part, {}).get(key) != wanted.get(part, {}).get(key)
    ]
    return "changed: " + ", ".join(changed) if changed else "different fingerprint"
