"""Starts accepted runs on the runtime: oldest first, a bounded number at a time.

An accepted run waits ``pending`` in the store with everything its container needs; the
``Launcher`` takes it to ``running`` (then the reconciler watches it). A runtime that
refuses the run (unknown image, a start the OCI runtime rejects) ends it ``failed``
naming the cause; an unreachable runtime leaves it queued (the reconciler gives queued
runs up with the running ones once the runtime counts as lost). The queue is the store:
after a restart, a run whose container was created but not yet recorded is found again
by ``Runtime.create`` (idempotent per run id), and one recorded but not started is started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from app.control.launch import Launcher
from app.runtime import ImageNotFound, RuntimeError_, RuntimeUnavailable
from app.store.runs import RunRepository

log = logging.getLogger(__name__)
# A start that fails (other than for a missing image, or an unreachable runtime) is tried
# this many times before the run is given up: podman also answers 500 for passing trouble
# ("netavark: EOF" while it is busy or stopping), not only for a start it will never make.
MAX_START_ATTEMPTS = 3


def refusal_message(exc: Exception) -> str:
    if isinstance(exc, ImageNotFound):
        return f"image not available to the runtime: {exc}"
    if isinstance(exc, RuntimeError_):
        return f"the runtime could not start the container: {exc}"
    return f"the runtime could not start the container: {exc!r}"


class Starter:
    def __init__(
        self, runs: RunRepository, launcher: Launcher, concurrency: int, *, idle_s: float = 1.0
    ) -> None:
        self._runs, self._launcher = runs, launcher
        self._concurrency, self._idle_s = concurrency, idle_s
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: Counter[str] = Counter()
        self.in_flight: set[str] = set()  # runs being started now

    def wake(self) -> None:
        self._wakeup.set()

    async def start_pending(self) -> list[asyncio.Task[None]]:
        """Begin starting the oldest queued runs, as many as there are free slots."""
        room = self._concurrency - len(self.in_flight)
        if room <= 0:
            return []
        # The runs in flight are still queued in the store, ahead of the others.
        queued = await asyncio.to_thread(self._runs.starting, room + len(self.in_flight))
        launched: list[asyncio.Task[None]] = []
        for run in (r for r in queued if r.id not in self.in_flight):
            if len(launched) == room:
                break
            self.in_flight.add(run.id)
            task = asyncio.create_task(self._start(run.id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            launched.append(task)
        return launched

    async def _start(self, run_id: str) -> None:
        settled = True  # whether this run's turn is over (its slot goes to the next one)
        try:
            await self._launcher.start(run_id)
            self._failures.pop(run_id, None)
        except RuntimeUnavailable as exc:
            settled = False
            log.warning("starter: runtime unavailable, run %s stays queued: %s", run_id, exc)
        except ImageNotFound as exc:
            await self._give_up(run_id, refusal_message(exc))
        except Exception as exc:
            self._failures[run_id] += 1
            settled = self._failures[run_id] >= MAX_START_ATTEMPTS
            log.warning("starter: starting run %s failed (%r)", run_id, exc)
            if settled:
                await self._give_up(run_id, refusal_message(exc))
        finally:
            self.in_flight.discard(run_id)
            if settled:
                self.wake()

    async def _give_up(self, run_id: str, message: str) -> None:
        try:
            await self._launcher.give_up(run_id, message)
            self._failures.pop(run_id, None)
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
