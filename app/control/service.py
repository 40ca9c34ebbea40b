"""Accepting, inspecting and stopping runs."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from app.control.errors import FieldError, RunConflict, RunNotFound
from app.control.finisher import Finisher
from app.events import Deployed, Started
from app.runtime import ContainerSpec, Runtime
from app.schemas import RunRequest, RunStatus, StopReason
from app.settings import RuntimeSettings
from app.store.models import RunRow
from app.store.runs import OutgoingEvent, RunRecord, RunRepository
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
        self._on_commit = on_commit

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
        """Create and start the container. On any runtime failure nothing is left behind."""
        cpu, memory_mb, timeout_s = self._checked(request)
        try:
            tariff = await asyncio.to_thread(self.tariffs.resolve, request.tariff)
        except LookupError as exc:
            raise FieldError("tariff", str(exc)) from exc
        run_id = str(uuid.uuid4())
        row = RunRow(
            id=run_id,
            email=str(request.email),
            image_name=request.image_name,
            command=request.command,
            cpu=cpu,
            memory_mb=memory_mb,
            timeout_s=timeout_s,
            tariff=tariff.name,
            tariff_id=tariff.id,
            status=RunStatus.PENDING.value,
            created_at=utcnow(),
        )
        await asyncio.to_thread(self.runs.add_pending, row)
        spec = ContainerSpec(
            run_id=run_id,
            tenant=row.email,
            image=request.image_name,
            cpu=cpu,
            memory_mb=memory_mb,
            env=request.env,
            command=request.command,
            owner=self.limits.owner or "",
            timeout_s=timeout_s,
        )
        container_id: str | None = None
        try:
            container_id = await self.runtime.create(spec)
            deployed_at = utcnow()
            state = await self.runtime.start(container_id)
        except BaseException:
            await self._undo(run_id, container_id)
            raise
        started_at = state.started_at or utcnow()
        common = {"run_id": run_id, "tenant": row.email, "image_name": row.image_name}
        deployed = Deployed(
            **common, event_time=deployed_at, cpu=cpu, memory_mb=memory_mb, timeout_s=timeout_s,
            tariff=tariff.name, tariff_id=tariff.id,
        )  # fmt: skip
        started = Started(**common, event_time=started_at, started_at=started_at)
        events = [
            OutgoingEvent(self.topic, run_id, e.model_dump_json()) for e in (deployed, started)
        ]
        deadline = started_at + timedelta(seconds=timeout_s)
        await asyncio.to_thread(
            self.runs.mark_running, run_id, container_id, started_at, deadline, events
        )
        self._on_commit()
        return await self.get(run_id)

    async def _undo(self, run_id: str, container_id: str | None) -> None:
        if container_id is not None:
            # If this fails too, the reconciler removes the container later; the caller
            # still gets the original error.
            with contextlib.suppress(Exception):
                await self.runtime.remove(container_id)
        await asyncio.to_thread(self.runs.discard, run_id)

    async def get(self, run_id: str) -> RunRecord:
        run = await asyncio.to_thread(self.runs.get, run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def list(self, email: str, limit: int = 100, offset: int = 0) -> list[RunRecord]:
        return await asyncio.to_thread(self.runs.by_email, email, limit, offset)

    async def stop(self, run_id: str) -> RunRecord:
        """Stop a running function; stopping a finished run changes nothing."""
        run = await self.get(run_id)
        if run.status.is_final:
            return run
        if run.container_id is None:
            raise RunConflict(f"run {run_id} is still being deployed; retry shortly")
        await self.finisher.stop_and_finish(run, RunStatus.STOPPED, StopReason.STOPPED)
        return await self.get(run_id)

    async def logs(self, run_id: str) -> str:
        run = await self.get(run_id)
        if run.container_id is not None and not run.status.is_final:
            live = await self.runtime.logs(run.container_id, self.limits.log_tail_bytes)
            if live is not None:
                return live
        return await asyncio.to_thread(self.runs.logs, run_id) or ""
