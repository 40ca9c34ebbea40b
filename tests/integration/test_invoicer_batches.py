"""The invoicer on a batch of many stopped runs, on real Kafka and the real ClickHouse
engine: invoices are published and offsets committed while the batch is still being
priced (one run waits for a lagging ingestor), and after a crash mid-batch and a restart
every run has exactly one invoice, recomputable from its stored samples."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from analytics.clickhouse import DirectClickHouse
from analytics.ingestion import IngestionProgress
from analytics.ingestor import Ingestor
from analytics.invoice_store import InvoiceStore
from analytics.invoicer import Invoicer
from analytics.rebill import RebillScope, rebill_tenant
from analytics.samples import samples_table
from analytics.schema import migrate
from analytics.settling import RunSamples
from app.kafka import KafkaEventPublisher, ensure_topics
from app.settings import ClickHouseSettings, KafkaSettings
from tests.integration.test_ingestor import produce
from tests.integration.test_invoicer import NOW, TARIFF, cpu_samples, stopped

pytestmark = pytest.mark.integration


async def collect(bootstrap: str, topic: str, into: list[dict[str, Any]]) -> None:
    """Appends every event of ``topic`` to ``into`` until cancelled."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                into.extend(json.loads(r.value) for r in records if r.value)
    finally:
        await consumer.stop()


async def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        await asyncio.sleep(0.1)


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return offsets[tp].offset if tp in offsets else -1


@contextlib.asynccontextmanager
async def running(loop: Invoicer | Ingestor) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(loop.run_forever())
    try:
        yield task
    finally:
        loop.stop()
        if not task.done():
            await asyncio.wait_for(task, 60)


async def test_a_batch_is_published_as_it_is_priced_and_survives_a_crash_mid_batch(
    kafka_bootstrap: str, clickhouse: DirectClickHouse
) -> None:
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap, partitions=1, deployments_topic=f"dep-{suffix}",
        metrics_topic=f"met-{suffix}", invoices_topic=f"inv-{suffix}",
    )  # fmt: skip
    await ensure_topics(kafka, f"{kafka.metrics_topic}.dlq", f"{kafka.deployments_topic}.dlq")
    await migrate(clickhouse)
    store = InvoiceStore(clickhouse)
    fast, slow = f"fast-{suffix}@example.com", f"slow-{suffix}@example.com"
    start = NOW - timedelta(minutes=20)
    # 30 runs of one tenant with their final samples stored; a second tenant whose first
    # run's samples (no final one) are still on faas.metrics, behind a stopped ingestor,
    # and whose 10 later runs therefore wait for it (the allowance is consumed in order).
    quick = [
        stopped(f"q{i:02d}-{suffix}", fast, start + timedelta(seconds=5 * i), 2) for i in range(30)
    ]
    lagging = stopped(f"lag-{suffix}", slow, start, 3)
    after = [
        stopped(f"a{i:02d}-{suffix}", slow, start + timedelta(seconds=7 * i + 10), 2)
        for i in range(10)
    ]
    for run in [*quick, *after]:
        await clickhouse.insert_arrow("usage_samples", samples_table(cpu_samples(run, Decimal(1))))
    unfinished = [
        s.model_copy(update={"final": False}) for s in cpu_samples(lagging, Decimal("0.5"))
    ]
    await produce(kafka.bootstrap, kafka.metrics_topic,
                  [(s.run_id, s.model_dump_json().encode()) for s in unfinished])  # fmt: skip
    # The lagging run's event is second on the (single) partition: nothing after it can
    # be committed before it is invoiced.
    order = [
        quick[0],
        lagging,
        *[r for pair in zip(quick[1:], after, strict=False) for r in pair],
        *quick[11:],
    ]
    assert len(order) == 41
    await produce(kafka.bootstrap, kafka.deployments_topic,
                  [(r.run_id, r.model_dump_json().encode()) for r in order])  # fmt: skip

    ingestor_group, invoicer_group = f"ing-{suffix}", f"inv-{suffix}"
    events: list[dict[str, Any]] = []
    collector = asyncio.create_task(collect(kafka.bootstrap, kafka.invoices_topic, events))
    publisher = KafkaEventPublisher(kafka)

    def invoicer() -> Invoicer:
        samples = RunSamples(
            clickhouse, grace_s=0.5, poll_s=0.1, max_wait_s=120,
            progress=IngestionProgress(kafka, group_id=ingestor_group),
        )  # fmt: skip
        return Invoicer(kafka, samples, store, lambda _: TARIFF, publisher,
                        group_id=invoicer_group, chunk=8, commit_every_s=0.2)  # fmt: skip

    def published() -> set[str]:
        return {e["run_id"] for e in events}

    try:
        first = invoicer()
        async with running(first) as task:
            await wait_for(
                lambda: published() >= {r.run_id for r in quick}, 60, "fast tenant's invoices"
            )
            # Published while the same batch still waits for the lagging run: not at its end.
            assert first.counters.batches == 1 and not task.done()
            assert not published() & {lagging.run_id, *(r.run_id for r in after)}
            partition = TopicPartition(kafka.deployments_topic, 0)
            for _ in range(50):  # committed up to the lagging run's record, not past it
                if await committed(kafka.bootstrap, invoicer_group, partition) == 1:
                    break
                await asyncio.sleep(0.1)
            assert await committed(kafka.bootstrap, invoicer_group, partition) == 1
            assert first.counters.invoiced == 30
            task.cancel()  # the crash: mid-batch, 29 invoices stored and published, not committed
            with contextlib.suppress(asyncio.CancelledError):
                await task

        second = invoicer()
        ingestor = Ingestor(kafka, clickhouse, publisher, ClickHouseSettings(flush_ms=100),
                            group_id=ingestor_group)  # fmt: skip
        async with running(second), running(ingestor):
            await wait_for(lambda: published() >= {r.run_id for r in order}, 90, "every invoice")
            await wait_for(lambda: second.counters.invoiced == 11, 10, "the batch finished")
        # Redelivered runs whose invoice was stored were published again, not priced again.
        assert second.counters.republished == 29 and second.counters.invoiced == 11
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await publisher.close()

    rows = await clickhouse.query_arrow(
        "SELECT run_id, version FROM invoices"
    )  # no FINAL: every row
    assert Counter(r["run_id"] for r in rows.to_pylist()) == Counter({r.run_id: 1 for r in order})
    assert {r["version"] for r in rows.to_pylist()} == {1}
    # A run published twice carries the same invoice both times (the notifier mails once per
    # invoice id and version).
    by_run: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for event in events:
        by_run[event["run_id"]].add((event["event_id"], event["invoice"]["total"]))
    assert all(len(v) == 1 for v in by_run.values()) and len(by_run) == len(order)
    # The lagging run was priced from all its samples, not from the part stored in time.
    lagging_invoice = await store.current(lagging.run_id)
    assert lagging_invoice is not None
    cpu = next(line.quantity for line in lagging_invoice.lines if line.kind == "cpu")
    assert cpu == Decimal("1.5")  # half a core for 3 s
    # Recomputing every invoice from the stored samples changes nothing (allowance included).
    scope = RebillScope(since=start - timedelta(days=40), until=NOW + timedelta(days=1))
    for tenant in (fast, slow):
        revisions = await rebill_tenant(clickhouse, tenant, scope, lambda _: TARIFF, dry_run=True)
        assert revisions and not [r for r in revisions if r.changed], tenant
