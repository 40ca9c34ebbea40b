"""Fault test: the Kafka broker crashes while runs are metered and invoiced, and comes back
on the same port with the same data. Every run still gets exactly one invoice and one email.

The module runs on a broker of its own (``kafka_bootstrap`` overridden), so the crash
cannot disturb the other tests of the session."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import devstack
from tests.e2e.conftest import Platform
from tests.e2e.faultkit import assert_exactly_once, new_tenant, submit

pytestmark = [pytest.mark.fault, pytest.mark.parametrize("platform", ["sqlite"], indirect=True)]
DOWN_S = 6.0


@pytest.fixture(scope="module")
def kafka_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kafka-fault")


@pytest.fixture(scope="module")
def kafka_bootstrap(kafka_state: Path) -> Iterator[str]:
    port = devstack.free_port()
    devstack.start_kafka(kafka_state, port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        devstack.stop("kafka", kafka_state)


async def test_kafka_broker_restarted_while_runs_are_billed(
    platform: Platform, kafka_state: Path
) -> None:
    tenant, tariff = new_tenant(platform, "kafka")
    runs = [submit(platform, tenant, tariff, kind, 3) for kind in ("cpu", "mem")]
    await asyncio.sleep(1.0)
    runs.append(submit(platform, tenant, tariff, "cpu", 2))
    await asyncio.sleep(1.0)  # samples flowing, the first stops are close
    broker = int((kafka_state / "kafka.pid").read_text())
    os.killpg(broker, signal.SIGKILL)  # a crash: no clean shutdown
    died_at = time.monotonic()
    # Runs end while the broker is away: their events wait in the outbox, samples in the
    # meter server's buffer.
    await asyncio.sleep(DOWN_S)
    port = int(platform.kafka_bootstrap.rsplit(":", 1)[1])
    devstack.start_kafka(kafka_state, port)  # same port, same data directory
    print(f"Kafka down for {time.monotonic() - died_at:.1f}s")
    await assert_exactly_once(platform, tenant, runs)
