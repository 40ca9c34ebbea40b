"""Composition root of the control plane: builds it from settings and runs its loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.control.outbox import OutboxRelay
from app.control.reconciler import Reconciler
from app.control.service import ControlPlane
from app.events import EventPublisher
from app.kafka import KafkaEventPublisher, ensure_topics
from app.runtime import Runtime
from app.runtime.isolation import Isolation
from app.runtime.podman import DockerApiRuntime
from app.settings import RuntimeSettings, Settings
from app.store.db import make_engine, migrate
from app.store.runs import RunRepository
from app.tariffs.repository import TariffRepository

log = logging.getLogger(__name__)


def make_runtime(settings: RuntimeSettings) -> Runtime:
    if settings.kind == "podman":
        assert settings.docker_url is not None  # filled by Settings
        return DockerApiRuntime(
            settings.docker_url,
            isolation=Isolation.from_settings(settings),
            # The starts, the reconciler's closes, its listing, the API's stops and logs.
            workers=settings.start_concurrency + settings.close_concurrency + 2,
            owner=settings.owner,
        )
    from app.runtime.kubernetes import KubernetesRuntime  # only when chosen: its client is heavy

    return KubernetesRuntime.from_settings(settings)


class ControlPlaneApp:
    """Owns the control plane's resources; ``start``/``close`` bracket its background loops."""

    def __init__(self, settings: Settings, runtime: Runtime, publisher: EventPublisher) -> None:
        if settings is None or runtime is None or publisher is None:
            raise ValueError("settings, runtime and publisher are required")
        self.settings = settings
        self.engine = make_engine(settings.sql_url)
        self.runs = RunRepository(self.engine)
        self.publisher = publisher
        self.relay = OutboxRelay(self.runs, publisher)
        self.control = ControlPlane(
            self.runs,
            runtime,
            TariffRepository(self.engine),
            settings.runtime,
            settings.kafka.deployments_topic,
            on_commit=self.relay.wake,
        )
        self.reconciler = Reconciler(self.control)
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, settings: Settings) -> ControlPlaneApp:
        return cls(settings, make_runtime(settings.runtime), KafkaEventPublisher(settings.kafka))

    async def start(self) -> None:
        await asyncio.to_thread(migrate, self.engine)
        self._tasks = [
            asyncio.create_task(self._ensure_topics()),
            asyncio.create_task(self.relay.run_forever()),
            asyncio.create_task(
                self.reconciler.run_forever(self.settings.runtime.reconcile_interval_s)
            ),
            # Runs accepted before a restart are still queued in the store: started now.
            asyncio.create_task(self.control.starter.run_forever()),
        ]

    async def _ensure_topics(self) -> None:
        # Best effort: the relay keeps events until Kafka is reachable anyway.
        with contextlib.suppress(Exception):
            await ensure_topics(self.settings.kafka)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.control.starter.close()
        with contextlib.suppress(Exception):
            await self.relay.publish_pending()
        await self.publisher.close()
        await self.control.runtime.close()
        self.engine.dispose()
