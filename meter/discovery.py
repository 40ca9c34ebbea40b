"""Finds the running function containers through the Docker Engine API (podman/Docker)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import docker
import docker.errors

from app.runtime.base import RUN_ID_LABEL, TENANT_LABEL
from app.runtime.podman import parse_docker_time


@dataclass(frozen=True)
class Container:
    container_id: str
    run_id: str
    tenant: str


@dataclass(frozen=True)
class Described:
    """What the runtime says about one container, asked by id (one inspect call)."""

    container: Container | None  # None: no run id label, so not a function container
    started_at: datetime | None


class Discovery(Protocol):
    """What the agent asks the runtime. Blocking calls: the agent runs them in a thread."""

    def running(self) -> list[Container]:
        """Containers with a run id label that are running (or paused: still holding memory)."""
        ...

    def started_at(self, container_id: str) -> datetime | None: ...

    def describe(self, container_id: str) -> Described | None:
        """Labels and StartedAt of a container, running or exited; None if the runtime does
        not know it (removed, or another runtime's). Cheap next to ``running`` under load:
        one container, not a listing of all of them."""
        ...

    def exit_code(self, container_id: str) -> int | None:
        """The exit code once the container has stopped; None while it runs or if gone."""
        ...


class DockerDiscovery:
    """:class:`Discovery` over the Docker Engine API (``podman system service`` or Docker)."""

    def __init__(self, base_url: str, timeout_s: int = 10) -> None:
        if not base_url:
            raise ValueError("base_url is required")
        self._client = docker.DockerClient(base_url=base_url, version="1.41", timeout=timeout_s)

    def running(self) -> list[Container]:
        found = self._client.api.containers(
            filters={"label": RUN_ID_LABEL, "status": ["running", "paused"]}
        )
        return [
            Container(c["Id"], c["Labels"][RUN_ID_LABEL], c["Labels"].get(TENANT_LABEL, ""))
            for c in found
        ]

    def _state(self, container_id: str) -> dict[str, object] | None:
        try:
            state: dict[str, object] = self._client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return None
        return state

    def describe(self, container_id: str) -> Described | None:
        try:
            attrs: dict[str, Any] = self._client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        started = (attrs.get("State") or {}).get("StartedAt")
        run_id = labels.get(RUN_ID_LABEL)
        container = (
            Container(container_id, run_id, labels.get(TENANT_LABEL, ""))
            if isinstance(run_id, str)
            else None
        )
        return Described(
            container, parse_docker_time(started if isinstance(started, str) else None)
        )

    def started_at(self, container_id: str) -> datetime | None:
        state = self._state(container_id)
        value = None if state is None else state.get("StartedAt")
        return parse_docker_time(value if isinstance(value, str) else None)

    def exit_code(self, container_id: str) -> int | None:
        state = self._state(container_id)
        if state is None or state.get("Running") or state.get("Paused"):
            return None
        code = state.get("ExitCode")
        return code if isinstance(code, int) else None

    def close(self) -> None:
        self._client.close()
