"""Invoicer: ``stopped`` events on ``faas.deployments`` → invoices → ``faas.invoices``.

Each fetched batch (≤ 500 records) is priced progressively (``analytics.batch_pricing``):
a chunk of runs is stored in ClickHouse, then its ``invoice.created`` events published,
then its records count as done. Offsets are committed as the batch goes (at most every
``commit_every_s``), per partition only up to the first record not done, so a crash
redelivers what was not finished; a redelivered event whose invoice is stored is
published again instead of priced twice (the notifier drops duplicates).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from analytics.batch_pricing import BatchPricer, Done, InvoicerCounters, ignore_done
from analytics.invoice_store import InvoiceStore
from analytics.offsets import OffsetTracker, ProgressiveCommitter
from analytics.settling import RunSamples
from app.events import EventPublisher, Stopped, lifecycle_event
from app.invoices import Invoice, InvoiceEvent
from app.loops import RestartingLoop
from app.settings import KafkaSettings
from app.tariffs.schemas import TariffView

log = logging.getLogger(__name__)
GROUP = "faas-invoicer"


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
        concurrency: int = 4,
        chunk: int = 25,
        commit_every_s: float = 0.5,
    ) -> None:
        super().__init__()
        if None in (kafka, samples, store, tariff_of_run, publisher):
            raise ValueError("kafka, samples, store, tariff_of_run and publisher are required")
        if commit_every_s <= 0:
            raise ValueError("commit_every_s must be > 0")
        self._kafka, self._publisher, self._group_id = kafka, publisher, group_id
        self._commit_every_s = commit_every_s
        self.counters = InvoicerCounters()
        self._pricer = BatchPricer(
            samples, store, tariff_of_run, self._publish, self.counters,
            concurrency=concurrency, chunk=chunk,
        )  # fmt: skip

    async def process(self, stopped_runs: Sequence[Stopped], done: Done = ignore_done) -> None:
        """Invoices a batch; ``done`` hears each run id once its invoice is published."""
        await self._pricer.process(stopped_runs, done)

    async def _publish(self, invoices: list[Invoice]) -> None:
        now = datetime.now(UTC)
        events = [
            InvoiceEvent(type="invoice.created", event_id=f"{i.run_id}:v{i.version}",
                         event_time=now, run_id=i.run_id, tenant=i.tenant, invoice=i)
            for i in invoices
        ]  # fmt: skip
        await self._publisher.publish(
            self._kafka.invoices_topic, [(e.tenant, e.model_dump_json().encode()) for e in events]
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
                if fetched:
                    await self._batch(consumer, fetched)
        finally:
            await consumer.stop()

    async def _batch(
        self,
        consumer: AIOKafkaConsumer,
        fetched: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]],
    ) -> None:
        self.counters.batches += 1
        tracker = OffsetTracker()
        stopped_runs, dead, dead_offsets = [], [], []
        records_of: dict[str, list[tuple[TopicPartition, int]]] = defaultdict(list)
        for tp, records in fetched.items():
            for record in records:
                tracker.add(tp, record.offset)
                try:
                    event = lifecycle_event.validate_json(record.value or b"")
                except ValidationError as exc:
                    log.warning("dead-lettering offset %s: %s", record.offset, exc)
                    dead.append(((record.key or b"").decode(errors="replace"), record.value or b""))
                    dead_offsets.append((tp, record.offset))
                    continue
                if isinstance(event, Stopped) and event.ever_started:
                    stopped_runs.append(event)
                    records_of[event.run_id].append((tp, record.offset))
                else:
                    tracker.done(tp, record.offset)
        if dead:
            await self._publisher.publish(f"{self._kafka.deployments_topic}.dlq", dead)
            self.counters.dead_lettered += len(dead)
            for tp, offset in dead_offsets:
                tracker.done(tp, offset)

        def done(run_ids: list[str]) -> None:
            for run_id in run_ids:
                for tp, offset in records_of.pop(run_id, []):
                    tracker.done(tp, offset)

        async with ProgressiveCommitter(tracker, consumer.commit, every_s=self._commit_every_s):
            await self.process(stopped_runs, done)
