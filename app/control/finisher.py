"""Closing a run: record exit code, finish time and logs, emit ``stopped``, remove the container."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from app.events import Stopped
from app.runtime import ContainerState, Runtime, RuntimeError_, RuntimeUnavailable
from app.runtime.isolation import SIGKILL_EXIT
from app.schemas import RunStatus, StopReason
from app.settings import RuntimeSettings
from app.store.runs import ACTIVE, STARTING, Finish, OutgoingEvent, RunRecord, RunRepository


def outcome_of_exit(
    state: ContainerState, memory_mb: int
) -> tuple[RunStatus, StopReason, str | None]:
    """How a container that ended by itself is reported."""
    if state.deadline_exceeded:  # Kubernetes ended it at the timeout before we did
        return RunStatus.TIMED_OUT, StopReason.TIMEOUT, None
    if state.oom_killed:
        return RunStatus.FAILED, StopReason.FAILED, f"killed: out of memory (limit {memory_mb} MiB)"
    if state.exit_code == SIGKILL_EXIT:
        # podman on cgroup v1 does not flag OOM kills. A container's PID 1 cannot get SIGKILL
        # from inside its PID namespace, and the platform's own stops never land here, so
        # this was the kernel's OOM killer (or someone outside the platform).
        message = f"killed (SIGKILL): out of memory (limit {memory_mb} MiB) or killed outside the platform"
        return RunStatus.FAILED, StopReason.FAILED, message
    if state.error:
        return RunStatus.FAILED, StopReason.FAILED, state.error
    if state.exit_code == 0:
        return RunStatus.SUCCEEDED, StopReason.EXITED, None
    return RunStatus.FAILED, StopReason.EXITED, f"exited with code {state.exit_code}"


class Finisher:
    def __init__(
        self,
        runs: RunRepository,
        runtime: Runtime,
        topic: str,
        limits: RuntimeSettings,
        *,
        on_commit: Callable[[], None],
    ) -> None:
        self._runs = runs
        self._runtime = runtime
        self._topic = topic
        self._limits = limits
        self._on_commit = on_commit
        # Runs this replica is closing right now: the reconciler must not race them.
        self.closing: set[str] = set()

    async def stop_and_finish(self, run: RunRecord, status: RunStatus, reason: StopReason) -> None:
        if run.id in self.closing:
            return
        self.closing.add(run.id)
        try:
            assert run.container_id is not None
            await self._runtime.stop(run.container_id, self._limits.stop_grace_s)
            await self.finish(run, status, reason, None)
        finally:
            self.closing.discard(run.id)

    async def cancel(self, run: RunRecord) -> bool:
        """Stop a run that is not running yet: no container is left and nothing is billed
        (it never started). False when it started (or ended) meanwhile."""
        won = await self.finish(
            run, RunStatus.STOPPED, StopReason.STOPPED, "stopped before it started",
            reach_runtime=False, only_from=STARTING,
        )  # fmt: skip
        if won and run.container_id is not None:
            # If the runtime is away, the reconciler removes it with the leftovers.
            with contextlib.suppress(RuntimeUnavailable, RuntimeError_):
                await self._runtime.remove(run.container_id)
        return won

    async def finish_exited(self, run: RunRecord, state: ContainerState) -> None:
        status, reason, message = outcome_of_exit(state, run.memory_mb)
        await self.finish(run, status, reason, message, state)

    async def finish(
        self,
        run: RunRecord,
        status: RunStatus,
        reason: StopReason,
        message: str | None,
        state: ContainerState | None = None,
        *,
        reach_runtime: bool = True,
        only_from: Sequence[RunStatus] = ACTIVE,
    ) -> bool:
        """Commit the final state and the ``stopped`` event, if the run is still in one of
        ``only_from``. ``reach_runtime=False`` closes a run without asking the runtime (it is
        gone, or the container never ran): no logs or exit code, and the container, if there
        is one, is removed by the caller or later with the reconciler's leftovers."""
        logs = None
        if run.container_id is not None and reach_runtime:
            logs = await self._runtime.logs(run.container_id, self._limits.log_tail_bytes)
            if state is None:
                state = await self._runtime.inspect(run.container_id)
        now = datetime.now(UTC)
        finished_at = (state.finished_at if state else None) or now
        if run.started_at is not None:
            # podman can stamp FinishedAt a hair before StartedAt for instant exits.
            finished_at = max(finished_at, run.started_at)
        exit_code = state.exit_code if state else None
        event = Stopped(
            run_id=run.id,
            tenant=run.email,
            image_name=run.image_name,
            event_time=finished_at,
            status=status,
            reason=reason,
            exit_code=exit_code,
            started_at=run.started_at,
            finished_at=finished_at,
            message=message,
        )
        finish = Finish(status, reason, exit_code, finished_at, logs, message)
        outgoing = OutgoingEvent(self._topic, run.id, event.model_dump_json())
        won = await asyncio.to_thread(
            self._runs.finish, run.id, finish, outgoing, only_from=only_from
        )
        if won:
            self._on_commit()
        if run.container_id is not None and reach_runtime:
            await self._runtime.remove(run.container_id)
        return won
