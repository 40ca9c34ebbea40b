"""Starts accepted runs on the runtime: oldest first, a bounded number at a time.

An accepted run waits ``pending`` in the store with everything its container needs. The
starter creates the container (event ``deployed``, status ``deployed``), starts it
(``started``, ``running``) and from then on the reconciler watches it. Every step is a
conditional state change, so a stop that lands first wins and the starter removes what
it made. A runtime that refuses the run (unknown image, a command it cannot execute)
ends it ``failed`` naming the cause; an unreachable runtime leaves it queued (the
reconciler gives queued runs up with the running ones once the runtime counts as lost).
The queue is the store: after a restart, a run whose container was created but not yet
recorded is found again by ``Runtime.create`` (idempotent per run id), and one recorded
but not started is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from app.control.finisher import Finisher
from app.events import Deployed, Started
from app.runtime import (
    ContainerSpec,
    ContainerState,
    ImageNotFound,
    Runtime,
    RuntimeError_,
    RuntimeUnavailable,
)
from app.schemas import RunStatus, StopReason
from app.settings import RuntimeSettings
from app.store.runs import STARTING, OutgoingEvent, RunRecord, RunRepository

log = logging.getLogger(__name__)
# A run whose start keeps failing with errors that are not the runtime's answer (a bug, a
# timeout) is given up after this many attempts instead of being retried forever.
MAX_UNEXPECTED_ERRORS = 5


def refusal_message(exc: Exception) -> str:
    if isinstance(exc, ImageNotFound):
        return f"image not available to the runtime: {exc}"
    return f"the runtime could not start the container: {exc}"


class Starter:
    def __init__(
        self,
        runs: RunRepository,
        runtime: Runtime,
        finisher: Finisher,
        limits: RuntimeSettings,
        topic: str,
        *,
        on_commit: Callable[[], None],
        idle_s: float = 1.0,
    ) -> None:
        self._runs, self._runtime, self._finisher = runs, runtime, finisher
        self._limits, self._topic, self._on_commit = limits, topic, on_commit
        self._idle_s = idle_s
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unexpected: Counter[str] = Counter()
        self.in_flight: set[str] = set()  # runs being started now

    def wake(self) -> None:
        self._wakeup.set()

    async def start_pending(self) -> list[asyncio.Task[None]]:
        """Begin starting the oldest queued runs, as many as there are free slots."""
        room = self._limits.start_concurrency - len(self.in_flight)
        if room <= 0:
            return []
        # The runs in flight are still queued in the store, ahead of the others.
        queued = await asyncio.to_thread(self._runs.starting, room + len(self.in_flight))
        launched: list[asyncio.Task[None]] = []
        for run in (r for r in queued if r.id not in self.in_flight):
            if len(launched) == room:
                break
            self.in_flight.add(run.id)
            task = asyncio.create_task(self._start_guarded(run.id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            launched.append(task)
        return launched

    async def _start_guarded(self, run_id: str) -> None:
        settled = True  # whether this run's turn is over (a slot frees for the next one)
        try:
            await self._start(run_id)
            self._unexpected.pop(run_id, None)
        except RuntimeUnavailable as exc:
            settled = False
            log.warning("starter: runtime unavailable, run %s stays queued: %s", run_id, exc)
        except (ImageNotFound, RuntimeError_) as exc:
            await self._give_up(run_id, refusal_message(exc))
        except Exception as exc:
            self._unexpected[run_id] += 1
            settled = self._unexpected[run_id] >= MAX_UNEXPECTED_ERRORS
            log.warning("starter: starting run %s failed (%r)", run_id, exc)
            if settled:
                await self._give_up(run_id, f"the runtime could not start the container: {exc!r}")
        finally:
            self.in_flight.discard(run_id)
            if settled:
                self.wake()

    async def _start(self, run_id: str) -> None:
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

    async def _give_up(self, run_id: str, message: str) -> None:
        """End a queued run ``failed`` (no invoice: it never ran) and remove its container."""
        try:
            run = await asyncio.to_thread(self._runs.get, run_id)
            if run is None or run.status not in STARTING:
                return
            await self._finisher.finish(
                run, RunStatus.FAILED, StopReason.FAILED, message,
                reach_runtime=False, only_from=STARTING,
            )  # fmt: skip
            self._unexpected.pop(run_id, None)
            if run.container_id is not None:
                # If the runtime is away, the reconciler removes it with the leftovers.
                with contextlib.suppress(RuntimeUnavailable, RuntimeError_):
                    await self._runtime.remove(run.container_id)
        except Exception:  # the store is away: the run stays queued and is tried again
            log.exception("starter: could not record that run %s failed to start", run_id)

    async def run_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._idle_s)
            self._wakeup.clear()
            try:
                await self.start_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is away: the queue is still there later
                log.warning("starter: reading the queue failed: %s", exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
