"""Reading back what the meter server produced, shared by the meter integration tests."""

from __future__ import annotations

import json

from aiokafka import AIOKafkaConsumer


async def run_records(bootstrap: str, topic: str, run_id: str) -> list[bytes]:
    """Every record of ``run_id`` on ``topic``, read by an independent consumer until the
    topic has been quiet for a second: lifecycle events keyed by run id, and the run's
    lines of the packed sample records (keyless, one sample per line)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        idle = 0
        while idle < 4:
            batch = await consumer.getmany(timeout_ms=250)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for r in records:
                    if r.value is None:
                        continue
                    if r.key == run_id.encode():
                        values.append(r.value)
                    elif r.key is None:
                        values.extend(
                            line
                            for line in r.value.split(b"\n")
                            if json.loads(line)["run_id"] == run_id
                        )
    finally:
        await consumer.stop()
    return values
