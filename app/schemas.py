"""HTTP-facing models of a function run."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator

# Docker/OCI reference: [registry[:port]/]path[:tag][@digest], lower-case path components.
_IMAGE_REFERENCE = re.compile(
    # registry (optional): a host with a dot or a port, or localhost, as Docker tells them apart
    r"^(?:(?:(?:[a-zA-Z0-9-]+\.)+[a-zA-Z0-9-]+(?::[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+|localhost)/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # first path component
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # more path components
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(?:@sha256:[a-f0-9]{64})?$"  # digest
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class RunStatus(StrEnum):
    PENDING = "pending"
    DEPLOYED = "deployed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.STOPPED}


class StopReason(StrEnum):
    EXITED = "exited"
    STOPPED = "stopped"
    TIMEOUT = "timeout"
    FAILED = "failed"


class RunRequest(BaseModel):
    """Body of ``POST /v1/functions/run``. Limits against maxima are checked by the service."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"image_name": "localhost/faas-echo:latest", "email": "a@b.c"},
                {
                    "image_name": "localhost/faas-mem",
                    "email": "a@b.c",
                    "env": {"MEM_MB": "64", "DURATION_S": "5"},
                    "cpu": 0.5,
                    "memory_mb": 128,
                    "timeout_s": 60,
                },
            ]
        },
    )

    image_name: str = Field(min_length=1, max_length=255, description="OCI image reference")
    email: EmailStr = Field(description="Tenant: the invoice goes to this address")
    env: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = Field(default=None, max_length=256)
    cpu: float | None = Field(default=None, gt=0, description="CPU cores (limit)")
    memory_mb: int | None = Field(default=None, ge=6, description="memory limit in MiB")
    timeout_s: int | None = Field(default=None, ge=1, description="wall-clock limit")
    tariff: str | None = Field(default=None, max_length=128, description="tariff name or id")

    @field_validator("image_name")
    @classmethod
    def _image_reference(cls, value: str) -> str:
        if not _IMAGE_REFERENCE.match(value):
            raise ValueError("not a valid image reference (e.g. localhost/faas-echo:latest)")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"invalid variable name {name!r}")
        return value


class RunView(BaseModel):
    """A run as the API returns it."""

    id: str
    status: RunStatus
    image_name: str
    email: str
    cpu: float
    memory_mb: int
    timeout_s: int
    command: list[str] | None
    tariff: str | None
    tariff_id: int | None
    exit_code: int | None
    reason: StopReason | None
    message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunAccepted(BaseModel):
    id: str
    status: RunStatus
