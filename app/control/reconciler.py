"""Brings running runs in line with the runtime: exits, timeouts, vanished containers and
the leftovers of closed runs; gives every open run up when the runtime is lost."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from app.control.service import ControlPlane
from app.runtime import ContainerState, RuntimeUnavailable
from app.schemas import RunStatus, StopReason
from app.store.runs import RunRecord

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, control: ControlPlane) -> None:
        if control is None:
            raise ValueError("control is required")
        self._control = control

    async def fail_lost_runs(self, since: datetime) -> int:
        """The runtime is gone: its runs end ``failed`` instead of hanging, the running
        ones billed for the samples they had, the queued ones never started (not billed).
        Returns how many were closed."""
        control, closed = self._control, 0
        lost_s = (datetime.now(UTC) - since).total_seconds()
        message = f"runtime_lost: the container runtime has been unreachable for {lost_s:.0f}s"
        for run in await asyncio.to_thread(control.runs.active):
            if run.id in control.finisher.closing:
                continue
            why = message if run.status == RunStatus.RUNNING else f"{message}; it never started"
            if await control.finisher.finish(
                run, RunStatus.FAILED, StopReason.FAILED, why, reach_runtime=False
            ):
                closed += 1
        return closed

    async def reconcile_once(self) -> None:
        control = self._control
        # The runs before the containers: a run marked running while the list is taken is
        # left for the next pass instead of being judged by a list taken before its
        # container existed (which made finished exit-0 runs "disappear" under load).
        runs = await asyncio.to_thread(control.runs.active)
        containers = {c.run_id: c for c in await control.runtime.list_runs()}
        now = datetime.now(UTC)
        ended = []
        for run in runs:
            if run.status != RunStatus.RUNNING or run.id in control.finisher.closing:
                continue  # a queued run is the starter's until it runs
            container = containers.get(run.id)
            if container is None or not container.running:
                ended.append(run)
            elif run.deadline_at is not None and now >= run.deadline_at:
                await control.finisher.stop_and_finish(run, RunStatus.TIMED_OUT, StopReason.TIMEOUT)
        await self._settle_all(ended)
        await self._remove_leftovers(list(containers.values()))

    async def _settle_all(self, runs: list[RunRecord]) -> None:
        """Closing a run takes three runtime calls (inspect, logs, remove): a few runs at a
        time, not one after another (200 runs ending together waited ~1 min in a row)."""
        slots = asyncio.Semaphore(self._control.limits.close_concurrency)

        async def settle(run: RunRecord) -> None:
            async with slots:
                await self._settle(run)

        outcomes = await asyncio.gather(*(settle(run) for run in runs), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):  # the runtime is unreachable: fail the pass
                raise outcome

    async def _settle(self, run: RunRecord) -> None:
        """The list shows the container stopped, or not at all: ask the runtime about this
        container before closing the run, so the exit code is read before the container is
        removed, and only a container the runtime says does not exist counts as vanished.
        Any other error leaves the run to the next pass (an unreachable runtime fails the
        pass, and is given up only after ``lost_after_s``)."""
        assert run.container_id is not None  # set before a run is running
        finisher = self._control.finisher
        try:
            state = await self._control.runtime.inspect(run.container_id)
            if state is None:
                await finisher.finish(
                    run, RunStatus.FAILED, StopReason.FAILED,
                    "container disappeared from the runtime",
                )  # fmt: skip
            elif not state.running:
                await finisher.finish_exited(run, state)
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # slow or failing answer about one container: retry it
            log.warning("reconciler: run %s not settled this pass: %r", run.id, exc)

    async def _remove_leftovers(self, containers: list[ContainerState]) -> None:
        """Containers of runs already closed (e.g. a crash between commit and removal)."""
        finished = await asyncio.to_thread(
            self._control.runs.finished_ids, [c.run_id for c in containers]
        )
        for container in containers:
            if container.run_id in finished:
                await self._control.runtime.remove(container.container_id)

    async def run_forever(self, interval_s: float) -> None:
        health = self._control.health
        while True:
            try:
                await self.reconcile_once()
                health.reachable()
            except asyncio.CancelledError:
                raise
            except RuntimeUnavailable as exc:
                log.warning("reconciler: runtime unavailable: %s", exc)
                now = datetime.now(UTC)
                health.unreachable(now)
                if health.lost(now):
                    await self._give_up_lost_runs()
            except Exception:
                log.exception("reconciler pass failed; retrying")
            await asyncio.sleep(interval_s)

    async def _give_up_lost_runs(self) -> None:
        since = self._control.health.unreachable_since
        assert since is not None
        try:
            if closed := await self.fail_lost_runs(since):
                log.warning("reconciler: runtime lost, %d runs failed", closed)
        except Exception:  # the store may be away too: the next pass retries
            log.exception("reconciler: closing the runs of a lost runtime failed")
