"""The invoicer's wait for a late ingestor, on real Kafka and the real ClickHouse engine: a
run without its final sample is priced only once the ingestor stored what was published."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from analytics.clickhouse import DirectClickHouse
from analytics.ingestion import IngestionProgress
from analytics.ingestor import Ingestor
from analytics.schema import migrate
from analytics.settling import RunSamples
from app.kafka import KafkaEventPublisher, ensure_topics
from app.settings import ClickHouseSettings, KafkaSettings
from tests.integration.test_ingestor import produce, sample


async def test_a_missing_final_sample_waits_for_the_ingestor_to_catch_up(
    kafka_bootstrap: str, clickhouse: DirectClickHouse
) -> None:
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, metrics_topic=f"m-{uuid.uuid4().hex[:8]}")
    group = f"ingestor-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka, f"{kafka.metrics_topic}.dlq")
    await migrate(clickhouse)
    published = [sample(7, seq) for seq in range(1, 21)]  # no final sample among them
    await produce(kafka.bootstrap, kafka.metrics_topic,
                  [(s.run_id, s.model_dump_json().encode()) for s in published])  # fmt: skip
    samples = RunSamples(
        clickhouse, grace_s=0.5, progress=IngestionProgress(kafka, group_id=group), max_wait_s=60
    )
    finished_long_ago = datetime.now(UTC) - timedelta(minutes=1)
    pricing = asyncio.create_task(samples.settled("run-7", finished_long_ago))
    await asyncio.sleep(3.0)  # the grace period is long over, but nothing is ingested yet
    assert not pricing.done(), "priced from samples the ingestor has not stored"
    ingestor = Ingestor(
        kafka, clickhouse, KafkaEventPublisher(kafka), ClickHouseSettings(flush_ms=100),
        group_id=group,
    )  # fmt: skip
    running = asyncio.create_task(ingestor.run_forever())
    try:
        settled = await asyncio.wait_for(pricing, 30)
    finally:
        ingestor.stop()
        await asyncio.wait_for(running, 30)
    assert settled.height == len(published)  # all of them, not a part
    assert settled["seq"].to_list() == [s.seq for s in published]


async def test_the_grace_period_counts_from_the_finish_not_from_the_event(
    kafka_bootstrap: str, clickhouse: DirectClickHouse
) -> None:
    """A stopped event that arrives late (a busy control plane) is not held for another grace
    period: the ingestor being caught up is enough. A fresh one waits out the grace period."""
    kafka = KafkaSettings(bootstrap=kafka_bootstrap, metrics_topic=f"m-{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka)
    await migrate(clickhouse)
    samples = RunSamples(clickhouse, grace_s=4, progress=IngestionProgress(kafka), max_wait_s=60)
    now = datetime.now(UTC)
    started = asyncio.get_running_loop().time()
    settled = {}
    async for run_id, _ in samples.settle_many({"late": now - timedelta(minutes=1), "fresh": now}):
        settled[run_id] = asyncio.get_running_loop().time() - started
    assert settled["late"] < 2.0, settled  # nothing published: caught up at once
    assert settled["fresh"] >= 4.0, settled
