"""Finds the running function containers through the Docker Engine API (podman/Docker)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import docker
import docker.errors

from app.runtime.base import RUN_ID_LABEL, TENANT_LABEL
from app.runtime.podman import parse_docker_time


@dataclass(frozen=True)
class Container:
    container_id: str
    run_id: str
    tenant: str


class DockerDiscovery:
    """Blocking calls; the agent runs them in a thread."""

    def __init__(self, base_url: str) -> None:
        if not base_url:
            raise ValueError("base_url is required")
        self._client = docker.DockerClient(base_url=base_url, version="1.41", timeout=10)

    def running(self) -> list[Container]:
        found = self._client.api.containers(filters={"label": RUN_ID_LABEL, "status": "running"})
        return [
            Container(c["Id"], c["Labels"][RUN_ID_LABEL], c["Labels"].get(TENANT_LABEL, ""))
            for c in found
        ]

    def started_at(self, container_id: str) -> datetime | None:
        try:
            state = self._client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return None
        return parse_docker_time(state.get("StartedAt"))

    def exit_code(self, container_id: str) -> int | None:
        try:
            state = self._client.api.inspect_container(container_id)["State"]
        except docker.errors.NotFound:
            return None
        return None if state.get("Running") else int(state.get("ExitCode", 0))

    def close(self) -> None:
        self._client.close()
