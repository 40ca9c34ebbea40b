"""Meter server throughput and loss, next to a bare Python UDP receive loop (the ceiling).

A separate sender process sends pre-encoded, valid datagrams to 127.0.0.1: as fast as it
can for the ceiling and for our server, then paced at 50 % and 90 % of the ceiling. The
server runs with a real Kafka producer; "produced" counts records acknowledged by Kafka.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import time
import uuid

from app.kafka import ensure_topics
from app.settings import Settings
from infra import devstack
from meter.protocol import MessageKind, MeterMessage, encode
from meter.records import KafkaSink
from meter.server import RECEIVE_BUFFER, MeterServer

SECRET = b"bench-secret"


def datagrams(count: int, runs: int = 500) -> list[bytes]:
    return [
        encode(
            MeterMessage(
                kind=MessageKind.SAMPLE,
                node="bench",
                run_id=f"run-{i % runs}",
                tenant="b@example.com",
                seq=i // runs + 1,
                time_unix_ns=1_800_000_000_000_000_000 + i,
                cpu_ns=i,
                memory_bytes=1 << 26,
                memory_byte_ms=i,
            ),
            SECRET,
        )
        for i in range(count)
    ]


def _send(port: int, payload: list[bytes], rate: float | None) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", port)
    start = time.perf_counter()
    for index, data in enumerate(payload):
        if rate and index % 100 == 0:
            ahead = start + index / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        sock.sendto(data, target)


def _sender(port: int, payload: list[bytes], rate: float | None) -> mp.Process:
    process = mp.get_context("fork").Process(target=_send, args=(port, payload, rate))
    process.start()
    return process


def bare_ceiling(payload: list[bytes]) -> float:
    """Datagrams/s a bare ``recv`` loop receives from the same sender."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    sender = _sender(sock.getsockname()[1], payload, None)
    received, first, last = 0, 0.0, 0.0
    try:
        while True:
            sock.recv(2048)
            last = time.perf_counter()
            first = first or last
            received += 1
    except TimeoutError:
        pass
    sender.join()
    return received / max(last - first, 1e-9)


async def _server_run(bootstrap: str, payload: list[bytes], rate: float | None) -> dict[str, float]:
    settings = Settings(
        kafka={"bootstrap": bootstrap, "metrics_topic": f"bench-m-{uuid.uuid4().hex[:8]}"},
        meter={
            "secret": SECRET.decode(),
            "port": devstack.free_port(),
            "metrics_port": devstack.free_port(),
        },
    )  # type: ignore[arg-type]
    await ensure_topics(settings.kafka)
    publisher = KafkaSink(settings.kafka)  # the producer `python -m meter server` uses
    server = MeterServer(settings.meter, settings.kafka, publisher)
    await server.start(log_every_s=3600)
    start = time.perf_counter()
    sender = _sender(settings.meter.port, payload, rate)
    await asyncio.to_thread(sender.join)
    sent_s = time.perf_counter() - start
    for _ in range(600):  # up to 60 s for Kafka to acknowledge everything accepted
        if server.counters.produced >= server.counters.accepted:
            break
        await asyncio.sleep(0.1)
    produced_s = time.perf_counter() - start
    counters = server.counters
    await server.stop()
    await publisher.close()
    return {
        "offered_per_s": len(payload) / sent_s,
        "accepted_per_s": counters.accepted / sent_s,
        "produced_per_s": counters.produced / produced_s,
        "loss": 1 - counters.accepted / len(payload),
    }


def measure(bootstrap: str, count: int = 300_000) -> dict[str, object]:
    payload = datagrams(count)
    ceiling = bare_ceiling(payload)
    return {
        "datagrams": count,
        "bare_recv_per_s": ceiling,
        "full_speed": asyncio.run(_server_run(bootstrap, payload, None)),
        "at_50pct_ceiling": asyncio.run(_server_run(bootstrap, payload, ceiling * 0.5)),
        "at_90pct_ceiling": asyncio.run(_server_run(bootstrap, payload, ceiling * 0.9)),
        # The issue's own point: loss at half its 100,000/s target.
        "at_50k_per_s": asyncio.run(_server_run(bootstrap, payload, 50_000)),
    }
