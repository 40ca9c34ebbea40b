"""Accepting a run answers before the runtime is asked; the starter starts accepted runs
on real podman, a bounded number at a time, ends refused ones ``failed`` naming the
cause, lets a stop win before the start, and picks the queue up again after a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.control import ControlPlane
from app.runtime import ContainerSpec, ContainerState, RuntimeError_, RuntimeUnavailable
from app.runtime.podman import DockerApiRuntime
from app.schemas import RunStatus, StopReason
from app.store.runs import OutgoingEvent
from infra import devstack
from tests.integration.control_kit import (
    TOPIC,
    close_control,
    crash,
    events_of,
    make_control,
    run_until_final,
    start_queued,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def control(podman_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    plane = await make_control(podman_url, tmp_path)
    try:
        yield plane
    finally:
        await close_control(plane)


def containers_of(run_id: str) -> list[str]:
    listed = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=faas.run_id={run_id}"],
        capture_output=True, text=True, env={**os.environ, **devstack.podman_env()}, check=True,
    )  # fmt: skip
    return listed.stdout.split()


async def test_accepted_runs_are_pending_then_started_and_finished(control: ControlPlane) -> None:
    started = time.perf_counter()
    accepted = [await control.submit(crash(exit_code=0)) for _ in range(3)]
    took = time.perf_counter() - started
    assert {run.status for run in accepted} == {RunStatus.PENDING}
    assert all(run.container_id is None for run in accepted)
    assert not containers_of(accepted[0].id)  # nothing asked of the runtime yet
    print(f"3 runs accepted in {took * 1000:.0f} ms")

    runs = await run_until_final(control, [run.id for run in accepted])
    for run in runs:
        assert (run.status, run.exit_code, run.reason) == (
            RunStatus.SUCCEEDED,
            0,
            StopReason.EXITED,
        )
        assert run.started_at is not None and run.finished_at is not None
        assert [e["type"] for e in events_of(control, run.id)] == ["deployed", "started", "stopped"]
        assert not containers_of(run.id)
    # The env the container needed is not kept once it ran.
    assert control.runs.env_of(accepted[0].id) == {}


class CountingRuntime(DockerApiRuntime):
    """Real podman; records how many creates and starts are in progress at once."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.busy = self.most_busy = 0

    async def create(self, spec: ContainerSpec) -> str:
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        try:
            await asyncio.sleep(0.05)  # long enough for the others to pile up if they may
            return await super().create(spec)
        finally:
            self.busy -= 1

    async def start(self, container_id: str) -> ContainerState:
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        try:
            return await super().start(container_id)
        finally:
            self.busy -= 1


async def test_no_more_starts_at_once_than_the_setting_allows(
    podman_url: str, tmp_path: Path
) -> None:
    runtime = CountingRuntime(podman_url)
    control = await make_control(podman_url, tmp_path, runtime, start_concurrency=2)
    try:
        accepted = [await control.submit(crash(exit_code=0)) for _ in range(6)]
        first = await control.starter.start_pending()
        assert len(first) == 2  # two slots: the other four wait their turn
        assert await control.starter.start_pending() == []
        await asyncio.gather(*first)
        runs = await run_until_final(control, [run.id for run in accepted])
        assert {run.status for run in runs} == {RunStatus.SUCCEEDED}
        assert runtime.most_busy == 2
        # Oldest first: the first two slots went to the first two accepted.
        started = sorted(runs, key=lambda run: run.started_at or run.created_at)
        assert {run.id for run in started[:2]} == {run.id for run in accepted[:2]}
    finally:
        await close_control(control)


async def test_an_unknown_image_ends_failed_naming_it_and_is_not_billed(
    control: ControlPlane,
) -> None:
    request = crash().model_copy(update={"image_name": "localhost/not-built-here:1"})
    accepted = await control.submit(request)
    assert accepted.status == RunStatus.PENDING
    await start_queued(control)
    run = await control.get(accepted.id)
    assert (run.status, run.reason) == (RunStatus.FAILED, StopReason.FAILED)
    assert run.message is not None
    assert run.message.startswith("image not available to the runtime")
    assert "localhost/not-built-here" in run.message
    assert run.started_at is None and run.exit_code is None
    events = events_of(control, run.id)
    assert [e["type"] for e in events] == ["stopped"]  # never deployed
    assert events[0]["started_at"] is None  # the invoicer skips it: it never ran
    assert not containers_of(run.id)


@pytest.fixture(scope="module")
def unstartable_image() -> str:
    """An image whose entrypoint does not exist: podman creates it, the OCI runtime refuses
    to start it."""
    name = "localhost/faas-test-unstartable:latest"
    context = Path(__file__).parent / "unstartable"
    context.mkdir(exist_ok=True)
    (context / "Containerfile").write_text('FROM localhost/faas-crash\nENTRYPOINT ["/missing"]\n')
    subprocess.run(
        ["podman", "build", "-q", "-t", name, str(context)],
        check=True, capture_output=True, env={**os.environ, **devstack.podman_env()},
    )  # fmt: skip
    (context / "Containerfile").unlink()
    context.rmdir()
    return name


