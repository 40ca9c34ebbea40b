"""The outbox relay against a real broker: nothing published twice, nothing lost while down."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from app.control.outbox import OutboxRelay
from app.kafka import KafkaEventPublisher, ensure_topics
from app.schemas import RunStatus
from app.settings import KafkaSettings
from app.store.db import make_engine, migrate
from app.store.models import RunRow
from app.store.runs import OutgoingEvent, RunRepository


def repository(tmp_path: Path) -> RunRepository:
    engine = make_engine(f"sqlite:///{tmp_path / 'faas.db'}")
    migrate(engine)
    return RunRepository(engine)


def add_running_run(runs: RunRepository, topic: str, run_id: str) -> None:
    now = datetime.now(UTC)
    runs.add_pending(
        RunRow(id=run_id, email="a@b.c", image_name="i", command=None, cpu=1, memory_mb=6,
               timeout_s=1, tariff=None, status=RunStatus.PENDING.value, created_at=now)
    )  # fmt: skip
    events = [
        OutgoingEvent(topic, run_id, json.dumps({"n": n, "run_id": run_id})) for n in range(3)
    ]
    runs.mark_running(run_id, "c", now, now + timedelta(seconds=1), events)


async def read_all(bootstrap: str, topic: str, expected: int) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    seen: list[dict[str, object]] = []
    try:
        for _ in range(40):
            for records in (await consumer.getmany(timeout_ms=250)).values():
                seen.extend(json.loads(r.value) for r in records)
            if len(seen) >= expected:
                break
    finally:
        await consumer.stop()
    return seen


async def test_relay_publishes_in_order_once(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = f"outbox-{uuid.uuid4().hex[:8]}"
    settings = KafkaSettings(bootstrap=kafka_bootstrap, deployments_topic=topic)
    await ensure_topics(settings)
    runs = repository(tmp_path)
    add_running_run(runs, topic, "run-a")
    publisher = KafkaEventPublisher(settings)
    relay = OutboxRelay(runs, publisher)
    try:
        assert await relay.publish_pending() == 3
        assert await relay.publish_pending() == 0
    finally:
        await publisher.close()
    seen = await read_all(kafka_bootstrap, topic, 3)
    assert [e["n"] for e in seen] == [0, 1, 2]


async def test_events_wait_in_the_outbox_while_kafka_is_unreachable(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    topic = f"outbox-{uuid.uuid4().hex[:8]}"
    runs = repository(tmp_path)
    add_running_run(runs, topic, "run-b")
    dead = KafkaEventPublisher(KafkaSettings(bootstrap="127.0.0.1:1", deployments_topic=topic))
    relay = OutboxRelay(runs, dead)
    try:
        await relay.publish_pending()
        raise AssertionError("publishing to a dead broker must fail")
    except Exception as exc:  # aiokafka's connection error
        assert "KafkaConnectionError" in type(exc).__name__ or "connect" in str(exc).lower()
    assert len(runs.unpublished(10)) == 3
    live = KafkaEventPublisher(KafkaSettings(bootstrap=kafka_bootstrap, deployments_topic=topic))
    try:
        assert await OutboxRelay(runs, live).publish_pending() == 3
    finally:
        await live.close()
    assert [e["n"] for e in await read_all(kafka_bootstrap, topic, 3)] == [0, 1, 2]
