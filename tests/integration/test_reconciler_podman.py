"""The reconciler on real podman: a run is closed with its container's real exit code, and
only a container the runtime says does not exist counts as vanished (issue 8: exit-0 runs
were recorded ``failed``, "container disappeared from the runtime", under load)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from app.control.reconciler import Reconciler
from app.runtime import ContainerState, RuntimeError_
from app.runtime.podman import DockerApiRuntime
from app.schemas import RunRequest, RunStatus, StopReason
from infra import devstack
from tests.integration.control_kit import (
    close_control,
    crash,
    make_control,
    run_until_final,
    start_queued,
)

pytestmark = pytest.mark.integration


class SteeredRuntime(DockerApiRuntime):
    """Real podman, with hooks a test uses to put work between the runtime's answers, or
    to make its listing miss containers and an inspect fail, as podman does under load."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.after_list: Callable[[], Awaitable[None]] | None = None
        self.list_misses_all = False
        self.inspect_failures = 0

    async def list_runs(self) -> list[ContainerState]:
        listed = await super().list_runs()
        if self.after_list is not None:
            hook, self.after_list = self.after_list, None
            await hook()
        return [] if self.list_misses_all else listed

    async def inspect(self, container_id: str) -> ContainerState | None:
        if self.inspect_failures:
            self.inspect_failures -= 1
            raise RuntimeError_("inspect timed out (injected)")
        return await super().inspect(container_id)


async def test_a_run_started_while_the_containers_are_listed_keeps_its_exit_code(
    podman_url: str, tmp_path: Path
) -> None:
    """The cause: the reconciler took the container list, then read the running runs; a
    run started in between was running in the store but absent from the older list."""
    runtime = SteeredRuntime(podman_url)
    control = await make_control(podman_url, tmp_path, runtime)
    try:
        accepted = await control.submit(crash(exit_code=0))
        runtime.after_list = lambda: start_queued(control)  # started right after the list
        await Reconciler(control).reconcile_once()
        assert (await control.get(accepted.id)).status == RunStatus.RUNNING
        (run,) = await run_until_final(control, [accepted.id])
        assert (run.status, run.exit_code, run.message) == (RunStatus.SUCCEEDED, 0, None)
    finally:
        await close_control(control)


async def test_a_container_the_list_misses_is_inspected_and_errors_are_retried(
    podman_url: str, tmp_path: Path
) -> None:
    runtime = SteeredRuntime(podman_url)
    control = await make_control(podman_url, tmp_path, runtime)
    try:
        accepted = await control.submit(crash(exit_code=0))
        await start_queued(control)
        runtime.list_misses_all, runtime.inspect_failures = True, 2
        reconciler = Reconciler(control)
        for _ in range(2):  # inspect fails: nothing is concluded from the missing entry
            await reconciler.reconcile_once()
            assert (await control.get(accepted.id)).status == RunStatus.RUNNING
        for _ in range(50):
            await reconciler.reconcile_once()
            run = await control.get(accepted.id)
            if run.status.is_final:
                break
            await asyncio.sleep(0.1)
        assert (run.status, run.exit_code, run.reason) == (
            RunStatus.SUCCEEDED,
            0,
            StopReason.EXITED,
        )
        assert run.message is None
    finally:
        await close_control(control)


async def test_a_container_removed_behind_the_platforms_back_is_reported_gone(
    podman_url: str, tmp_path: Path
) -> None:
    control = await make_control(podman_url, tmp_path)
    try:
        echo = RunRequest(image_name="localhost/faas-echo", email="gone@example.com", cpu=0.25)
        accepted = await control.submit(echo)
        await start_queued(control)
        running = await control.get(accepted.id)
        assert running.status == RunStatus.RUNNING and running.container_id is not None
        await asyncio.to_thread(
            subprocess.run, ["podman", "rm", "-f", "-t", "0", running.container_id],
            check=True, capture_output=True, env={**os.environ, **devstack.podman_env()},
        )  # fmt: skip
        reconciler = Reconciler(control)
        for _ in range(20):  # an error about a container being removed is retried next pass
            await reconciler.reconcile_once()
            if (run := await control.get(accepted.id)).status.is_final:
                break
            await asyncio.sleep(0.2)
        assert (run.status, run.message) == (
            RunStatus.FAILED,
            "container disappeared from the runtime",
        )
    finally:
        await close_control(control)


async def test_many_short_runs_at_once_all_end_with_their_real_exit_code(
    podman_url: str, tmp_path: Path
) -> None:
    """The platform's own loops, busy: the starter at 4 at a time, the reconciler every
    50 ms, 24 functions that exit 0 or 5 at once."""
    control = await make_control(podman_url, tmp_path, start_concurrency=4)
    loops = [
        asyncio.create_task(control.starter.run_forever()),
        asyncio.create_task(Reconciler(control).run_forever(0.05)),
    ]
    try:
        codes = [0, 5] * 12
        accepted = [await control.submit(crash(exit_code=code)) for code in codes]
        for _ in range(600):
            runs = [await control.get(run.id) for run in accepted]
            if all(run.status.is_final for run in runs):
                break
            await asyncio.sleep(0.1)
        assert [(r.exit_code, r.message) for r in runs] == [
            (code, None if code == 0 else "exited with code 5") for code in codes
        ]
    finally:
        for loop in loops:
            loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*loops)
        await close_control(control)
