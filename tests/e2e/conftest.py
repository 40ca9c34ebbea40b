"""The control plane deployed on Ray Serve, once per SQL backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from app.mail.sink import start_sink
from app.settings import Settings
from infra import devstack

ADMIN_TOKEN = "e2e-admin-token"


class SmtpSink:
    """The platform's SMTP server (aiosmtpd); the fault tests stop and start it again."""

    def __init__(self, port: int, mail_dir: Path) -> None:
        self.port, self.mail_dir = port, mail_dir
        self._controller: Controller | None = None
        self.start()

    def start(self) -> None:
        if self._controller is None:
            self._controller = start_sink("127.0.0.1", self.port, self.mail_dir)

    def stop(self) -> None:
        if self._controller is not None:
            controller, self._controller = self._controller, None
            controller.stop()


@dataclass(frozen=True)
class Platform:
    http: httpx.Client
    kafka_bootstrap: str
    deployments_topic: str
    database: str
    mail_dir: Path
    settings: Settings
    smtp: SmtpSink
    meter_env: dict[str, str]  # how the meter server and agent were started (restartable)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def runtime_overrides() -> dict[str, Any]:
    """Runtime settings a module changes for its platform (the fault tests shorten waits)."""
    return {}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def platform(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    serve_port: int,
    kafka_bootstrap: str,
    podman_url: str,
    postgres_cluster: str,
    runtime_overrides: dict[str, Any],
) -> Iterator[Platform]:
    from ray import serve

    from deployments.apps import platform_apps

    home: Path = tmp_path_factory.mktemp(f"home-{request.param}")
    # "sqlite-production" (indirect parametrization): the same platform in production mode.
    backend, _, mode = request.param.partition("-")
    database_url = devstack.create_database(postgres_cluster) if backend == "postgresql" else None
    # A topic per deployment keeps the event assertions of the two backends apart.
    topic = f"faas.deployments.{request.param}"
    kafka = {
        "bootstrap": kafka_bootstrap,
        "deployments_topic": topic,
        "metrics_topic": f"faas.metrics.{request.param}",
        "invoices_topic": f"faas.invoices.{request.param}",
        "node_events_topic": f"faas.node-events.{request.param}",
    }
    meter_port, meter_metrics_port = devstack.free_port(), devstack.free_port()
    smtp_port, mail_dir = devstack.free_port(), home / "mail"
    sink = SmtpSink(smtp_port, mail_dir)  # a real SMTP server (aiosmtpd)
    settings = Settings(
        mode=mode or "local",
        home=home,
        admin_token=ADMIN_TOKEN,
        database_url=database_url,
        kafka=kafka,
        meter={"port": meter_port, "metrics_port": meter_metrics_port, "secret": "e2e-meter"},
        smtp={"port": smtp_port, "mail_dir": mail_dir},
        runtime={"docker_url": podman_url, "stop_grace_s": 1, "reconcile_interval_s": 0.3}
        | runtime_overrides,
    )
    # The meter server and agent run as in `make run`: separate processes, same settings.
    meter_env = {
        "FAAS_HOME": str(home),
        **{f"FAAS_KAFKA_{k.upper()}": v for k, v in kafka.items()},
        "FAAS_RUNTIME_DOCKER_URL": podman_url,
        "FAAS_METER_PORT": str(meter_port),
        "FAAS_METER_METRICS_PORT": str(meter_metrics_port),
        "FAAS_METER_SECRET": "e2e-meter",
        "FAAS_METER_NODE": f"e2e-{request.param}",
    }
    for role in ("server", "agent"):
        devstack.start_meter(role, home / "meter", meter_env)
    apps = platform_apps(settings)
    for app in apps:
        serve.run(app.app, name=app.name, route_prefix=app.route_prefix)
    client = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30)
    try:
        yield Platform(
            client, kafka_bootstrap, topic, request.param, mail_dir, settings, sink, meter_env
        )
    finally:
        client.close()
        for app in apps:
            serve.delete(app.name)
        for role in ("agent", "server"):
            devstack.stop(f"meter-{role}", home / "meter")
        sink.stop()
