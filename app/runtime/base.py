"""The ``Runtime`` protocol: what the control plane needs from podman or Kubernetes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

RUN_ID_LABEL = "faas.run_id"
TENANT_LABEL = "faas.tenant"
OWNER_LABEL = "faas.owner"  # which installation started it (`make stop` stops only ours)


class RuntimeUnavailable(Exception):
    """The runtime cannot be reached (socket gone, API server down)."""


class ImageNotFound(Exception):
    """The image is not present and cannot be pulled."""


class RuntimeError_(Exception):
    """The runtime answered but refused or failed the operation."""


@dataclass(frozen=True)
class ContainerSpec:
    run_id: str
    tenant: str
    image: str
    cpu: float
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] | None = None
    owner: str = ""
    # Kubernetes enforces it itself (activeDeadlineSeconds); podman leaves it to the reconciler.
    timeout_s: int | None = None


@dataclass(frozen=True)
class ContainerState:
    run_id: str
    container_id: str
    running: bool
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    oom_killed: bool = False
    error: str | None = None
    deadline_exceeded: bool = False  # the runtime ended it at the run's timeout


class Runtime(Protocol):
    """A place to run one container per run. All methods raise ``RuntimeUnavailable``
    when the runtime cannot be reached."""

    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container; returns its id. Idempotent per run id: the
        container an earlier call created for ``spec.run_id`` is returned, not a second."""
        ...

    async def start(self, container_id: str) -> ContainerState: ...

    async def inspect(self, container_id: str) -> ContainerState | None:
        """Current state, or None when the container no longer exists."""
        ...

    async def list_runs(self) -> list[ContainerState]:
        """Every container of this installation (its owner label, where the runtime has
        one) carrying a run id label, running or not."""
        ...

    async def stop(self, container_id: str, grace_s: int) -> None: ...

    async def logs(self, container_id: str, tail_bytes: int) -> str | None:
        """Combined stdout/stderr, or None when the container no longer exists."""
        ...

    async def remove(self, container_id: str) -> None: ...

    async def close(self) -> None: ...
