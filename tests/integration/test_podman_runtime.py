"""The Docker-API runtime against a real ``podman system service``."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.runtime import ContainerSpec, ImageNotFound, RuntimeUnavailable
from app.runtime.podman import DockerApiRuntime


def spec(image: str, **env: str) -> ContainerSpec:
    return ContainerSpec(
        run_id=str(uuid.uuid4()), tenant="t@example.com", image=image, cpu=0.5,
        memory_mb=64, env=env, owner="tests",
    )  # fmt: skip


async def test_limits_labels_env_and_exit_code(podman_url: str) -> None:
    import docker

    runtime = DockerApiRuntime(podman_url)
    request = spec("localhost/faas-crash", EXIT_CODE="9")
    container_id = await runtime.create(request)
    try:
        attrs = docker.DockerClient(base_url=podman_url, version="1.41").api.inspect_container(
            container_id
        )
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        labels = attrs["Config"]["Labels"]
        assert labels["faas.run_id"] == request.run_id
        assert labels["faas.tenant"] == "t@example.com"
        assert "EXIT_CODE=9" in attrs["Config"]["Env"]
        await runtime.start(container_id)
        for _ in range(50):
            state = await runtime.inspect(container_id)
            if state is not None and not state.running:
                break
            await asyncio.sleep(0.1)
        assert state is not None and state.exit_code == 9
        assert state.finished_at is not None
        assert "exiting with code 9" in (await runtime.logs(container_id, 4096) or "")
        assert request.run_id in {c.run_id for c in await runtime.list_runs()}
    finally:
        await runtime.remove(container_id)
        await runtime.close()
    assert await runtime.inspect(container_id) is None


async def test_missing_image_and_dead_socket(podman_url: str, tmp_path: object) -> None:
    runtime = DockerApiRuntime(podman_url)
    with pytest.raises(ImageNotFound):
        await runtime.create(spec("localhost/does-not-exist:1"))
    await runtime.close()
    dead = DockerApiRuntime("unix:///nonexistent/podman.sock")
    with pytest.raises(RuntimeUnavailable):
        await dead.list_runs()


async def test_create_is_idempotent_per_run(podman_url: str) -> None:
    """A second create for the same run (the first one's answer lost to a restart or a
    timeout) returns the container the first one made; podman answers the taken name
    with a 500, not Docker's 409."""
    runtime = DockerApiRuntime(podman_url)
    request = spec("localhost/faas-crash")
    first = await runtime.create(request)
    try:
        assert await runtime.create(request) == first
        mine = [c.container_id for c in await runtime.list_runs() if c.run_id == request.run_id]
        assert mine == [first]
    finally:
        await runtime.remove(first)
        await runtime.close()


async def test_an_installation_lists_only_its_own_containers(podman_url: str) -> None:
    """Two installations on one podman: each one's reconciler sees its own runs only."""
    ours, theirs = (
        DockerApiRuntime(podman_url, owner="tests"),
        DockerApiRuntime(podman_url, owner="another-installation"),
    )
    request = spec("localhost/faas-crash")  # owner "tests"
    created = await ours.create(request)
    try:
        assert request.run_id in {c.run_id for c in await ours.list_runs()}
        assert request.run_id not in {c.run_id for c in await theirs.list_runs()}
    finally:
        await ours.remove(created)
        await ours.close()
        await theirs.close()
