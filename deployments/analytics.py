"""The analytics application: billing API (ingress, ``/billing``), ingestor, invoicer,
notifier, and in embedded mode the ClickHouse owner they all share (bound handles)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from analytics.ingestion import IngestionProgress
from analytics.ingestor import Ingestor
from analytics.invoice_store import InvoiceStore
from analytics.invoicer import Invoicer
from analytics.settling import RunSamples
from app.api.auth import authenticator_for
from app.api.billing import InvoicesUnavailable, create_billing_api
from app.kafka import KafkaEventPublisher, ensure_topics
from app.mail.ledger import MailLedger
from app.mail.notifier import Notifier, SmtpMailer
from app.settings import Settings
from app.store.api_keys import ApiKeyRepository
from app.store.db import make_engine, migrate
from app.store.runs import RunRepository
from app.tariffs.repository import TariffRepository
from app.tariffs.schemas import TariffView
from deployments.clickhouse import ClickHouseOwner, connect, is_embedded

_WORKER = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}


class _Worker:
    """Runs one long-lived loop; Serve's health check restarts the replica if it dies."""

    _task: asyncio.Task[None]

    def _start(self, setup: Callable[[], Awaitable[Any]]) -> None:
        async def main() -> None:
            loop = await setup()
            await loop.run_forever()

        self._task = asyncio.get_running_loop().create_task(main())

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"worker loop ended: {self._task.exception()!r}")


@serve.deployment(name="Ingestor", **_WORKER)
class IngestorDeployment(_Worker):
    def __init__(self, settings: Settings, owner: DeploymentHandle | None) -> None:
        async def setup() -> Ingestor:
            clickhouse = await connect(settings, owner)
            await ensure_topics(settings.kafka, f"{settings.kafka.metrics_topic}.dlq")
            self.ingestor = Ingestor(
                settings.kafka, clickhouse, KafkaEventPublisher(settings.kafka), settings.clickhouse
            )
            return self.ingestor

        self._start(setup)

    async def counters(self) -> dict[str, int]:
        return dataclasses.asdict(self.ingestor.counters)


@serve.deployment(name="Invoicer", **_WORKER)
class InvoicerDeployment(_Worker):
    def __init__(self, settings: Settings, owner: DeploymentHandle | None) -> None:
        engine = make_engine(settings.sql_url)
        runs, tariffs = RunRepository(engine), TariffRepository(engine)

        def tariff_of_run(run_id: str) -> TariffView:
            run = runs.get(run_id)
            return (
                tariffs.resolve(None)
                if run is None or run.tariff_id is None
                else tariffs.get(str(run.tariff_id))
            )

        async def setup() -> Invoicer:
            await asyncio.to_thread(migrate, engine)
            clickhouse = await connect(settings, owner)
            await ensure_topics(settings.kafka, f"{settings.kafka.deployments_topic}.dlq")
            self.invoicer = Invoicer(
                settings.kafka, RunSamples(clickhouse, progress=IngestionProgress(settings.kafka)),
                InvoiceStore(clickhouse), tariff_of_run,
                KafkaEventPublisher(settings.kafka),
            )  # fmt: skip
            return self.invoicer

        self._start(setup)

    async def counters(self) -> dict[str, int]:
        return dataclasses.asdict(self.invoicer.counters)


@serve.deployment(name="Notifier", **_WORKER)
class NotifierDeployment(_Worker):
    def __init__(self, settings: Settings) -> None:
        engine = make_engine(settings.sql_url)

        async def setup() -> Notifier:
            await asyncio.to_thread(migrate, engine)
            await ensure_topics(settings.kafka, f"{settings.kafka.invoices_topic}.dlq")
            self.notifier = Notifier(
                settings.kafka, settings.smtp, MailLedger(engine), SmtpMailer(settings.smtp),
                KafkaEventPublisher(settings.kafka), max_attempts=settings.smtp.max_attempts,
            )  # fmt: skip
            return self.notifier

        self._start(setup)

    async def counters(self) -> dict[str, int]:
        return dataclasses.asdict(self.notifier.counters)


@serve.deployment(name="Billing", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class BillingDeployment:
    def __init__(
        self, settings: Settings, owner: DeploymentHandle | None, workers: list[DeploymentHandle]
    ) -> None:
        # The workers are bound here so they belong to this application; billing never calls them.
        self._workers = workers
        self._engine = make_engine(settings.sql_url)
        self._auth = authenticator_for(settings, ApiKeyRepository(self._engine))
        self._max_body_bytes = settings.http.max_body_bytes

        async def store() -> InvoiceStore:
            await asyncio.to_thread(migrate, self._engine)  # the API keys the auth looks up
            return InvoiceStore(await connect(settings, owner))

        self._store = asyncio.get_running_loop().create_task(store())

    def __serve_build_asgi_app__(self) -> Any:
        return create_billing_api(
            _WhenReady(self._store),
            self._auth,
            max_body_bytes=self._max_body_bytes,
            ready=self._store,
        )


class _WhenReady:
    """The billing API's ``InvoiceReader``: the store, once its connection is ready."""

    def __init__(self, store: asyncio.Task[InvoiceStore]) -> None:
        self._store = store

    async def for_tenant(self, tenant: str, **kwargs: Any) -> Any:
        try:
            return await (await self._store).for_tenant(tenant, **kwargs)
        except Exception as exc:  # ClickHouse (or its owner replica) away: 503, not 500
            raise InvoicesUnavailable(_short(exc)) from exc

    async def current(self, run_id: str) -> Any:
        try:
            return await (await self._store).current(run_id)
        except Exception as exc:
            raise InvoicesUnavailable(_short(exc)) from exc


def _short(exc: Exception) -> str:
    """The error's last line: a Ray error carries the whole remote traceback before it."""
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[-1][:300]}"


def build(settings: Settings) -> Application:
    owner = ClickHouseOwner.bind(settings) if is_embedded(settings) else None
    workers = [
        IngestorDeployment.bind(settings, owner),
        InvoicerDeployment.bind(settings, owner),
        NotifierDeployment.bind(settings),
    ]
    return BillingDeployment.bind(settings, owner, workers)
