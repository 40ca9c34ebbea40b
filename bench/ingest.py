"""Ingestor throughput: samples/s from Kafka into ClickHouse, next to its two ceilings
measured in the same run on the same data: draining the topic with a bare aiokafka
consumer (no parsing, no insert) and a bare ``insert_arrow`` of the same rows.

The topic is filled the way the meter server fills it: each flush of ``flush`` samples
packed per partition (``meter.records.pack_by_partition``, up to 256 lines a record) and
sent without a key. ``flush=1`` gives one sample per record (the old layout)."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer

from analytics.clickhouse import DirectClickHouse
from analytics.ingestor import Ingestor
from analytics.samples import samples_table
from analytics.schema import migrate
from app.events import UsageSample
from app.kafka import KafkaEventPublisher, ensure_topics, partition_for
from app.settings import ClickHouseSettings, KafkaSettings
from meter.records import pack_by_partition


def make_samples(count: int, runs: int = 1000) -> list[UsageSample]:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        UsageSample(
            event_id=f"r{i % runs}:{i // runs}",
            event_time=base + timedelta(milliseconds=250 * (i // runs)),
            run_id=f"r{i % runs}",
            tenant=f"t{i % 50}@example.com",
            node="n1",
            seq=i // runs,
            cpu_ns=i,
            memory_bytes=1 << 26,
            memory_byte_ms=i << 10,
        )
        for i in range(count)
    ]


async def _produce(kafka: KafkaSettings, samples: list[UsageSample], flush: int) -> int:
    """Records as the meter server makes them from flushes of ``flush`` samples; returns
    how many records that made."""
    publisher = KafkaEventPublisher(kafka, max_batch_bytes=1 << 20)
    topic = kafka.metrics_topic
    try:
        partitions = await publisher.partition_count(topic)
        records = 0
        for start in range(0, len(samples), max(flush, 1000)):  # one publish per ≥1000
            chunk = samples[start : start + max(flush, 1000)]
            packed = [
                record
                for at in range(0, len(chunk), flush)
                for record in pack_by_partition(
                    [(s.run_id, s.model_dump_json().encode()) for s in chunk[at : at + flush]],
                    lambda run_id: partition_for(run_id, partitions),
                )
            ]
            await publisher.publish_to(topic, packed)
            records += len(packed)
        return records
    finally:
        await publisher.close()


async def _drain(bootstrap: str, topic: str, count: int) -> float:
    """Seconds to consume ``count`` records (no parsing)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=f"drain-{uuid.uuid4().hex}",
        enable_auto_commit=False, max_partition_fetch_bytes=4 << 20,
    )  # fmt: skip
    await consumer.start()
    try:
        seen, start = 0, time.perf_counter()
        while seen < count:
            for records in (await consumer.getmany(timeout_ms=500, max_records=10_000)).values():
                seen += len(records)
        return time.perf_counter() - start
    finally:
        await consumer.stop()


async def measure_async(
    bootstrap: str, count: int, flush: int = 500, flush_count: int = 20_000
) -> dict[str, float]:
    kafka = KafkaSettings(
        bootstrap=bootstrap, metrics_topic=f"bench-metrics-{uuid.uuid4().hex[:8]}"
    )
    await ensure_topics(kafka, f"{kafka.metrics_topic}.dlq")
    samples = make_samples(count)
    records = await _produce(kafka, samples, flush)
    clickhouse = DirectClickHouse(f"chdb://{tempfile.mkdtemp(prefix='faas-bench-ch-')}", "bench")
    await migrate(clickhouse)

    drain_s = await _drain(bootstrap, kafka.metrics_topic, records)
    table = samples_table(samples)
    start = time.perf_counter()
    await clickhouse.insert_arrow("usage_samples", table)
    insert_s = time.perf_counter() - start
    await clickhouse.command("TRUNCATE TABLE usage_samples")

    publisher = KafkaEventPublisher(kafka)
    ingestor = Ingestor(
        kafka, clickhouse, publisher, ClickHouseSettings(flush_count=flush_count, flush_ms=500)
    )
    start = time.perf_counter()
    task = asyncio.create_task(ingestor.run())
    for _ in range(600_000):  # bounded: at most ~10 minutes
        if ingestor.counters.inserted >= count:
            break
        await asyncio.sleep(0.001)
    ingest_s = time.perf_counter() - start
    ingestor.stop()
    await task
    await publisher.close()
    stored = (
        await clickhouse.query_arrow("SELECT count() AS n FROM usage_samples FINAL")
    ).to_pylist()[0]["n"]
    clickhouse.close()
    return {
        "samples": count,
        "records": records,
        "flush_count": flush_count,
        "stored": int(stored),
        "ingestor_samples_per_s": count / ingest_s,
        "bare_consume_samples_per_s": count / drain_s,
        "bare_insert_arrow_samples_per_s": count / insert_s,
    }


def measure(
    bootstrap: str, count: int = 200_000, flush: int = 500, flush_count: int = 20_000
) -> dict[str, float]:
    """``flush``: samples per meter-server flush (1: one sample a record, the old layout);
    ``flush_count``: the ingestor's ``FAAS_CLICKHOUSE_FLUSH_COUNT``."""
    return asyncio.run(measure_async(bootstrap, count, flush, flush_count))
