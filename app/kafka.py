"""Kafka plumbing shared by producers and consumers (aiokafka)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from app.settings import KafkaSettings

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=65_536)
def _key_hash(key: bytes) -> int:
    """Kafka's default partitioner hash; cached, as a run's key repeats with every sample."""
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``."""
    return _key_hash(key.encode()) % partitions


async def ensure_topics(settings: KafkaSettings, *extra: str) -> None:
    """Create the platform's topics if missing (idempotent, safe to race)."""
    names = [
        settings.deployments_topic,
        settings.metrics_topic,
        settings.invoices_topic,
        settings.node_events_topic,
        *extra,
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap, client_id=settings.client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=settings.partitions, replication_factor=1)
            for name in names
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another replica won the race
                await admin.create_topics(missing)
    finally:
        await admin.close()


class KafkaEventPublisher:
    """Idempotent producer, acks=all: ``publish`` returns once every message is durable.
    ``max_batch_bytes`` bounds one partition's batch: the meter server's stream of small
    samples needs large ones (aiokafka's default of 16 KiB costs one request per ~50)."""

    def __init__(self, settings: KafkaSettings, max_batch_bytes: int = 16 * 1024) -> None:
        if settings is None or max_batch_bytes < 1024:
            raise ValueError("settings are required and max_batch_bytes must be >= 1024")
        self._settings = settings
        self._max_batch_bytes = max_batch_bytes
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._settings.bootstrap,
                    client_id=self._settings.client_id,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=5,
                    max_batch_size=self._max_batch_bytes,
                    request_timeout_ms=15_000,
                )
                try:
                    await producer.start()
                except KafkaError:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, topic: str, messages: list[tuple[str, bytes]]) -> None:
        producer = await self._started()
        try:
            # Whole batches per partition: per-message sends cost more than the encoding.
            partitions = sorted(await producer.partitions_for(topic))
            by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
            for key, value in messages:
                raw_key = key.encode()
                partition = partitions[_key_hash(raw_key) % len(partitions)]
                by_partition.setdefault(partition, []).append((raw_key, value))
            await self._send(producer, topic, by_partition)
        except KafkaError:
            # Drop the producer so the next attempt reconnects from scratch.
            await self.close()
            raise

    async def partition_count(self, topic: str) -> int:
        producer = await self._started()
        try:
            return len(await producer.partitions_for(topic))
        except KafkaError:
            await self.close()
            raise

    async def publish_to(self, topic: str, records: list[tuple[int, bytes]]) -> None:
        """Values without a key to the given partitions (0 to ``partition_count`` - 1): for
        records that pack several keys' messages, placed where all those keys hash."""
        producer = await self._started()
        try:
            by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
            for partition, value in records:
                by_partition.setdefault(partition, []).append((None, value))
            await self._send(producer, topic, by_partition)
        except KafkaError:
            await self.close()
            raise

    @staticmethod
    async def _send(
        producer: AIOKafkaProducer,
        topic: str,
        by_partition: dict[int, list[tuple[bytes | None, bytes]]],
    ) -> None:
        futures = []
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for raw_key, value in records:
                if batch.append(key=raw_key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=raw_key, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    async def close(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
