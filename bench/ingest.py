"""Ingestor throughput: samples/s from Kafka into ClickHouse, next to its two ceilings
measured in the same run on the same data: draining the topic with a bare aiokafka
consumer (no parsing, no insert) and a bare ``insert_arrow`` of the same rows."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from analytics.clickhouse import DirectClickHouse
from analytics.ingestor import Ingestor
from analytics.samples import samples_table
from analytics.schema import migrate
from app.events import UsageSample
from app.kafka import KafkaEventPublisher, ensure_topics
from app.settings import ClickHouseSettings, KafkaSettings


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


async def _produce(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        for key, value in payloads:
            await producer.send(topic, key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def _drain(bootstrap: str, topic: str, count: int) -> float:
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


async def measure_async(bootstrap: str, count: int) -> dict[str, float]:
    kafka = KafkaSettings(
        bootstrap=bootstrap, metrics_topic=f"bench-metrics-{uuid.uuid4().hex[:8]}"
    )
    await ensure_topics(kafka, f"{kafka.metrics_topic}.dlq")
    samples = make_samples(count)
    await _produce(
        bootstrap,
        kafka.metrics_topic,
        [(s.run_id.encode(), s.model_dump_json().encode()) for s in samples],
    )
    clickhouse = DirectClickHouse(f"chdb://{tempfile.mkdtemp(prefix='faas-bench-ch-')}", "bench")
    await migrate(clickhouse)

    drain_s = await _drain(bootstrap, kafka.metrics_topic, count)
    table = samples_table(samples)
    start = time.perf_counter()
    await clickhouse.insert_arrow("usage_samples", table)
    insert_s = time.perf_counter() - start
    await clickhouse.command("TRUNCATE TABLE usage_samples")

    publisher = KafkaEventPublisher(kafka)
    ingestor = Ingestor(
        kafka, clickhouse, publisher, ClickHouseSettings(flush_count=20_000, flush_ms=500)
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
        "stored": int(stored),
        "ingestor_samples_per_s": count / ingest_s,
        "bare_consume_samples_per_s": count / drain_s,
        "bare_insert_arrow_samples_per_s": count / insert_s,
    }


def measure(bootstrap: str, count: int = 200_000) -> dict[str, float]:
    return asyncio.run(measure_async(bootstrap, count))
