"""The invoicer on the real ClickHouse engine and Kafka: formula, monthly allowance,
and a crash between storing and publishing an invoice."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaConsumer

from analytics.clickhouse import DirectClickHouse
from analytics.invoice_store import InvoiceStore
from analytics.invoicer import Invoicer
from analytics.invoicing import build_invoice
from analytics.samples import samples_table
from analytics.schema import migrate
from analytics.settling import RunSamples
from app.events import Stopped, UsageSample
from app.kafka import KafkaEventPublisher, ensure_topics
from app.schemas import RunStatus, StopReason
from app.settings import KafkaSettings
from app.tariffs.schemas import TariffView

NOW = datetime.now(UTC).replace(microsecond=0)
TARIFF = TariffView(
    id=7, name="metered", currency="USD", price_cpu_second=Decimal("0.01"),
    price_gib_second=Decimal("0.001"), price_execution=Decimal("0.10"), price_second=Decimal("0"),
    free_cpu_seconds=Decimal("3"), free_gib_seconds=Decimal("0"), free_executions=Decimal("2"),
    created_at=NOW, updated_at=NOW,
)  # fmt: skip


def stopped(run_id: str, tenant: str, start: datetime, seconds: int) -> Stopped:
    return Stopped(
        run_id=run_id, tenant=tenant, image_name="localhost/faas-cpu", status=RunStatus.SUCCEEDED,
        reason=StopReason.EXITED, exit_code=0, started_at=start,
        finished_at=start + timedelta(seconds=seconds),
    )  # fmt: skip


def cpu_samples(run: Stopped, cores: Decimal) -> list[UsageSample]:
    """Readings every 250 ms of a run using ``cores`` CPUs and no memory; the last is final."""
    assert run.started_at is not None
    total = int((run.finished_at - run.started_at).total_seconds() * 4)
    return [
        UsageSample(
            event_id=f"{run.run_id}:{i}",
            event_time=run.started_at + timedelta(milliseconds=250 * (i + 1)),
            run_id=run.run_id,
            tenant=run.tenant,
            node="n1",
            seq=i,
            cpu_ns=int(cores * 250_000_000 * (i + 1)),
            memory_bytes=0,
            memory_byte_ms=0,
            final=i == total - 1,
        )
        for i in range(total)
    ]


@pytest.fixture
async def store(clickhouse: DirectClickHouse) -> InvoiceStore:
    await migrate(clickhouse)
    return InvoiceStore(clickhouse)


async def test_monthly_allowance_is_consumed_in_finish_order(
    clickhouse: DirectClickHouse, store: InvoiceStore
) -> None:
    tenant = f"{uuid.uuid4().hex[:6]}@example.com"
    runs = [stopped(f"run-{i}", tenant, NOW - timedelta(minutes=30 - i), 4) for i in range(3)]
    for run in runs:  # each uses 1 core for 4 s = 4 CPU-s
        await clickhouse.insert_arrow("usage_samples", samples_table(cpu_samples(run, Decimal(1))))
    samples = RunSamples(clickhouse, grace_s=0)
    totals = []
    for run in runs:
        invoice = await build_invoice(run, await samples.read(run.run_id), TARIFF, store)
        await store.save([invoice])
        lines = {line.kind: line for line in invoice.lines}
        assert lines["cpu"].quantity == Decimal("4.000000000")
        totals.append(
            (invoice.total, lines["cpu"].billable_quantity, lines["execution"].billable_quantity)
        )
    # Run 0: 3 free CPU-s of 4, execution free. Run 1: no CPU left, execution still free.
    # Run 2: both allowances used up, billed in full.
    assert totals == [
        (Decimal("0.01"), Decimal("1.000000000"), Decimal("0")),
        (Decimal("0.04"), Decimal("4.000000000"), Decimal("0")),
        (Decimal("0.14"), Decimal("4.000000000"), Decimal("1")),
    ]


async def read_invoice_events(bootstrap: str, topic: str) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    events: list[dict[str, object]] = []
    try:
        for _ in range(12):
            for records in (await consumer.getmany(timeout_ms=250)).values():
                events.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return events


async def test_crash_between_store_and_publish_still_publishes_once(
    kafka_bootstrap: str, clickhouse: DirectClickHouse, store: InvoiceStore
) -> None:
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, invoices_topic=f"inv-{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka)
    tenant = f"{uuid.uuid4().hex[:6]}@example.com"
    run = stopped("crashy", tenant, NOW - timedelta(minutes=5), 2)
    await clickhouse.insert_arrow("usage_samples", samples_table(cpu_samples(run, Decimal("0.5"))))
    # The crash: the invoice was stored, the process died before publishing and committing.
    samples = RunSamples(clickhouse, grace_s=0)
    stored = await build_invoice(run, await samples.read(run.run_id), TARIFF, store)
    await store.save([stored])

    publisher = KafkaEventPublisher(kafka)
    invoicer = Invoicer(kafka, samples, store, lambda _: TARIFF, publisher)
    try:
        await invoicer.process([run])  # the redelivered stop event
    finally:
        await publisher.close()
    events = await read_invoice_events(kafka_bootstrap, kafka.invoices_topic)
    assert len(events) == 1
    assert events[0]["event_id"] == "crashy:v1" and events[0]["type"] == "invoice.created"
    assert events[0]["invoice"]["total"] == format(stored.total.normalize(), "f")  # type: ignore[index]
    assert invoicer.counters.republished == 1 and invoicer.counters.invoiced == 0
    current = await store.current("crashy")
    assert current is not None and current.version == 1
    rows = await clickhouse.query_arrow(
        "SELECT count() AS n FROM invoices FINAL WHERE run_id = 'crashy'"
    )
    assert rows.to_pylist()[0]["n"] == 1
