"""A live flood of random, forged, damaged and replayed datagrams at a running
``python -m meter server``, with valid samples in between: the server stays up, every
datagram is counted exactly once, and every valid sample lands in Kafka."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from app.events import UsageSample
from app.kafka import ensure_topics
from app.settings import KafkaSettings
from infra import devstack
from meter.protocol import MessageKind, MeterMessage, encode
from tests.integration.meter_kit import topic_records

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"flood-test-secret"
RUNS, SAMPLES_PER_RUN, HOSTILE_PER_VALID = 5, 100, 40
pytestmark = pytest.mark.hostile


def valid(run: int, seq: int) -> bytes:
    return encode(
        MeterMessage(
            kind=MessageKind.SAMPLE, node="flood-node", run_id=f"flood-{run}",
            tenant="flood@example.com", seq=seq, time_unix_ns=1_800_000_000_000_000_000 + seq,
            cpu_ns=seq * 1000, memory_bytes=1 << 20, memory_byte_ms=seq,
        ),
        SECRET,
    )  # fmt: skip


def hostile(rng: random.Random, sent_valid: list[bytes]) -> bytes:
    """One of: random bytes, a forged (wrong key) sample, a damaged valid one, a replay."""
    choice = rng.randrange(4)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 1600))
    if choice == 1:
        forged = MeterMessage(
            kind=MessageKind.SAMPLE, node="flood-node", run_id=f"flood-{rng.randrange(RUNS)}",
            tenant="victim@example.com", seq=10**9, time_unix_ns=1, cpu_ns=10**15,
            memory_bytes=1, memory_byte_ms=1,
        )  # fmt: skip
        return encode(forged, b"not-the-secret")
    if choice == 2 or not sent_valid:
        damaged = bytearray(valid(rng.randrange(RUNS), 10**6))
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        return bytes(damaged)
    return rng.choice(sent_valid)  # a replay of something already accepted


def flood(port: int) -> tuple[int, int]:
    """Sends valid samples with hostile datagrams around each; paced so the kernel keeps
    all of them (the flood tests the server's handling, not loopback's buffer)."""
    rng = random.Random(1234)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent_valid: list[bytes] = []
    total = 0
    for seq in range(1, SAMPLES_PER_RUN + 1):
        for run in range(RUNS):
            for _ in range(HOSTILE_PER_VALID):
                sock.sendto(hostile(rng, sent_valid), ("127.0.0.1", port))
            datagram = valid(run, seq)
            sock.sendto(datagram, ("127.0.0.1", port))
            sent_valid.append(datagram)
            total += HOSTILE_PER_VALID + 1
        time.sleep(0.01)
    sock.close()
    return total, len(sent_valid)


async def landed(kafka: KafkaSettings) -> dict[str, list[int]]:
    seqs: dict[str, list[int]] = {}
    for _, line in await topic_records(kafka.bootstrap, kafka.metrics_topic):
        sample = UsageSample.model_validate_json(line)
        seqs.setdefault(sample.run_id, []).append(sample.seq)
    return seqs


async def test_flood_is_counted_and_valid_samples_land(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap, metrics_topic=f"flood-metrics-{suffix}",
        node_events_topic=f"flood-nodes-{suffix}",
    )  # fmt: skip
    await ensure_topics(kafka)
    udp_port, metrics_port = devstack.free_port(), devstack.free_port()
    env = {
        **os.environ, "FAAS_HOME": str(tmp_path), "FAAS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FAAS_KAFKA_METRICS_TOPIC": kafka.metrics_topic,
        "FAAS_KAFKA_NODE_EVENTS_TOPIC": kafka.node_events_topic,
        "FAAS_METER_SECRET": SECRET.decode(), "FAAS_METER_PORT": str(udp_port),
        "FAAS_METER_METRICS_PORT": str(metrics_port), "FAAS_METER_FLUSH_MS": "50",
    }  # fmt: skip
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meter", "server", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        devstack.wait_for_port(metrics_port, 30, "meter server", server.pid)
        sent, sent_valid = await asyncio.to_thread(flood, udp_port)
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                counters = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics.json")).json()
                done = counters["received"] >= sent and counters["buffered"] == 0
                if done and counters["produced"] == counters["accepted"]:  # in flight too
                    break
                await asyncio.sleep(0.1)
        assert server.returncode is None, "the meter server died under the flood"
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(server.communicate(), timeout=20)
    assert server.returncode == 0, err.decode()[-2000:]
    dropped = sum(counters["dropped"].values()) + counters["dropped_buffer_full"]
    assert counters["received"] == sent  # nothing lost before the server saw it
    assert counters["received"] == counters["accepted"] + dropped  # each counted once
    assert counters["accepted"] == counters["produced"] == sent_valid
    assert counters["dropped"]["bad_signature"] > 0 and counters["dropped"]["replayed"] > 0
    seqs = await landed(kafka)
    expected = list(range(1, SAMPLES_PER_RUN + 1))
    assert {run: sorted(found) for run, found in seqs.items()} == {
        f"flood-{run}": expected for run in range(RUNS)
    }
