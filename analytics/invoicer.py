"""Invoicer: ``stopped`` events on ``faas.deployments`` → invoices → ``faas.invoices``.

Per batch: the stopped runs are invoiced (tenants in parallel, each tenant's runs in
finish order so the monthly allowance is consumed in order), stored in ClickHouse, the
``invoice.created`` events published, and only then the offsets committed. A redelivered
event finds its stored invoice and publishes it again instead of pricing it twice, so a
crash between store and publish loses no publish (the notifier drops duplicates).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from analytics.invoice_store import InvoiceStore
from analytics.invoicing import RunSamples, build_invoice
from app.events import EventPublisher, Stopped, lifecycle_event
from app.invoices import Invoice, InvoiceEvent
from app.loops import RestartingLoop
from app.settings import KafkaSettings
from app.tariffs.schemas import TariffView

log = logging.getLogger(__name__)
GROUP = "faas-invoicer"


@dataclass
class InvoicerCounters:
    invoiced: int = 0
    republished: int = 0
    dead_lettered: int = 0


class Invoicer(RestartingLoop):
    name = "invoicer"

    def __init__(
        self,
        kafka: KafkaSettings,
        samples: RunSamples,
        store: InvoiceStore,
        tariff_of_run: Callable[[str], TariffView],
        publisher: EventPublisher,
        *,
        group_id: str = GROUP,
    ) -> None:
        super().__init__()
        if None in (kafka, samples, store, tariff_of_run, publisher):
            raise ValueError("kafka, samples, store, tariff_of_run and publisher are required")
        self._kafka = kafka
        self._samples = samples
        self._store = store
        self._tariff_of_run = tariff_of_run
        self._publisher = publisher
        self._group_id = group_id
        self.counters = InvoicerCounters()

    async def invoice(self, stopped: Stopped) -> tuple[Invoice, bool]:
        """The run's invoice, and whether it was created now (False: it already existed)."""
        existing = await self._store.current(stopped.run_id)
        if existing is not None:
            return existing, False
        tariff = await asyncio.to_thread(self._tariff_of_run, stopped.run_id)
        samples = await self._samples.settled(stopped.run_id, stopped.finished_at)
        invoice = await build_invoice(stopped, samples, tariff, self._store)
        await self._store.save([invoice])
        return invoice, True

    async def _tenant(self, runs: list[Stopped]) -> list[Invoice]:
        invoices = []
        for stopped in sorted(runs, key=lambda s: s.finished_at):
            invoice, created = await self.invoice(stopped)
            if created:
                self.counters.invoiced += 1
            else:
                self.counters.republished += 1
            invoices.append(invoice)
        return invoices

    async def process(self, stopped_runs: list[Stopped]) -> None:
        by_tenant: dict[str, list[Stopped]] = defaultdict(list)
        for stopped in stopped_runs:
            by_tenant[stopped.tenant].append(stopped)
        results = await asyncio.gather(*(self._tenant(runs) for runs in by_tenant.values()))
        events = [
            InvoiceEvent(
                type="invoice.created",
                event_id=f"{i.run_id}:v{i.version}",
                event_time=datetime.now(UTC),
                run_id=i.run_id,
                tenant=i.tenant,
                invoice=i,
            )
            for invoices in results
            for i in invoices
        ]
        if events:
            await self._publisher.publish(
                self._kafka.invoices_topic,
                [(e.tenant, e.model_dump_json().encode()) for e in events],
            )

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self._kafka.deployments_topic,
            bootstrap_servers=self._kafka.bootstrap,
            group_id=self._group_id,
            client_id=f"{self._kafka.client_id}-invoicer",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            while not self._stopping.is_set():
                fetched = await consumer.getmany(timeout_ms=500, max_records=500)
                if not fetched:
                    continue
                stopped_runs, dead = [], []
                for records in fetched.values():
                    for record in records:
                        try:
                            event = lifecycle_event.validate_json(record.value or b"")
                        except ValidationError as exc:
                            log.warning("dead-lettering offset %s: %s", record.offset, exc)
                            dead.append(
                                ((record.key or b"").decode(errors="replace"), record.value or b"")
                            )
                            continue
                        if isinstance(event, Stopped) and event.ever_started:
                            stopped_runs.append(event)
                await self.process(stopped_runs)
                if dead:
                    await self._publisher.publish(f"{self._kafka.deployments_topic}.dlq", dead)
                    self.counters.dead_lettered += len(dead)
                await consumer.commit()
        finally:
            await consumer.stop()
