"""Where a run's stop → email time goes, stage by stage: the runtime's finish → its
``stopped`` event on ``faas.deployments`` (the Kafka record's time: the control plane
noticed the exit) → its invoice stored (``created_at``: the invoicer) → its ``.eml`` in
the sink (the notifier and SMTP)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer

Times = dict[str, datetime]


async def stopped_events(bootstrap: str, topic: str, tenants: set[str]) -> Times:
    """When each of the tenants' runs' ``stopped`` event reached Kafka (whole topic read)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: Times = {}
    try:
        idle = 0
        while idle < 3:  # three empty fetches in a row: the end of the topic
            fetched = await consumer.getmany(timeout_ms=500, max_records=10_000)
            idle = 0 if fetched else idle + 1
            for records in fetched.values():
                for record in records:
                    event = json.loads(record.value or b"{}")
                    if event.get("type") == "stopped" and event.get("tenant") in tenants:
                        found.setdefault(event["run_id"], datetime.fromtimestamp(record.timestamp / 1000, UTC))  # fmt: skip
    finally:
        await consumer.stop()
    return found


def stages(
    percentile: Callable[[list[float], float], float],
    finished: Times,
    stopped: Times,
    invoiced: Times,
    emailed: Times,
) -> dict[str, float]:
    """p50/p95 of each stage over the runs that have both of its ends."""
    report = {}
    chain = [("finish_to_stopped_event", finished, stopped),
             ("stopped_event_to_invoice", stopped, invoiced),
             ("invoice_to_email", invoiced, emailed)]  # fmt: skip
    for name, start, end in chain:
        spans = [(end[r] - start[r]).total_seconds() for r in start.keys() & end.keys()]
        report[f"{name}_p50_s"] = percentile(spans, 0.5)
        report[f"{name}_p95_s"] = percentile(spans, 0.95)
    return report
