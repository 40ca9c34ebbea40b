"""Ingestor: ``faas.metrics`` → ClickHouse ``usage_samples``, the aiokafka way.

Consumer group, no auto-commit; records accumulate until ``flush_count`` samples or
``flush_ms`` of waiting, whichever first; then the batch is inserted, unusable records go
to the dead-letter topic, and only then are the offsets committed. A crash before the
commit redelivers the batch, which the ReplacingMergeTree key makes harmless.

Flushes are a pipeline: while one batch is inserted, the next is parsed (in a worker
thread: Polars releases the GIL) and the one after is consumed. Inserts, dead letters and
commits stay in batch order: a batch commits only after every batch before it did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from analytics.clickhouse import ClickHouse
from analytics.samples import samples_batch
from app.events import EventPublisher
from app.loops import RestartingLoop
from app.settings import ClickHouseSettings, KafkaSettings

log = logging.getLogger(__name__)
GROUP = "faas-ingestor"
FLUSHES_IN_FLIGHT = 2


@dataclass
class IngestCounters:
    consumed: int = 0
    inserted: int = 0
    dead_lettered: int = 0
    flushes: int = 0
    insert_failures: int = 0


@dataclass
class _Batch:
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to commit
    samples: int = 0  # a record may carry several samples, one per line
    opened_at: float = 0.0

    def __len__(self) -> int:
        return len(self.records)

    def add(self, partition: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """One partition's fetched records; whole lists, since per-record Python work is
        what limits the ingestor."""
        if not self.records:
            self.opened_at = time.monotonic()
        values = [record.value for record in records]
        self.records += records
        self.values += values
        # Records pack up to 256 samples, one per line: counting per record costs little.
        self.samples += len(values) + sum(value.count(b"\n") for value in values if value)
        self.offsets[partition] = records[-1].offset + 1


class Ingestor(RestartingLoop):
    name = "ingestor"

    def __init__(
        self,
        kafka: KafkaSettings,
        clickhouse: ClickHouse,
        dead_letters: EventPublisher,
        limits: ClickHouseSettings,
        *,
        group_id: str = GROUP,
    ) -> None:
        super().__init__()
        if kafka is None or clickhouse is None or dead_letters is None or limits is None:
            raise ValueError("kafka, clickhouse, dead_letters and limits are required")
        self._kafka = kafka
        self._clickhouse = clickhouse
        self._dead_letters = dead_letters
        self._flush_count = limits.flush_count
        self._flush_s = limits.flush_ms / 1000
        self._group_id = group_id
        self.counters = IngestCounters()

    @property
    def dead_letter_topic(self) -> str:
        return f"{self._kafka.metrics_topic}.dlq"

    async def _flush(
        self, consumer: AIOKafkaConsumer, batch: _Batch, previous: asyncio.Task[None] | None
    ) -> None:
        # In a thread: Polars parses without the GIL while the loop keeps consuming and the
        # previous batch is inserted.
        rows, bad = await asyncio.to_thread(samples_batch, batch.values)
        if previous is not None:
            await previous  # in order: its failure stops this batch before its commit
        dead = []
        for index in bad:
            record = batch.records[index]
            log.warning("dead-lettering %s@%s/%s", record.topic, record.partition, record.offset)
            dead.append(((record.key or b"").decode(errors="replace"), record.value or b""))
        delay = 0.5
        while True:  # Kafka keeps the records: retry until ClickHouse takes them
            try:
                if rows.num_rows:
                    await self._clickhouse.insert_arrow("usage_samples", rows)
                if dead:
                    await self._dead_letters.publish(self.dead_letter_topic, dead)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters.insert_failures += 1
                log.warning("ingestor flush failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        # Explicit offsets: records consumed after this batch are not flushed yet.
        await consumer.commit(batch.offsets)
        self.counters.inserted += rows.num_rows
        self.counters.dead_lettered += len(dead)
        self.counters.flushes += 1

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self._kafka.metrics_topic,
            bootstrap_servers=self._kafka.bootstrap,
            group_id=self._group_id,
            client_id=f"{self._kafka.client_id}-ingestor",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        # Up to FLUSHES_IN_FLIGHT flushes run (one inserting, one parsing) while the next
        # batch is consumed; each waits for the one before it to insert and commit.
        inflight: deque[asyncio.Task[None]] = deque()
        try:
            batch = _Batch()
            while not self._stopping.is_set():
                wait_s = self._flush_s
                if batch:
                    wait_s = max(0.0, batch.opened_at + self._flush_s - time.monotonic())
                fetched = await consumer.getmany(
                    timeout_ms=int(wait_s * 1000), max_records=self._flush_count
                )
                for partition, records in fetched.items():
                    if records:
                        self.counters.consumed += len(records)
                        batch.add(partition, records)
                due = batch and time.monotonic() - batch.opened_at >= self._flush_s
                if batch.samples >= self._flush_count or due:
                    while inflight and (inflight[0].done() or len(inflight) >= FLUSHES_IN_FLIGHT):
                        await inflight.popleft()  # raises if that flush failed
                    previous = inflight[-1] if inflight else None
                    inflight.append(asyncio.create_task(self._flush(consumer, batch, previous)))
                    batch = _Batch()
            while inflight:
                await inflight.popleft()
            if batch:
                await self._flush(consumer, batch, None)
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            await consumer.stop()
