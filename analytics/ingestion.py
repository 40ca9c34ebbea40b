"""How far the ingestor has got: its committed offsets on ``faas.metrics`` against the
topic's end. The invoicer prices a run whose final sample is missing only once the
ingestor has stored everything published up to then — otherwise an ingestor that was
down or behind would get the run billed from part of its samples."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from analytics.ingestor import GROUP as INGESTOR_GROUP
from app.settings import KafkaSettings

log = logging.getLogger(__name__)
Offsets = Mapping[TopicPartition, int]


def caught_up(committed: Offsets, targets: Offsets) -> bool:
    """Every partition's committed offset has reached its target (empty partitions have
    target 0, so a partition the group never committed on counts as 0)."""
    return all(committed.get(tp, 0) >= end for tp, end in targets.items())


class IngestionProgress:
    """Reads the metrics topic's end offsets and the ingestor group's committed ones."""

    def __init__(self, kafka: KafkaSettings, *, group_id: str = INGESTOR_GROUP) -> None:
        if kafka is None:
            raise ValueError("kafka is required")
        self._kafka = kafka
        self._group_id = group_id

    async def end_offsets(self) -> dict[TopicPartition, int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._kafka.bootstrap, client_id=f"{self._kafka.client_id}-lag"
        )
        await consumer.start()
        try:
            await consumer.topics()  # loads the cluster's metadata
            partitions = consumer.partitions_for_topic(self._kafka.metrics_topic) or set()
            tps = [TopicPartition(self._kafka.metrics_topic, p) for p in sorted(partitions)]
            return dict(await consumer.end_offsets(tps)) if tps else {}
        finally:
            await consumer.stop()

    async def committed(self) -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._kafka.bootstrap, client_id=f"{self._kafka.client_id}-lag"
        )
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self._group_id)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
