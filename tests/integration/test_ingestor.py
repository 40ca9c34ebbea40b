"""The ingestor on real Kafka and the real ClickHouse engine: batching, dead letters,
and a kill mid-stream that loses nothing and stores nothing twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from analytics.clickhouse import DirectClickHouse
from analytics.ingestion import IngestionProgress, caught_up
from analytics.ingestor import Ingestor
from analytics.schema import migrate
from app.events import UsageSample
from app.kafka import KafkaEventPublisher, ensure_topics, partition_for
from app.settings import ClickHouseSettings, KafkaSettings
from meter.records import pack_by_partition

BASE = datetime(2026, 11, 1, tzinfo=UTC)


def sample(run: int, seq: int) -> UsageSample:
    run_id = f"run-{run}"
    return UsageSample(
        event_id=f"{run_id}:{seq}", event_time=BASE + timedelta(milliseconds=250 * seq),
        run_id=run_id, tenant=f"t{run % 3}@example.com", node="node-a", seq=seq,
        cpu_ns=1_000_000 * seq, memory_bytes=64 << 20, memory_byte_ms=(64 << 20) * 250 * seq,
        final=False,
    )  # fmt: skip


async def produce(bootstrap: str, topic: str, payloads: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for key, value in payloads:
            await producer.send(topic, key=key.encode(), value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def totals(clickhouse: DirectClickHouse) -> tuple[int, int, int]:
    table = await clickhouse.query_arrow(
        "SELECT count() AS n, sum(cpu_ns) AS cpu, sum(memory_byte_ms) AS mem FROM usage_samples FINAL"
    )
    row = table.to_pylist()[0]
    return int(row["n"]), int(row["cpu"]), int(row["mem"])


async def wait_for_count(
    clickhouse: DirectClickHouse, expected: int, timeout_s: float = 30
) -> None:
    for _ in range(int(timeout_s * 10)):
        if (await totals(clickhouse))[0] >= expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"only {(await totals(clickhouse))[0]} of {expected} samples stored")


@pytest.fixture
def kafka(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap=kafka_bootstrap, metrics_topic=f"metrics-{uuid.uuid4().hex[:8]}")


async def test_samples_land_once_and_bad_records_are_dead_lettered(
    kafka: KafkaSettings, clickhouse: DirectClickHouse
) -> None:
    await ensure_topics(kafka, f"{kafka.metrics_topic}.dlq")
    await migrate(clickhouse)
    samples = [sample(run, seq) for run in range(10) for seq in range(50)]
    good = [(s.run_id, s.model_dump_json().encode()) for s in samples]
    bad = [("run-x", b"not json"), ("run-y", json.dumps({"type": "usage.sample"}).encode())]
    # Duplicates (a meter server retrying a produce) must not be double-counted.
    await produce(kafka.bootstrap, kafka.metrics_topic, good[:250] + bad + good + good[:100])
    publisher = KafkaEventPublisher(kafka)
    ingestor = Ingestor(
        kafka, clickhouse, publisher, ClickHouseSettings(flush_count=200, flush_ms=100)
    )
    task = asyncio.create_task(ingestor.run())
    try:
        await wait_for_count(clickhouse, len(samples))
        expected_cpu = sum(s.cpu_ns for s in samples)
        expected_mem = sum(s.memory_byte_ms for s in samples)
        assert await totals(clickhouse) == (500, expected_cpu, expected_mem)
        for _ in range(50):
            if ingestor.counters.dead_lettered == 2:
                break
            await asyncio.sleep(0.1)
        assert ingestor.counters.dead_lettered == 2
    finally:
        ingestor.stop()
        await asyncio.wait_for(task, 30)
        await publisher.close()
    consumer = AIOKafkaConsumer(
        f"{kafka.metrics_topic}.dlq",
        bootstrap_servers=kafka.bootstrap,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        dead = []
        for _ in range(20):
            for records in (await consumer.getmany(timeout_ms=250)).values():
                dead.extend(r.value for r in records)
            if len(dead) >= 2:
                break
        assert sorted(dead) == sorted(v for _, v in bad)
    finally:
        await consumer.stop()


async def test_kill_mid_stream_loses_nothing_and_stores_nothing_twice(
    kafka: KafkaSettings, clickhouse: DirectClickHouse
) -> None:
    await ensure_topics(kafka, f"{kafka.metrics_topic}.dlq")
    await migrate(clickhouse)
    samples = [sample(run, seq) for run in range(20) for seq in range(500)]
    await produce(
        kafka.bootstrap,
        kafka.metrics_topic,
        [(s.run_id, s.model_dump_json().encode()) for s in samples],
    )
    limits = ClickHouseSettings(flush_count=500, flush_ms=50)
    publisher = KafkaEventPublisher(kafka)
    first = Ingestor(kafka, clickhouse, publisher, limits)
    task = asyncio.create_task(first.run())
    try:
        for _ in range(3_000):
            if first.counters.inserted >= 2_000:
                break
            await asyncio.sleep(0.01)
        task.cancel()  # killed mid-stream: consumed records after the last commit are redelivered
        with pytest.raises(asyncio.CancelledError):
            await task
        stored_at_kill = (await totals(clickhouse))[0]
        assert 0 < stored_at_kill < len(samples)

        second = Ingestor(kafka, clickhouse, publisher, limits)
        task = asyncio.create_task(second.run())
        await wait_for_count(clickhouse, len(samples))
        await asyncio.sleep(0.5)  # anything still in flight would show up as an excess
        assert await totals(clickhouse) == (
            len(samples),
            sum(s.cpu_ns for s in samples),
            sum(s.memory_byte_ms for s in samples),
        )
        second.stop()
        await asyncio.wait_for(task, 30)
    finally:
        if not task.done():
            task.cancel()
        await publisher.close()


class HeldFirstInsert:
    """The real engine, but the first insert waits until released: the next batches are
    parsed meanwhile (the flush pipeline) and must not commit before the first is stored."""

    def __init__(self, clickhouse: DirectClickHouse) -> None:
        self._clickhouse = clickhouse
        self.release = asyncio.Event()
        self.inserted: list[int] = []

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        await self._clickhouse.command(sql, parameters)

    async def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        return await self._clickhouse.query_arrow(sql, parameters)

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        if not self.inserted:
            self.inserted.append(0)
            await self.release.wait()
        await self._clickhouse.insert_arrow(table, data)
        self.inserted.append(data.num_rows)


async def test_packed_records_in_a_flush_pipeline_commit_in_order(
    kafka: KafkaSettings, clickhouse: DirectClickHouse
) -> None:
    """Records packing many runs' samples (as the meter server sends them), flushes
    overlapping: while the first batch's insert is held, later batches are parsed but
    nothing is committed; once it is stored, everything lands once and commits."""
    await ensure_topics(kafka, f"{kafka.metrics_topic}.dlq")
    await migrate(clickhouse)
    samples = [sample(run, seq) for seq in range(100) for run in range(60)]
    publisher = KafkaEventPublisher(kafka)
    partitions = await publisher.partition_count(kafka.metrics_topic)
    lines = [(s.run_id, s.model_dump_json().encode()) for s in samples]

    async def produce_packed(part: list[tuple[str, bytes]]) -> None:
        for start in range(0, len(part), 300):  # flushes of 300 samples, as a meter server's
            await publisher.publish_to(
                kafka.metrics_topic,
                pack_by_partition(
                    part[start : start + 300], lambda r: partition_for(r, partitions)
                ),
            )

    held = HeldFirstInsert(clickhouse)
    group = f"ingest-{uuid.uuid4().hex[:8]}"
    ingestor = Ingestor(
        kafka, held, publisher, ClickHouseSettings(flush_count=500, flush_ms=50), group_id=group
    )
    progress = IngestionProgress(kafka, group_id=group)
    await produce_packed(lines[:1200])
    task = asyncio.create_task(ingestor.run())
    try:
        for _ in range(300):
            if len(held.inserted) == 1:  # the first batch's insert is held
                break
            await asyncio.sleep(0.05)
        first = ingestor.counters.consumed
        await produce_packed(lines[1200:])  # later batches, consumed and parsed meanwhile
        for _ in range(100):
            if ingestor.counters.consumed > first:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert len(held.inserted) == 1 and ingestor.counters.consumed > first
        assert await progress.committed() == {}  # nothing before the first batch is stored
        held.release.set()
        await wait_for_count(clickhouse, len(samples))
        ends = await progress.end_offsets()
        for _ in range(100):
            if caught_up(await progress.committed(), ends):
                break
            await asyncio.sleep(0.1)
        assert caught_up(await progress.committed(), ends)
        assert await totals(clickhouse) == (
            len(samples),
            sum(s.cpu_ns for s in samples),
            sum(s.memory_byte_ms for s in samples),
        )
        assert sum(held.inserted) == len(samples) and ingestor.counters.dead_lettered == 0
    finally:
        ingestor.stop()
        await asyncio.wait_for(task, 30)
        await publisher.close()
