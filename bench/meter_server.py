"""Meter server throughput and loss, next to a bare Python UDP receive loop (the ceiling).

A separate sender process sends pre-encoded, valid datagrams to 127.0.0.1: as fast as it
can for the ceiling and for our server, then paced at 50 % and 90 % of the ceiling. The
server runs with a real Kafka producer; "produced" counts records acknowledged by Kafka.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import socket
import time
import uuid

from app.kafka import KafkaEventPublisher, ensure_topics
from app.settings import Settings
from infra import devstack
from meter.batch_protocol import encode_batches
from meter.protocol import MessageKind, MeterMessage, encode
from meter.server import MeterServer, receive_buffer

SECRET = b"bench-secret"


def _samples(count: int, runs: int, first_seq: int, run_id: str) -> list[MeterMessage]:
    """``count`` samples, round-robin over ``runs`` runs (``run_id`` formats the index)."""
    return [
        MeterMessage(
            kind=MessageKind.SAMPLE,
            node="bench",
            run_id=run_id.format(i % runs),
            tenant="b@example.com",
            seq=first_seq + i // runs,
            time_unix_ns=1_800_000_000_000_000_000 + i,
            cpu_ns=i,
            memory_bytes=1 << 26,
            memory_byte_ms=i,
        )
        for i in range(count)
    ]


def datagrams(count: int, runs: int = 500, first_seq: int = 1) -> list[bytes]:
    """Protocol version 1: one sample a datagram."""
    return [encode(m, SECRET) for m in _samples(count, runs, first_seq, "run-{}")]


def batched_datagrams(count: int, runs: int = 20_000, first_seq: int = 1) -> list[bytes]:
    """``count`` samples as the agent sends them (protocol version 2): each tick, the
    samples of every run, as many to a datagram as fit (~12 with UUID-long run ids)."""
    messages = _samples(count, runs, first_seq, "{:036d}")
    return [
        datagram
        for tick in range(0, count, runs)
        for datagram in encode_batches(messages[tick : tick + runs], SECRET)
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
    receive_buffer(sock)  # the same buffer as the server's
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


async def _server_run(
    bootstrap: str,
    payload: list[bytes],
    rate: float | None,
    warmup: list[bytes] = (),
    samples: int | None = None,
    warmup_samples: int | None = None,
) -> dict[str, float]:
    """``warmup`` (one sample per run, sent slowly and not counted) puts the server in the
    steady state of a long-lived run: its identity is known, its first datagram decoded.
    ``rate`` is datagrams/s; ``samples`` how many the payload holds (version 2: several a
    datagram), and the figures are per sample."""
    samples = samples or len(payload)
    warmup_samples = warmup_samples or len(warmup)
    settings = Settings(
        kafka={"bootstrap": bootstrap, "metrics_topic": f"bench-m-{uuid.uuid4().hex[:8]}"},
        meter={
            "secret": SECRET.decode(),
            "port": devstack.free_port(),
            "metrics_port": devstack.free_port(),
        },
    )  # type: ignore[arg-type]
    await ensure_topics(settings.kafka)
    publisher = KafkaEventPublisher(
        settings.kafka, max_batch_bytes=settings.meter.produce_batch_bytes
    )
    server = MeterServer(settings.meter, settings.kafka, publisher)
    await server.start(log_every_s=3600)
    if warmup:
        await asyncio.to_thread(_sender(settings.meter.port, list(warmup), 20_000).join)
        for _ in range(100):
            if server.counters.produced >= warmup_samples:
                break
            await asyncio.sleep(0.1)
    before = server.counters.accepted, server.counters.produced
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)  # this process: the server only
    start = time.perf_counter()
    sender = _sender(settings.meter.port, payload, rate)
    await asyncio.to_thread(sender.join)
    sent_s = time.perf_counter() - start
    for _ in range(600):  # up to 60 s for Kafka to acknowledge everything accepted
        if server.counters.produced >= server.counters.accepted:
            break
        await asyncio.sleep(0.1)
    produced_s = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
    accepted = server.counters.accepted - before[0]
    produced = server.counters.produced - before[1]
    await server.stop()
    await publisher.close()
    return {
        "datagrams_per_s": len(payload) / sent_s,
        "offered_per_s": samples / sent_s,
        "accepted_per_s": accepted / sent_s,
        "produced_per_s": produced / produced_s,
        "loss": 1 - accepted / samples,
        "server_cpu_us_per_accepted": 1e6 * cpu_s / max(accepted, 1),
    }


def measure(bootstrap: str, count: int = 300_000, runs: int = 500) -> dict[str, object]:
    """``runs`` sets how many samples of one run a flush can pack into one Kafka record:
    500 runs at these rates is ~200 samples/s per run; 25,000 runs is 4 Hz each, the
    agent's default interval, where a 100 ms flush holds about one sample per run."""
    payload = datagrams(count, runs)
    warmup = datagrams(runs, runs, first_seq=0)
    ceiling = bare_ceiling(payload)
    return {
        "datagrams": count,
        "runs": runs,
        "bare_recv_per_s": ceiling,
        "full_speed": asyncio.run(_server_run(bootstrap, payload, None, warmup)),
        "at_50pct_ceiling": asyncio.run(_server_run(bootstrap, payload, ceiling * 0.5, warmup)),
        "at_90pct_ceiling": asyncio.run(_server_run(bootstrap, payload, ceiling * 0.9, warmup)),
        # The issue's own point: loss at half its 100,000/s target.
        "at_50k_per_s": asyncio.run(_server_run(bootstrap, payload, 50_000, warmup)),
    }


def measure_sustained(
    bootstrap: str,
    runs: int = 20_000,
    rates: tuple[float, ...] = (50_000, 75_000, 100_000),
    count: int = 1_000_000,
) -> dict[str, object]:
    """What the server sustains, not what a short burst shows: ``count`` datagrams paced at
    each rate (1,000,000 at 50,000/s is 20 s), with the server's CPU per accepted datagram."""
    payload = datagrams(count, runs)
    warmup = datagrams(runs, runs, first_seq=0)
    return {
        "datagrams": count,
        "runs": runs,
        **{
            f"at_{int(rate)}_per_s": asyncio.run(_server_run(bootstrap, payload, rate, warmup))
            for rate in rates
        },
    }


def measure_batched(
    bootstrap: str,
    runs: int = 20_000,
    rates: tuple[float, ...] = (50_000, 100_000, 150_000, 200_000),
    count: int = 1_500_000,
) -> dict[str, object]:
    """The agent's protocol version 2 (a tick's samples packed ~12 to a datagram), paced in
    samples/s and sustained (``count`` samples per rate), next to the bare ``recv`` loop on
    the same datagrams and to version 1 at 100,000/s, in the same run."""
    payload = batched_datagrams(count, runs)
    warmup = batched_datagrams(runs, runs, first_seq=0)
    per_datagram = count / len(payload)
    single = datagrams(count, runs)
    single_warmup = datagrams(runs, runs, first_seq=0)
    bare = bare_ceiling(payload)

    def run(rate: float) -> dict[str, float]:
        return asyncio.run(
            _server_run(bootstrap, payload, rate / per_datagram, warmup, count, runs)
        )

    return {
        "samples": count,
        "runs": runs,
        "samples_per_datagram": per_datagram,
        "bare_recv_datagrams_per_s": bare,
        "bare_recv_samples_per_s": bare * per_datagram,
        **{f"at_{int(rate)}_samples_per_s": run(rate) for rate in rates},
        "version_1_at_100000_per_s": asyncio.run(
            _server_run(bootstrap, single, 100_000, single_warmup)
        ),
    }
