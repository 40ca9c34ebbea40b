"""Runtime over the Docker Engine API (``podman system service`` or Docker)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from app.runtime.base import (
    OWNER_LABEL,
    RUN_ID_LABEL,
    TENANT_LABEL,
    ContainerSpec,
    ContainerState,
    ImageNotFound,
    RuntimeError_,
    RuntimeUnavailable,
)
from app.runtime.isolation import Isolation

T = TypeVar("T")
_ZERO_TIME = "0001-01-01"


def parse_docker_time(value: str | None) -> datetime | None:
    """Docker/podman RFC 3339 timestamps carry nanoseconds; Python keeps microseconds."""
    if not value or value.startswith(_ZERO_TIME):
        return None
    head, _, rest = value.partition(".")
    if not rest:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    digits = "".join(itertools.takewhile(str.isdigit, rest))
    zone = rest[len(digits) :] or "Z"
    stamp = f"{head}.{digits[:6].ljust(6, '0')}{zone.replace('Z', '+00:00')}"
    return datetime.fromisoformat(stamp).astimezone(UTC)


def state_from_attrs(attrs: dict[str, Any]) -> ContainerState:
    state = attrs.get("State") or {}
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    running = bool(state.get("Running"))
    return ContainerState(
        run_id=labels.get(RUN_ID_LABEL, ""),
        container_id=attrs["Id"],
        running=running,
        exit_code=None if running else state.get("ExitCode"),
        started_at=parse_docker_time(state.get("StartedAt")),
        finished_at=None if running else parse_docker_time(state.get("FinishedAt")),
        oom_killed=bool(state.get("OOMKilled")),
        error=state.get("Error") or None,
    )


def _container_of_run(client: docker.DockerClient, name: str, run_id: str) -> str | None:
    try:
        attrs = client.api.inspect_container(name)
    except docker.errors.NotFound:
        return None
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    return str(attrs["Id"]) if labels.get(RUN_ID_LABEL) == run_id else None


class DockerApiRuntime:
    """One container per run; blocking SDK calls run in the runtime's own worker threads,
    so slow runtime calls (a start under load takes seconds) never hold the threads the
    store's calls need (``asyncio.to_thread`` has only cores + 4 of them)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        isolation: Isolation | None = None,
        workers: int = 8,
        owner: str | None = None,
    ) -> None:
        if not base_url:
            raise ValueError("base_url is required (e.g. unix:///path/podman.sock)")
        self._base_url = base_url
        # Listing only this installation's containers: the reconciler lists every pass, and
        # hundreds of another's (or a test's) exited containers made each listing take
        # 0.7-7.5 s and slowed every podman call (docs/BENCHMARKS.md, 2026-11-29).
        self._listed = [RUN_ID_LABEL] + ([f"{OWNER_LABEL}={owner}"] if owner else [])
        self._isolation = isolation or Isolation()
        self._timeout_s = timeout_s
        self._client: docker.DockerClient | None = None
        self._workers = workers
        self._threads: ThreadPoolExecutor | None = None

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            # Fixed API version: no version probe, and podman's compat layer serves it.
            self._client = docker.DockerClient(
                base_url=self._base_url, version="1.41", timeout=int(self._timeout_s)
            )
        return self._client

    async def _call(self, fn: Callable[[docker.DockerClient], T]) -> T:
        def guarded() -> T:
            try:
                return fn(self._docker())
            except docker.errors.ImageNotFound as exc:
                raise ImageNotFound(str(exc.explanation or exc)) from exc
            except docker.errors.APIError as exc:
                raise RuntimeError_(str(exc.explanation or exc)) from exc
            except (requests.exceptions.ConnectionError, FileNotFoundError) as exc:
                raise RuntimeUnavailable(f"container runtime at {self._base_url}: {exc}") from exc
            except docker.errors.DockerException as exc:
                raise RuntimeUnavailable(f"container runtime at {self._base_url}: {exc}") from exc

        if self._threads is None:
            self._threads = ThreadPoolExecutor(self._workers, thread_name_prefix="docker-api")
        return await asyncio.get_running_loop().run_in_executor(self._threads, guarded)

    async def create(self, spec: ContainerSpec) -> str:
        name = f"faas-{spec.run_id}"

        def create(client: docker.DockerClient) -> str:
            try:
                return self._new_container(client, spec, name)
            except docker.errors.ImageNotFound:
                raise
            except docker.errors.APIError:
                # podman answers a taken name with a 500, not Docker's 409: look for the
                # container an earlier attempt created (its answer lost to a restart or a
                # timeout) before calling it a failure.
                existing = _container_of_run(client, name, spec.run_id)
                if existing is None:
                    raise
                return existing

        return await self._call(create)

    def _new_container(self, client: docker.DockerClient, spec: ContainerSpec, name: str) -> str:
        # The image's own user decides whether we must force a non-root one.
        image_user = (client.api.inspect_image(spec.image).get("Config") or {}).get("User")
        container = client.containers.create(
            spec.image,
            command=spec.command,
            name=name,
            environment=spec.env,
            labels={
                RUN_ID_LABEL: spec.run_id,
                TENANT_LABEL: spec.tenant,
                OWNER_LABEL: spec.owner,
            },
            nano_cpus=int(spec.cpu * 1e9),
            mem_limit=f"{spec.memory_mb}m",
            memswap_limit=f"{spec.memory_mb}m",  # no swap: the limit is the limit
            detach=True,
            **self._isolation.docker_options(image_user),
        )
        return str(container.id)

    async def start(self, container_id: str) -> ContainerState:
        def start(client: docker.DockerClient) -> ContainerState:
            container = client.containers.get(container_id)
            container.start()
            container.reload()
            return state_from_attrs(container.attrs)

        return await self._call(start)

    async def inspect(self, container_id: str) -> ContainerState | None:
        def inspect(client: docker.DockerClient) -> ContainerState | None:
            try:
                return state_from_attrs(client.api.inspect_container(container_id))
            except docker.errors.NotFound:
                return None

        return await self._call(inspect)

    async def list_runs(self) -> list[ContainerState]:
        def list_runs(client: docker.DockerClient) -> list[ContainerState]:
            found = client.api.containers(all=True, filters={"label": self._listed})
            states = []
            for summary in found:
                running = summary.get("State") == "running"
                states.append(
                    ContainerState(
                        run_id=(summary.get("Labels") or {}).get(RUN_ID_LABEL, ""),
                        container_id=summary["Id"],
                        running=running,
                    )
                )
            return states

        return await self._call(list_runs)

    async def stop(self, container_id: str, grace_s: int) -> None:
        def stop(client: docker.DockerClient) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.stop(container_id, timeout=grace_s)

        await self._call(stop)

    async def logs(self, container_id: str, tail_bytes: int) -> str | None:
        def logs(client: docker.DockerClient) -> str | None:
            try:
                raw: bytes = client.api.logs(container_id, stdout=True, stderr=True)
            except docker.errors.NotFound:
                return None
            return raw[-tail_bytes:].decode("utf-8", errors="replace")

        return await self._call(logs)

    async def remove(self, container_id: str) -> None:
        def remove(client: docker.DockerClient) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(container_id, force=True)

        await self._call(remove)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)
        if self._threads is not None:
            threads, self._threads = self._threads, None
            threads.shutdown(wait=False)
