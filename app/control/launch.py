"""The steps that take one accepted run to ``running``: create its container (``deployed``),
start it (``running``), or give it up (``failed``). Each step is a conditional state
change, so a stop that lands first wins and the step removes what it made."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from app.control.finisher import Finisher
from app.events import Deployed, Started
from app.runtime import ContainerSpec, ContainerState, Runtime, RuntimeError_, RuntimeUnavailable
from app.schemas import RunStatus, StopReason
from app.settings import RuntimeSettings
from app.store.runs import STARTING, OutgoingEvent, RunRecord, RunRepository


class Launcher:
    def __init__(
        self,
        runs: RunRepository,
        runtime: Runtime,
        finisher: Finisher,
        limits: RuntimeSettings,
        topic: str,
        *,
        on_commit: Callable[[], None],
    ) -> None:
        self._runs, self._runtime, self._finisher = runs, runtime, finisher
        self._limits, self._topic, self._on_commit = limits, topic, on_commit

    async def start(self, run_id: str) -> None:
        """Take the run from where it is (queued, or created before a restart) to running.
        Raises what the runtime raised; the caller decides between retry and give up."""
        run = await asyncio.to_thread(self._runs.get, run_id)
        if run is None or run.status not in STARTING:
            return  # stopped while it waited
        if run.container_id is None:
            container_id = await self._create(run)
            if container_id is None:
                return
            state = await self._runtime.start(container_id)
        else:
            container_id, state = run.container_id, await self._resume(run.container_id)
        await self._mark_running(run, container_id, state)

    async def _create(self, run: RunRecord) -> str | None:
        env = await asyncio.to_thread(self._runs.env_of, run.id)
        spec = ContainerSpec(
            run_id=run.id, tenant=run.email, image=run.image_name, cpu=run.cpu,
            memory_mb=run.memory_mb, env=env, command=run.command,
            owner=self._limits.owner or "", timeout_s=run.timeout_s,
        )  # fmt: skip
        container_id = await self._runtime.create(spec)
        deployed_at = datetime.now(UTC)
        deployed = Deployed(
            run_id=run.id, tenant=run.email, image_name=run.image_name, event_time=deployed_at,
            cpu=run.cpu, memory_mb=run.memory_mb, timeout_s=run.timeout_s,
            tariff=run.tariff, tariff_id=run.tariff_id,
        )  # fmt: skip
        event = OutgoingEvent(self._topic, run.id, deployed.model_dump_json())
        if await asyncio.to_thread(
            self._runs.mark_deployed, run.id, container_id, deployed_at, event
        ):
            self._on_commit()
            return container_id
        await self._runtime.remove(container_id)  # stopped while it was being created
        return None

    async def _resume(self, container_id: str) -> ContainerState:
        """A start interrupted by a restart of the control plane: carry on where it was."""
        state = await self._runtime.inspect(container_id)
        if state is None:
            raise RuntimeError_("its container was removed before it started")
        if not state.running and state.started_at is None:  # created, never started
            state = await self._runtime.start(container_id)
        return state

    async def _mark_running(self, run: RunRecord, container_id: str, state: ContainerState) -> None:
        started_at = state.started_at or datetime.now(UTC)
        started = Started(
            run_id=run.id, tenant=run.email, image_name=run.image_name,
            event_time=started_at, started_at=started_at,
        )  # fmt: skip
        deadline = started_at + timedelta(seconds=run.timeout_s)
        events = [OutgoingEvent(self._topic, run.id, started.model_dump_json())]
        if await asyncio.to_thread(
            self._runs.mark_running, run.id, container_id, started_at, deadline, events
        ):
            self._on_commit()
            return
        # Stopped (or given up) while it was starting: it must not run on unwatched.
        await self._runtime.stop(container_id, self._limits.stop_grace_s)
        await self._runtime.remove(container_id)

    async def give_up(self, run_id: str, message: str) -> None:
        """End a run that is not running yet ``failed`` (no invoice: it never ran) and
        remove its container, if it has one."""
        run = await asyncio.to_thread(self._runs.get, run_id)
        if run is None or run.status not in STARTING:
            return
        await self._finisher.finish(
            run, RunStatus.FAILED, StopReason.FAILED, message,
            reach_runtime=False, only_from=STARTING,
        )  # fmt: skip
        if run.container_id is not None:
            # If the runtime is away, the reconciler removes it with the leftovers.
            with contextlib.suppress(RuntimeUnavailable, RuntimeError_):
                await self._runtime.remove(run.container_id)
