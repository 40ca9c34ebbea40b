"""Accepting, inspecting and stopping runs (the starter starts them, the reconciler
watches them run)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from app.control.errors import FieldError, RunNotFound
from app.control.finisher import Finisher
from app.control.health import RuntimeHealth
from app.control.launch import Launcher
from app.control.starter import Starter
from app.runtime import Runtime, RuntimeUnavailable
from app.schemas import RunRequest, RunStatus, StopReason
from app.settings import RuntimeSettings
from app.store.models import RunRow
from app.store.runs import STARTING, RunRecord, RunRepository
from app.tariffs.schemas import TariffView


class TariffResolver(Protocol):
    def resolve(self, ref: str | None) -> TariffView:
        """The live tariff named ``ref`` (id or name), or the default; LookupError if none."""
        ...


def utcnow() -> datetime:
    return datetime.now(UTC)


class ControlPlane:
    def __init__(
        self,
        runs: RunRepository,
        runtime: Runtime,
        tariffs: TariffResolver,
        limits: RuntimeSettings,
        topic: str,
        *,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        if runs is None or runtime is None or tariffs is None or limits is None:
            raise ValueError("runs, runtime, tariffs and limits are required")
        self.runs = runs
        self.tariffs = tariffs
        self.runtime = runtime
        self.limits = limits
        self.topic = topic
        self.finisher = Finisher(runs, runtime, topic, limits, on_commit=on_commit)
        launcher = Launcher(runs, runtime, self.finisher, limits, topic, on_commit=on_commit)
        self.starter = Starter(runs, launcher, limits.start_concurrency)
        self.health = RuntimeHealth(limits.lost_after_s)  # kept up to date by the reconciler

    def _checked(self, request: RunRequest) -> tuple[float, int, int]:
        limits = self.limits
        cpu = request.cpu if request.cpu is not None else limits.default_cpu
        memory_mb = request.memory_mb if request.memory_mb is not None else limits.default_memory_mb
        timeout_s = request.timeout_s if request.timeout_s is not None else limits.default_timeout_s
        if cpu > limits.max_cpu:
            raise FieldError("cpu", f"at most {limits.max_cpu} cores")
        if memory_mb > limits.max_memory_mb:
            raise FieldError("memory_mb", f"at most {limits.max_memory_mb} MiB")
        if timeout_s > limits.max_timeout_s:
            raise FieldError("timeout_s", f"at most {limits.max_timeout_s} s")
        env_bytes = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in request.env.items())
        if env_bytes > limits.max_env_bytes:
            raise FieldError("env", f"{env_bytes} bytes, at most {limits.max_env_bytes}")
        return cpu, memory_mb, timeout_s

    async def submit(self, request: RunRequest) -> RunRecord:
        """Accept a run: checked, its tariff resolved, queued ``pending`` for the starter.
        Answers without waiting for the runtime; a runtime lost for good refuses it."""
        cpu, memory_mb, timeout_s = self._checked(request)
        now = utcnow()
        if self.health.lost(now):
            raise RuntimeUnavailable(
                f"unreachable for more than {self.limits.lost_after_s:.0f}s; runs are not accepted"
            )
        try:
            tariff = await asyncio.to_thread(self.tariffs.resolve, request.tariff)
        except LookupError as exc:
            raise FieldError("tariff", str(exc)) from exc
        row = RunRow(
            id=str(uuid.uuid4()),
            email=str(request.email),
            image_name=request.image_name,
            command=request.command,
            env=request.env,
            cpu=cpu,
            memory_mb=memory_mb,
            timeout_s=timeout_s,
            tariff=tariff.name,
            tariff_id=tariff.id,
            status=RunStatus.PENDING.value,
            created_at=now,
        )
        accepted = await asyncio.to_thread(self.runs.add_pending, row)
        self.starter.wake()
        return accepted

    async def get(self, run_id: str) -> RunRecord:
        run = await asyncio.to_thread(self.runs.get, run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def list(self, email: str, limit: int = 100, offset: int = 0) -> list[RunRecord]:
        return await asyncio.to_thread(self.runs.by_email, email, limit, offset)

    async def stop(self, run_id: str) -> RunRecord:
        """Stop a function: a queued one ends before its container runs, a running one is
        stopped; stopping a finished run changes nothing."""
        run = await self.get(run_id)
        if run.status.is_final:
            return run
        if run.status in STARTING:
            if await self.finisher.cancel(run):
                return await self.get(run_id)
            run = await self.get(run_id)  # it started (or ended) meanwhile
            if run.status.is_final:
                return run
        await self.finisher.stop_and_finish(run, RunStatus.STOPPED, StopReason.STOPPED)
        return await self.get(run_id)

    async def logs(self, run_id: str) -> str:
        run = await self.get(run_id)
        if run.container_id is not None and not run.status.is_final:
            live = await self.runtime.logs(run.container_id, self.limits.log_tail_bytes)
            if live is not None:
                return live
        return await asyncio.to_thread(self.runs.logs, run_id) or ""
