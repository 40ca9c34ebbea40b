"""Brings stored runs in line with the runtime: exits, timeouts, vanished and orphan containers."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from app.control.service import ControlPlane
from app.runtime import ContainerState, RuntimeUnavailable
from app.schemas import RunStatus, StopReason

log = logging.getLogger(__name__)
STALE_PENDING = timedelta(seconds=120)  # a submit that crashed between insert and start


def runtime_lost(unreachable_since: datetime | None, now: datetime, after_s: float) -> bool:
    """Whether the runtime has been unreachable long enough to give its runs up."""
    return unreachable_since is not None and (now - unreachable_since).total_seconds() >= after_s


class Reconciler:
    def __init__(self, control: ControlPlane) -> None:
        if control is None:
            raise ValueError("control is required")
        self._control = control
        self.unreachable_since: datetime | None = None

    async def fail_lost_runs(self, since: datetime) -> int:
        """The runtime is gone: its running runs end ``failed`` (billed for the samples they
        had) instead of hanging; returns how many were closed."""
        control, closed = self._control, 0
        lost_s = (datetime.now(UTC) - since).total_seconds()
        message = f"runtime_lost: the container runtime has been unreachable for {lost_s:.0f}s"
        for run in await asyncio.to_thread(control.runs.active):
            if run.status != RunStatus.RUNNING or run.id in control.finisher.closing:
                continue
            if await control.finisher.finish(
                run, RunStatus.FAILED, StopReason.FAILED, message, reach_runtime=False
            ):
                closed += 1
        return closed

    async def reconcile_once(self) -> None:
        control = self._control
        containers = {c.run_id: c for c in await control.runtime.list_runs()}
        now = datetime.now(UTC)
        for run in await asyncio.to_thread(control.runs.active):
            if run.id in control.finisher.closing:
                continue
            container = containers.get(run.id)
            if run.status == RunStatus.PENDING:
                if now - run.created_at > STALE_PENDING:
                    await self._discard_stale(run.id, container)
            elif container is None:
                await control.finisher.finish(
                    run,
                    RunStatus.FAILED,
                    StopReason.FAILED,
                    "container disappeared from the runtime",
                )
            elif not container.running:
                state = await control.runtime.inspect(container.container_id)
                if state is not None:
                    await control.finisher.finish_exited(run, state)
            elif run.deadline_at is not None and now >= run.deadline_at:
                await control.finisher.stop_and_finish(run, RunStatus.TIMED_OUT, StopReason.TIMEOUT)
        await self._remove_leftovers(list(containers.values()))

    async def _discard_stale(self, run_id: str, container: ContainerState | None) -> None:
        if container is not None:
            await self._control.runtime.remove(container.container_id)
        await asyncio.to_thread(self._control.runs.discard, run_id)

    async def _remove_leftovers(self, containers: list[ContainerState]) -> None:
        """Containers of runs already closed (e.g. a crash between commit and removal)."""
        finished = await asyncio.to_thread(
            self._control.runs.finished_ids, [c.run_id for c in containers]
        )
        for container in containers:
            if container.run_id in finished:
                await self._control.runtime.remove(container.container_id)

    async def run_forever(self, interval_s: float) -> None:
        lost_after_s = self._control.limits.lost_after_s
        while True:
            try:
                await self.reconcile_once()
                self.unreachable_since = None
            except asyncio.CancelledError:
                raise
            except RuntimeUnavailable as exc:
                log.warning("reconciler: runtime unavailable: %s", exc)
                now = datetime.now(UTC)
                self.unreachable_since = self.unreachable_since or now
                if runtime_lost(self.unreachable_since, now, lost_after_s):
                    try:
                        if closed := await self.fail_lost_runs(self.unreachable_since):
                            log.warning("reconciler: runtime lost, %d runs failed", closed)
                    except Exception:  # the store may be away too: the next pass retries
                        log.exception("reconciler: closing the runs of a lost runtime failed")
            except Exception:
                log.exception("reconciler pass failed; retrying")
            await asyncio.sleep(interval_s)
