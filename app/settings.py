"""One settings object for the whole platform (env prefix ``FAAS_``).

Nested per subsystem; a subsystem's variables are ``FAAS_<SUBSYSTEM>_<FIELD>``
(e.g. ``FAAS_KAFKA_BOOTSTRAP``, ``FAAS_SMTP_HOST``). ``FAAS_RUNTIME=podman|kubernetes``
is accepted as a shorthand for ``FAAS_RUNTIME_KIND``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER = "changethis"


class KafkaSettings(BaseModel):
    bootstrap: str = "127.0.0.1:9092"
    deployments_topic: str = "faas.deployments"
    metrics_topic: str = "faas.metrics"
    invoices_topic: str = "faas.invoices"
    node_events_topic: str = "faas.node-events"
    partitions: int = Field(default=3, ge=1)
    client_id: str = "faas"

    @field_validator("bootstrap")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port…], got {value!r}")
        return value


class ClickHouseSettings(BaseModel):
    url: str | None = None  # chdb:///abs/path (embedded) or http(s)://host:8123
    database: str = Field(default="faas", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    flush_count: int = Field(default=10_000, ge=1)  # ingestor: insert after this many samples…
    flush_ms: int = Field(default=500, ge=1)  # …or this long, whichever first

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("chdb://", "http://", "https://")):
            raise ValueError("must start with chdb://, http:// or https://")
        return value


class SmtpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    sender: str = "billing@faas.local"
    mail_dir: Path | None = None  # where the local sink writes .eml files
    # Attempts per email before it is dead-lettered. Backoff doubles from 0.5 s up to 30 s,
    # so 12 attempts ride out a relay outage of ~3 minutes (5 gave up after ~7 s).
    max_attempts: int = Field(default=12, ge=1)


class RuntimeSettings(BaseModel):
    kind: Literal["podman", "kubernetes"] = "podman"
    docker_url: str | None = None  # unix:// socket of `podman system service`
    namespace: str = "faas-functions"
    # Kubernetes runtime: a kubeconfig path, or None for the in-cluster service account.
    kubeconfig: str | None = None
    kube_env_inline_bytes: int = Field(default=1024, ge=0)  # larger env values: in a Secret
    kube_ttl_after_finished_s: int = Field(default=300, ge=0)  # finished Jobs are collected
    owner: str | None = None  # label on every container; defaults to the home directory
    default_cpu: float = Field(default=1.0, gt=0)
    max_cpu: float = Field(default=2.0, gt=0)
    default_memory_mb: int = Field(default=256, ge=6)
    max_memory_mb: int = Field(default=4096, ge=6)
    default_timeout_s: int = Field(default=300, ge=1)
    max_timeout_s: int = Field(default=3600, ge=1)
    max_env_bytes: int = Field(default=32 * 1024, ge=0)
    stop_grace_s: int = Field(default=2, ge=0)
    reconcile_interval_s: float = Field(default=0.5, gt=0)
    # Accepted runs whose containers are being created and started at once. podman spends
    # ~0.2 s of CPU per start: more than a few in parallel on 2 cores only queue in podman.
    start_concurrency: int = Field(default=4, ge=1)
    close_concurrency: int = Field(default=4, ge=1)  # ended runs the reconciler closes at once
    lost_after_s: float = Field(default=30.0, gt=0)  # runtime unreachable this long: runs failed
    log_tail_bytes: int = Field(default=256 * 1024, ge=1024)
    # Isolation of every function container (docs/SECURITY.md).
    run_as_user: str = "65534:65534"  # when the image names no non-root user; "" = image's
    read_only_root: bool = True
    tmpfs_mb: int = Field(default=64, ge=1)  # the writable /tmp on a read-only root
    pids_limit: int = Field(default=256, ge=16)

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> RuntimeSettings:
        if self.default_cpu > self.max_cpu:
            raise ValueError("default_cpu exceeds max_cpu")
        if self.default_memory_mb > self.max_memory_mb:
            raise ValueError("default_memory_mb exceeds max_memory_mb")
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s exceeds max_timeout_s")
        return self


class MeterSettings(BaseModel):
    host: str = "127.0.0.1"  # where the meter server listens (UDP) and agents send
    port: int = Field(default=9999, ge=1, le=65535)
    secret: SecretStr = SecretStr(PLACEHOLDER)
    interval_ms: int = Field(default=250, ge=10)  # agent sampling interval
    node: str | None = None  # agent's node name; defaults to the host name
    metrics_port: int = Field(default=9464, ge=1, le=65535)  # server counters (HTTP)
    cgroup_root: str = "/sys/fs/cgroup"
    # Agent: where it finds containers. docker: the Docker Engine API (podman; make run).
    # kubernetes: the API server's pods of FAAS_METER_NODE (required then: the DaemonSet sets
    # it from spec.nodeName), read from the kubelet's pod cgroups under cgroup_root.
    discovery: Literal["docker", "kubernetes"] = "docker"
    namespace: str | None = None  # kubernetes: the functions' one; None: FAAS_RUNTIME_NAMESPACE
    kubeconfig: str | None = None  # kubernetes: None: FAAS_RUNTIME_KUBECONFIG, else in-cluster
    flush_count: int = Field(default=500, ge=1)  # server: produce after this many…
    flush_ms: int = Field(default=100, ge=1)  # …or this long, whichever first
    # Server: Kafka record batch size per partition. One batch is one message to the broker:
    # keep it under the topic's max.message.bytes (1,048,588 by default, Strimzi's too).
    # 256 KiB batches made produce the bottleneck (~7 µs a sample of waiting on round trips).
    produce_batch_bytes: int = Field(default=1_000_000, ge=16 * 1024)


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # larger bodies get 413


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FAAS_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
    )

    mode: Literal["local", "production"] = "local"
    home: Path = Path(".faas")
    database_url: str | None = None
    admin_token: SecretStr = SecretStr(PLACEHOLDER)
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    smtp: SmtpSettings = SmtpSettings()
    runtime: Annotated[RuntimeSettings, NoDecode] = RuntimeSettings()
    meter: MeterSettings = MeterSettings()
    http: HttpSettings = HttpSettings()

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime_shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _embedded_defaults(self) -> Settings:
        """Fill in the embedded (``make run``) defaults, all under ``home``."""
        self.home = self.home.expanduser().resolve()
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.home / 'faas.db'}"
        if self.clickhouse.url is None:
            self.clickhouse.url = f"chdb://{self.home / 'clickhouse'}"
        if self.runtime.docker_url is None:
            self.runtime.docker_url = f"unix://{self.home / 'podman.sock'}"
        if self.runtime.owner is None:
            self.runtime.owner = str(self.home)
        if self.smtp.mail_dir is None:
            self.smtp.mail_dir = self.home / "mail"
        return self

    @model_validator(mode="after")
    def _local_mode_only_on_loopback(self) -> Settings:
        # Local mode trusts callers without credentials: only the machine itself may call.
        if self.mode == "local" and self.http.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(
                f"FAAS_HTTP_HOST={self.http.host}: local mode trusts anonymous callers and "
                "must listen on loopback only; use FAAS_MODE=production to serve a network"
            )
        return self

    @model_validator(mode="after")
    def _no_placeholder_secrets_outside_local(self) -> Settings:
        if self.mode == "local":
            return self
        secrets = {"FAAS_ADMIN_TOKEN": self.admin_token, "FAAS_METER_SECRET": self.meter.secret}
        for name, secret in secrets.items():
            if secret.get_secret_value() in ("", PLACEHOLDER):
                raise ValueError(f"{name} still holds a placeholder; set it in {self.mode} mode")
        return self

    @property
    def sql_url(self) -> str:
        assert self.database_url is not None  # filled by _embedded_defaults
        return self.database_url


def with_local_admin_token(settings: Settings) -> tuple[Settings, Path | None]:
    """In local mode with no token configured, use ``<home>/admin_token`` (created 0600 on
    first use). Returns the settings to use and the token file, if one is in play."""
    if settings.mode != "local" or settings.admin_token.get_secret_value() != PLACEHOLDER:
        return settings, None
    token_file = settings.home / "admin_token"
    if not token_file.exists():
        token_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    token = token_file.read_text().strip()
    return settings.model_copy(update={"admin_token": SecretStr(token)}), token_file
