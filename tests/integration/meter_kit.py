"""Reading back what the meter server produced, shared by the meter integration tests."""

from __future__ import annotations

import json

from aiokafka import AIOKafkaConsumer


async def topic_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """``(key, value)`` of every record on ``topic``, read by an independent consumer until
    the topic has been quiet for a second; a packed sample record (keyless, one sample a
    line) comes as one entry per line."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: list[tuple[bytes | None, bytes]] = []
    try:
        idle = 0
        while idle < 4:
            batch = await consumer.getmany(timeout_ms=250)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for r in records:
                    if r.value is None:
                        continue
                    if r.key is None:
                        found.extend((None, line) for line in r.value.split(b"\n"))
                    else:
                        found.append((r.key, r.value))
    finally:
        await consumer.stop()
    return found


async def run_records(bootstrap: str, topic: str, run_id: str) -> list[bytes]:
    """The values of ``run_id`` on ``topic``: lifecycle events keyed by it, its samples."""
    return [
        value
        for key, value in await topic_records(bootstrap, topic)
        if key == run_id.encode() or (key is None and json.loads(value)["run_id"] == run_id)
    ]
