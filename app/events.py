"""Lifecycle events on ``faas.deployments`` (JSON, key = run id)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, Field, TypeAdapter

from app.schemas import RunStatus, StopReason

EVENT_VERSION = 1


def _new_event_id() -> str:
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    version: int = EVENT_VERSION
    event_id: str = Field(default_factory=_new_event_id)
    event_time: datetime = Field(default_factory=_now)
    run_id: str
    tenant: str
    image_name: str


class Deployed(_Event):
    type: Literal["deployed"] = "deployed"
    cpu: float
    memory_mb: int
    timeout_s: int
    tariff: str | None = None
    tariff_id: int | None = None


class Started(_Event):
    type: Literal["started"] = "started"
    started_at: datetime


class Stopped(_Event):
    type: Literal["stopped"] = "stopped"
    status: RunStatus
    reason: StopReason
    exit_code: int | None
    started_at: datetime | None
    finished_at: datetime
    message: str | None = None

    @property
    def ever_started(self) -> bool:
        """False for a run that ended before its container started (stopped while queued,
        refused by the runtime): it used nothing and is not billed."""
        return self.started_at is not None


LifecycleEvent = Annotated[Deployed | Started | Stopped, Field(discriminator="type")]
lifecycle_event = TypeAdapter[Deployed | Started | Stopped](LifecycleEvent)


class EventPublisher(Protocol):
    """Sends already-serialised events; returns once the broker has them durably."""

    async def publish(self, topic: str, messages: list[tuple[str, bytes]]) -> None: ...

    async def close(self) -> None: ...


class UsageSample(BaseModel):
    """One meter reading on ``faas.metrics``: one JSON line of a record that packs the
    samples of the runs of its partition (docs/METER_PROTOCOL.md). Counters are cumulative
    since the container started (the agent carries its first reading back to the runtime's
    start time), so the latest sample alone carries all usage up to its time."""

    type: Literal["usage.sample"] = "usage.sample"
    version: int = EVENT_VERSION
    event_id: str  # "<run_id>:<seq>": the same reading always has the same id
    event_time: datetime  # when the agent took the reading
    run_id: str
    tenant: str
    node: str
    seq: int = Field(ge=0)
    cpu_ns: int = Field(ge=0)  # CPU time used by the container so far
    memory_bytes: int = Field(ge=0)  # memory in use at event_time
    memory_byte_ms: int = Field(ge=0)  # ∫ memory dt since the start (trapezoid), byte·ms
    final: bool = False  # the container exited: no reading will follow


class NodeEvent(BaseModel):
    """What a meter agent saw happen to a container, on ``faas.node-events`` (key = run id)."""

    type: Literal["container.started", "container.exited"]
    version: int = EVENT_VERSION
    event_id: str
    event_time: datetime
    run_id: str
    tenant: str
    node: str
    exit_code: int | None = None