async def test_a_start_the_runtime_refuses_ends_failed_with_its_reason(
    control: ControlPlane, unstartable_image: str
) -> None:
    accepted = await control.submit(crash().model_copy(update={"image_name": unstartable_image}))
    await start_queued(control)
    run = await control.get(accepted.id)
    assert (run.status, run.reason) == (RunStatus.FAILED, StopReason.FAILED), run
    assert run.message is not None
    assert run.message.startswith("the runtime could not start the container"), run.message
    assert "/missing" in run.message
    assert [e["type"] for e in events_of(control, run.id)] == ["deployed", "stopped"]
    assert not containers_of(run.id)  # the created container is removed


async def test_a_passing_runtime_error_at_start_is_retried(podman_url: str, tmp_path: Path) -> None:
    class StartFailsOnce(DockerApiRuntime):
        failed = False

        async def start(self, container_id: str) -> ContainerState:
            if not self.failed:
                self.failed = True  # as podman answers while it is busy or stopping
                raise RuntimeError_("netavark: : EOF (injected)")
            return await super().start(container_id)

    plane = await make_control(podman_url, tmp_path, StartFailsOnce(podman_url))
    try:
        accepted = await plane.submit(crash(exit_code=0))
        (run,) = await run_until_final(plane, [accepted.id])
        assert (run.status, run.exit_code) == (RunStatus.SUCCEEDED, 0)
        assert [e["type"] for e in events_of(plane, run.id)] == ["deployed", "started", "stopped"]
    finally:
        await close_control(plane)


async def test_stop_before_the_start_wins_and_leaves_no_container(control: ControlPlane) -> None:
    accepted = await control.submit(crash(exit_code=0))
    stopped = await control.stop(accepted.id)
    assert (stopped.status, stopped.reason) == (RunStatus.STOPPED, StopReason.STOPPED)
    assert stopped.message == "stopped before it started"
    await start_queued(control)
    assert (await control.get(accepted.id)).status == RunStatus.STOPPED
    assert not containers_of(accepted.id)
    events = events_of(control, accepted.id)
    assert [e["type"] for e in events] == ["stopped"]
    assert events[0]["started_at"] is None
    assert (await control.stop(accepted.id)).finished_at == stopped.finished_at  # unchanged


async def test_stop_during_the_start_removes_what_the_starter_made(
    podman_url: str, tmp_path: Path
) -> None:
    class StopWhileCreating(DockerApiRuntime):
        async def create(self, spec: ContainerSpec) -> str:
            container_id = await super().create(spec)
            await plane.stop(spec.run_id)  # the tenant's stop lands between create and record
            return container_id

    plane = await make_control(podman_url, tmp_path, StopWhileCreating(podman_url))
    try:
        accepted = await plane.submit(crash(exit_code=0))
        await start_queued(plane)
        run = await plane.get(accepted.id)
        assert run.status == RunStatus.STOPPED and run.started_at is None
        assert not containers_of(run.id)
    finally:
        await close_control(plane)


async def test_the_queue_survives_a_restart(podman_url: str, tmp_path: Path) -> None:
    before = await make_control(podman_url, tmp_path)
    queued = await before.submit(crash(exit_code=0))
    # A run whose container was created, but the crash came before it was recorded.
    orphaned = await before.submit(crash(exit_code=0))
    spec = ContainerSpec(
        run_id=orphaned.id, tenant=orphaned.email, image=orphaned.image_name, cpu=0.25,
        memory_mb=32, env={"EXIT_CODE": "0"}, owner=str(tmp_path),
    )  # fmt: skip
    await before.runtime.create(spec)
    # A run recorded as deployed, but not started.
    deployed = await before.submit(crash(exit_code=0))
    container_id = await before.runtime.create(dataclasses.replace(spec, run_id=deployed.id))
    event = OutgoingEvent(TOPIC, deployed.id, '{"type":"deployed"}')
    assert before.runs.mark_deployed(deployed.id, container_id, deployed.created_at, event)
    await before.runtime.close()

    after = await make_control(podman_url, tmp_path)  # the replica that replaced it
    try:
        ids = [queued.id, orphaned.id, deployed.id]
        runs = await run_until_final(after, ids)
        assert [(r.status, r.exit_code) for r in runs] == [(RunStatus.SUCCEEDED, 0)] * 3
        assert runs[1].container_id is not None  # the orphan was adopted, not duplicated
        for run_id in ids:
            assert not containers_of(run_id)
    finally:
        await close_control(after)


async def test_runs_are_refused_once_the_runtime_counts_as_lost(control: ControlPlane) -> None:
    control.health.unreachable(datetime.now(UTC) - timedelta(seconds=control.limits.lost_after_s))
    with pytest.raises(RuntimeUnavailable, match="unreachable"):
        await control.submit(crash())
    control.health.reachable()
    assert (await control.submit(crash())).status == RunStatus.PENDING
