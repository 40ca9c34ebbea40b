"""Function isolation on real podman, through the control plane (SQLite store, reconciler)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.control import ControlPlane
from app.control.reconciler import Reconciler
from app.runtime.isolation import Isolation
from app.runtime.podman import DockerApiRuntime
from app.schemas import RunRequest, RunStatus, StopReason
from app.settings import RuntimeSettings
from app.store.db import make_engine, migrate
from app.store.runs import RunRecord, RunRepository
from app.tariffs.repository import TariffRepository
from tests.integration.control_kit import start_queued

pytestmark = [pytest.mark.integration, pytest.mark.hostile]


@pytest.fixture
async def control(podman_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    engine = make_engine(f"sqlite:///{tmp_path / 'faas.db'}")
    await asyncio.to_thread(migrate, engine)
    limits = RuntimeSettings(docker_url=podman_url, owner=str(tmp_path), stop_grace_s=1)
    runtime = DockerApiRuntime(podman_url, isolation=Isolation.from_settings(limits))
    plane = ControlPlane(
        RunRepository(engine), runtime, TariffRepository(engine), limits, "faas.deployments"
    )
    try:
        yield plane
    finally:
        for run in await asyncio.to_thread(plane.runs.active):
            if run.container_id is not None:
                await runtime.remove(run.container_id)
        await runtime.close()
        engine.dispose()


async def submit_started(control: ControlPlane, request: RunRequest) -> RunRecord:
    """Accept the run and let the starter start it."""
    run = await control.submit(request)
    await start_queued(control)
    return await control.get(run.id)


async def run_to_end(control: ControlPlane, request: RunRequest) -> tuple[RunRecord, str]:
    """Submit, reconcile until the run is final; its record and stored logs."""
    run = await submit_started(control, request)
    reconciler = Reconciler(control)
    for _ in range(150):
        await reconciler.reconcile_once()
        run = await control.get(run.id)
        if run.status.is_final:
            return run, await control.logs(run.id)
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {run.id} still {run.status} after 30 s")


def shell(script: str, **env: str) -> RunRequest:
    """faas-echo runs a busybox command when given one."""
    return RunRequest(
        image_name="localhost/faas-echo", email="iso@example.com", env=env,
        command=["sh", "-c", script], memory_mb=32, cpu=0.5, timeout_s=30,
    )  # fmt: skip


async def test_memory_limit_kills_the_function_and_the_run_says_out_of_memory(
    control: ControlPlane,
) -> None:
    hog = RunRequest(
        image_name="localhost/faas-mem", email="iso@example.com",
        env={"MEM_MB": "200", "DURATION_S": "5"}, memory_mb=48, timeout_s=30,
    )  # fmt: skip
    run, logs = await run_to_end(control, hog)
    assert run.status == RunStatus.FAILED and run.reason == StopReason.FAILED
    assert run.exit_code == 137
    assert run.message is not None and "out of memory (limit 48 MiB)" in run.message
    assert "holding 200 MiB" not in logs  # it never got the memory it asked for


async def test_no_privileges_read_only_root_non_root_user(control: ControlPlane) -> None:
    script = (
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status; id -u; "
        "touch /root-write && echo ROOT-WRITABLE; echo ok > /tmp/t && echo TMP-WRITABLE; "
        "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"
    )
    run, logs = await run_to_end(control, shell(script))
    assert run.status == RunStatus.SUCCEEDED, logs
    assert "CapEff:\t0000000000000000" in logs
    assert "CapPrm:\t0000000000000000" in logs
    assert "CapBnd:\t0000000000000000" in logs
    assert "NoNewPrivs:\t1" in logs
    assert "65534" in logs.splitlines()
    assert "ROOT-WRITABLE" not in logs and "Read-only file system" in logs
    assert "TMP-WRITABLE" in logs
    assert "256" in logs.splitlines()  # the pids limit


async def test_a_function_cannot_see_another_functions_env(control: ControlPlane) -> None:
    secret = "s3cr3t-value-of-tenant-a"
    # The holder shows the secret is really in its env, then stays running meanwhile.
    holder = await submit_started(
        control, shell("env | grep API_SECRET; sleep 20", API_SECRET=secret)
    )
    try:
        dump = "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; env"
        run, logs = await run_to_end(control, shell(dump))
        assert run.status == RunStatus.SUCCEEDED, logs
        assert "PATH=" in logs  # it did read environments: its own
        assert secret not in logs and "API_SECRET" not in logs
        assert (await control.get(holder.id)).status == RunStatus.RUNNING
    finally:
        stopped = await control.stop(holder.id)
    assert stopped.status == RunStatus.STOPPED
    assert f"API_SECRET={secret}" in await control.logs(holder.id)


async def test_limits_are_set_even_when_the_request_names_none(
    control: ControlPlane, podman_url: str
) -> None:
    import docker

    bare = RunRequest(image_name="localhost/faas-echo", email="iso@example.com")
    run = await submit_started(control, bare)
    try:
        assert run.container_id is not None
        client = docker.DockerClient(base_url=podman_url, version="1.41")
        host = client.api.inspect_container(run.container_id)["HostConfig"]
        client.close()
        limits = control.limits
        assert host["NanoCpus"] == int(limits.default_cpu * 1e9)
        assert host["Memory"] == limits.default_memory_mb * 2**20
        assert host["MemorySwap"] == host["Memory"]  # no swap beyond the limit
        assert host["PidsLimit"] == limits.pids_limit
        assert host["ReadonlyRootfs"] is True
        assert "no-new-privileges" in " ".join(host.get("SecurityOpt") or [])
        assert (await control.get(run.id)).timeout_s == limits.default_timeout_s
    finally:
        await control.stop(run.id)
