"""The control plane deployed on Ray Serve, once per SQL backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infra import devstack

ADMIN_TOKEN = "e2e-admin-token"


@dataclass(frozen=True)
class Platform:
    http: httpx.Client
    kafka_bootstrap: str
    deployments_topic: str
    database: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def platform(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    serve_port: int,
    kafka_bootstrap: str,
    podman_url: str,
    postgres_cluster: str,
) -> Iterator[Platform]:
    from ray import serve

    from app.settings import Settings
    from deployments.apps import platform_apps

    home: Path = tmp_path_factory.mktemp(f"home-{request.param}")
    database_url = (
        devstack.create_database(postgres_cluster) if request.param == "postgresql" else None
    )
    # A topic per deployment keeps the event assertions of the two backends apart.
    topic = f"faas.deployments.{request.param}"
    settings = Settings(
        home=home,
        admin_token=ADMIN_TOKEN,
        database_url=database_url,
        kafka={"bootstrap": kafka_bootstrap, "deployments_topic": topic},
        runtime={"docker_url": podman_url, "stop_grace_s": 1, "reconcile_interval_s": 0.3},
    )
    apps = platform_apps(settings)
    for app in apps:
        serve.run(app.app, name=app.name, route_prefix=app.route_prefix)
    client = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=30)
    try:
        yield Platform(client, kafka_bootstrap, topic, request.param)
    finally:
        client.close()
        for app in apps:
            serve.delete(app.name)
