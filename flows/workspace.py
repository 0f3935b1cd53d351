"""One lock per DVC workspace across every deployment, and one GPU stage at a time: Prefect concurrency limits.

DVC locks its repo while it works, so two flow runs in one workspace would collide (and, before overrides became
experiments, one could read the other's params). Each flow run holds the workspace's global concurrency limit
(``memforge-workspace-<hash of its path>``, limit 1, created when missing) around its DVC work, so a second trigger
queues until the first is done. GPU stages carry the ``gpu`` tag, whose task concurrency limit (1 unless someone set
another) keeps two of them off one device.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

GPU_TAG = "gpu"
GPU_SLOTS = 1
WORKSPACE_LOCK_PREFIX = "memforge-workspace"


def workspace_lock_name(repo: Path) -> str:
    """The global concurrency limit that guards the workspace at ``repo`` (one per resolved path)."""
    digest = hashlib.sha1(str(repo.resolve()).encode()).hexdigest()[:10]
    return f"{WORKSPACE_LOCK_PREFIX}-{digest}"


def ensure_limits(lock_name: str) -> None:
    """Create the workspace's global limit (1 slot) and the ``gpu`` tag limit where missing; existing ones keep
    their settings (an operator may give the ``gpu`` tag more slots on a multi-GPU worker)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(lock_name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another flow run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=lock_name, limit=1))
        try:
            client.read_concurrency_limit_by_tag(GPU_TAG)
        except ObjectNotFound:
            client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=GPU_SLOTS)


@contextlib.contextmanager
def workspace_lock(repo: Path) -> Iterator[str]:
    """Hold ``repo``'s workspace lock (waiting for it while another flow run holds it); yields its name."""
    from prefect.concurrency.sync import concurrency

    name = workspace_lock_name(repo)
    ensure_limits(name)
    with concurrency(name, occupy=1, strict=True):
        yield name
