"""Meter server logic with a fake Kafka sink: counting, replay windows, routing, buffering."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import replace

import pytest

from app.events import NodeEvent, UsageSample
from app.kafka import partition_for
from app.settings import Settings
from infra import devstack
from meter.batch_protocol import BATCH_VERSION, encode_batches
from meter.protocol import DropReason, MessageKind, MeterMessage, encode
from meter.server import DRAIN_MESSAGES, MeterServer, receive_buffer

SECRET = b"server-unit-secret"
ADDR = ("127.0.0.1", 40000)


class FakeSink:
    PARTITIONS = 3

    def __init__(self) -> None:
        # (topic, [(key or partition, value)]): keyed records, or packed ones by partition
        self.published: list[tuple[str, list[tuple[str | int, bytes]]]] = []
        self.fail_topics: set[str] = set()

    async def publish(self, topic: str, messages: list[tuple[str, bytes]]) -> None:
        if topic in self.fail_topics:
            raise ConnectionError("Kafka away")
        self.published.append((topic, list(messages)))

    async def partition_count(self, topic: str) -> int:
        if topic in self.fail_topics:
            raise ConnectionError("Kafka away")
        return self.PARTITIONS

    async def publish_to(self, topic: str, records: list[tuple[int, bytes]]) -> None:
        assert all(0 <= partition < self.PARTITIONS for partition, _ in records)
        await self.publish(topic, records)  # type: ignore[arg-type]

    async def close(self) -> None:
        pass

    def records(self, topic: str) -> list[tuple[str | int, bytes]]:
        """One entry per sample: packed records (one JSON line per sample) are split."""
        return [
            (key, line)
            for t, batch in self.published
            if t == topic
            for key, value in batch
            for line in value.split(b"\n")
        ]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(**meter: object) -> Settings:
    return Settings(
        kafka={"metrics_topic": "m", "node_events_topic": "e"},
        meter={"secret": SECRET.decode(), "flush_count": 1000, **meter},
    )  # type: ignore[arg-type]


def server(sink: FakeSink | None = None, **options: object) -> MeterServer:
    s = settings()
    return MeterServer(s.meter, s.kafka, sink or FakeSink(), **options)  # type: ignore[arg-type]


def sample(seq: int, run_id: str = "run-1", node: str = "n1", **fields: object) -> MeterMessage:
    base = MeterMessage(
        kind=MessageKind.SAMPLE, node=node, run_id=run_id, tenant="t@example.com", seq=seq,
        time_unix_ns=1_800_000_000_000_000_000 + seq, cpu_ns=10 * seq, memory_bytes=4096,
        memory_byte_ms=100 * seq,
    )  # fmt: skip
    return replace(base, **fields)  # type: ignore[arg-type]


def feed(target: MeterServer, *messages: MeterMessage | bytes, secret: bytes = SECRET) -> None:
    for item in messages:
        data = item if isinstance(item, bytes) else encode(item, secret)
        target.datagram_received(data, ADDR)


def assert_balanced(target: MeterServer) -> None:
    c = target.counters
    assert c.received == c.accepted + sum(c.dropped.values()) + c.dropped_buffer_full


async def test_every_datagram_is_counted_once_by_outcome() -> None:
    sink = FakeSink()
    target = server(sink)
    valid = [encode(sample(seq), SECRET) for seq in range(1, 6)]
    wrong_version = bytearray(valid[0])
    wrong_version[2] = 9
    feed(target, *valid)
    feed(
        target,
        valid[1],  # replayed: below the newest accepted
        valid[4],  # duplicate: the newest accepted again
        encode(sample(6), b"forged-with-another-key"),
        b"FM" + bytes(1500),  # oversized
        valid[0][:40],  # truncated
        b"GET / HTTP/1.1\r\n\r\n",  # bad magic
        bytes(wrong_version),
        valid[0] + b"x",  # malformed: trailing byte
    )  # fmt: skip
    c = target.counters
    assert (c.received, c.accepted) == (13, 5)
    assert c.dropped == {
        "oversized": 1, "truncated": 1, "bad_magic": 1, "bad_version": 1, "bad_kind": 0,
        "malformed": 1, "bad_signature": 1, "replayed": 1, "duplicate": 1,
    }  # fmt: skip
    assert_balanced(target)
    await target.flush()
    assert c.produced == 5
    assert [UsageSample.model_validate_json(v).seq for _, v in sink.records("m")] == [1, 2, 3, 4, 5]


async def test_a_batch_counts_its_samples_each_checked_against_its_window() -> None:
    sink = FakeSink()
    target = server(sink)
    feed(target, sample(5, run_id="run-2"))  # run-2 is at seq 5 already
    (batch,) = encode_batches([sample(1), sample(2, run_id="run-2"), sample(5, run_id="run-2"),
                               sample(6, run_id="run-2"), sample(1, run_id="run-3")], SECRET)  # fmt: skip
    forged = encode_batches([sample(2), sample(7, run_id="run-2")], b"another-key")[0]
    feed(target, batch, forged, batch[:-1])
    c = target.counters
    # 1 + 5 messages read, 2 datagrams dropped whole (1 message each)
    assert (c.datagrams, c.received, c.accepted) == (4, 8, 4)
    assert (c.dropped["replayed"], c.dropped["duplicate"]) == (1, 1)
    assert (c.dropped["bad_signature"], c.dropped["truncated"]) == (1, 1)
    assert_balanced(target)
    await target.flush()
    runs = [(s.run_id, s.seq) for s in map(UsageSample.model_validate_json,
                                             (v for _, v in sink.records("m")))]  # fmt: skip
    assert sorted(runs) == [("run-1", 1), ("run-2", 5), ("run-2", 6), ("run-3", 1)]


async def test_samples_and_lifecycle_are_routed_by_kind() -> None:
    sink = FakeSink()
    target = server(sink)
    started = sample(1, kind=MessageKind.STARTED, cpu_ns=0, memory_byte_ms=0)
    final = sample(5, final=True)
    exited = sample(6, kind=MessageKind.EXITED, exit_code=137, final=True)
    feed(target, started, sample(2), final, exited)
    await target.flush()
    metrics = [UsageSample.model_validate_json(v) for _, v in sink.records("m")]
    events = [NodeEvent.model_validate_json(v) for _, v in sink.records("e")]
    assert {k for k, _ in sink.records("e")} == {"run-1"}
    assert {k for k, _ in sink.records("m")} == {partition_for("run-1", FakeSink.PARTITIONS)}
    assert [(s.seq, s.final, s.event_id) for s in metrics] == [
        (2, False, "run-1:n1:2"), (5, True, "run-1:n1:5"),
    ]  # fmt: skip
    assert metrics[1].cpu_ns == 50 and metrics[1].memory_byte_ms == 500
    assert [(e.type, e.exit_code) for e in events] == [
        ("container.started", None), ("container.exited", 137),
    ]  # fmt: skip


async def test_a_flush_packs_all_runs_of_a_partition_into_few_records_in_order() -> None:
    """At the agent's 4 Hz a flush holds about one sample per run: records are packed per
    partition (Kafka's and the ingestor's cost is per record), each run's samples in the
    partition its id hashes to (as a record keyed by it would be), in arrival order."""
    sink = FakeSink()
    target = server(sink)
    runs = [f"run-{i}" for i in range(600)]
    feed(target, *(sample(seq, run_id=run) for seq in (1, 2) for run in runs))
    await target.flush()
    ((topic, records),) = sink.published
    assert topic == "m" and len(records) <= FakeSink.PARTITIONS * 2  # ≤ 256 lines a record
    seqs: dict[str, list[int]] = {}
    for partition, value in records:
        for line in value.split(b"\n"):
            parsed = UsageSample.model_validate_json(line)
            assert partition == partition_for(parsed.run_id, FakeSink.PARTITIONS)
            seqs.setdefault(parsed.run_id, []).append(parsed.seq)
    assert seqs == {run: [1, 2] for run in runs}
    assert target.counters.produced == 1200


async def test_replay_windows_are_per_node_and_run() -> None:
    target = server()
    feed(target, sample(10), sample(10, node="n2"), sample(10, run_id="run-2"))
    feed(target, sample(9, node="n2"), sample(10, run_id="run-2"), sample(11))
    assert target.counters.accepted == 4
    assert target.counters.dropped[DropReason.REPLAYED] == 1
    assert target.counters.dropped[DropReason.DUPLICATE] == 1


async def test_final_repeats_are_duplicates_and_the_final_survives_an_earlier_exited() -> None:
    """The agent sends its FINAL sample three times (same bytes) and an EXITED with a
    higher seq; the network may deliver the EXITED first. The FINAL must still land, its
    copies count as duplicates, and only a lower seq counts as a replay."""
    sink = FakeSink()
    target = server(sink)
    final = encode(sample(5, final=True), SECRET)
    exited = sample(6, kind=MessageKind.EXITED, exit_code=0, final=True)
    feed(target, sample(4), exited, final, final, final, sample(3))
    c = target.counters
    assert c.accepted == 3
    assert (c.dropped["duplicate"], c.dropped["replayed"]) == (2, 1)
    await target.flush()
    metrics = [UsageSample.model_validate_json(v) for _, v in sink.records("m")]
    assert [(s.seq, s.final) for s in metrics] == [(4, False), (5, True)]


async def test_windows_are_forgotten_after_the_ttl() -> None:
    clock = Clock()
    target = server(run_ttl_s=600, monotonic=clock)
    feed(target, sample(5, run_id="a"), sample(5, run_id="b"))
    clock.now += 300
    feed(target, sample(6, run_id="b"))  # b heard from again
    clock.now += 301
    feed(target, sample(1, run_id="c"))  # a is 601 s silent: forgotten
    feed(target, sample(5, run_id="a"), sample(6, run_id="b"), sample(4, run_id="b"))
    assert target.counters.accepted == 5  # a's replay passes once its window is gone
    assert target.counters.dropped[DropReason.DUPLICATE] == 1  # b's window was kept
    assert target.counters.dropped[DropReason.REPLAYED] == 1


async def test_windows_beyond_the_cap_go_least_recently_heard_from_first() -> None:
    target = server(max_runs=2)
    feed(target, sample(5, run_id="a"), sample(5, run_id="b"), sample(6, run_id="a"))
    feed(target, sample(1, run_id="c"))  # evicts b, the least recently heard from
    feed(target, sample(5, run_id="a"), sample(5, run_id="b"))
    assert target.counters.dropped[DropReason.REPLAYED] == 1  # a's, not b's
    assert target.counters.accepted == 5


async def test_full_buffer_drops_and_counts_without_blocking() -> None:
    sink = FakeSink()
    target = server(sink, max_buffer=3)
    feed(target, *(sample(seq) for seq in range(1, 6)))
    assert target.counters.accepted == 3 and target.counters.dropped_buffer_full == 2
    assert_balanced(target)
    await target.flush()
    feed(target, sample(4))  # not accepted before, so not a replay now
    assert target.counters.accepted == 4


async def test_kafka_failure_keeps_records_and_resends_only_the_unsent() -> None:
    sink = FakeSink()
    sink.fail_topics = {"e"}
    target = server(sink)
    feed(target, sample(1), sample(2), sample(3, kind=MessageKind.STARTED))
    with pytest.raises(ConnectionError):
        await target.flush()
    assert target.counters.produce_failures == 1 and target.buffered == 1  # the samples went
    sink.fail_topics = set()
    await target.flush()
    assert len(sink.records("m")) == 2 and len(sink.records("e")) == 1  # no duplicates
    assert target.counters.produced == 3 and target.buffered == 0


async def test_order_per_run_survives_a_failed_flush() -> None:
    sink = FakeSink()
    sink.fail_topics = {"m"}
    target = server(sink)
    feed(target, *(sample(seq) for seq in range(1, 4)))
    with pytest.raises(ConnectionError):
        await target.flush()
    feed(target, sample(4))
    sink.fail_topics = set()
    await target.flush()
    assert [UsageSample.model_validate_json(v).seq for _, v in sink.records("m")] == [1, 2, 3, 4]


async def test_flusher_produces_on_count_and_on_wait() -> None:
    sink = FakeSink()
    s = settings(
        port=devstack.free_port(), metrics_port=devstack.free_port(), flush_count=3, flush_ms=5000
    )
    target = MeterServer(s.meter, s.kafka, sink)
    await target.start()
    try:
        feed(target, sample(1), sample(2))
        await asyncio.sleep(0.1)
        assert target.counters.produced == 0  # below the count, before the wait
        feed(target, sample(3))
        await asyncio.sleep(0.1)
        assert target.counters.produced == 3  # count reached
    finally:
        await target.stop()
    s = settings(port=devstack.free_port(), metrics_port=devstack.free_port(), flush_ms=50)
    target = MeterServer(s.meter, s.kafka, sink)
    await target.start()
    try:
        feed(target, sample(1, run_id="w"))
        await asyncio.sleep(0.3)
        assert target.counters.produced == 1  # the wait elapsed
    finally:
        await target.stop()


async def test_stop_flushes_what_is_buffered() -> None:
    sink = FakeSink()
    s = settings(port=devstack.free_port(), metrics_port=devstack.free_port(), flush_ms=60_000)
    target = MeterServer(s.meter, s.kafka, sink)
    await target.start()
    feed(target, sample(1), sample(2))
    await target.stop()
    assert len(sink.records("m")) == 2


async def http_get(port: int, request: bytes) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return head.decode(), body


@pytest.mark.parametrize("entries", [0, 1, 13, 255])
def test_a_wake_up_reads_a_bounded_number_of_messages(entries: int) -> None:
    """However many entries datagrams claim (a flood saying 0 included), one wake-up reads
    about DRAIN_MESSAGES messages and leaves the rest for the next: the flusher gets turns."""
    target = server()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        receive_buffer(receiver)
        target._sock = receiver  # the server's own socket, without its event loop
        claimed = b"FM" + bytes((BATCH_VERSION, entries, 1)) + bytes(40)  # forged framing
        for _ in range(1200):
            sender.sendto(claimed, receiver.getsockname())
        target._drain()
        read = target.counters.datagrams
        assert read == min(1200, -(-DRAIN_MESSAGES // max(entries, 1)))
        target._drain()
        assert target.counters.datagrams > read  # the rest waited in the kernel
        assert_balanced(target)


async def test_counters_over_udp_and_http() -> None:
    s = settings(port=devstack.free_port(), metrics_port=devstack.free_port())
    target = MeterServer(s.meter, s.kafka, FakeSink())
    await target.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for data in (encode(sample(2), SECRET), encode(sample(1), SECRET), b"junk"):
                sock.sendto(data, ("127.0.0.1", s.meter.port))
        for _ in range(50):
            if target.counters.received == 3:
                break
            await asyncio.sleep(0.02)
        port = s.meter.metrics_port
        head, body = await http_get(port, b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        assert head.startswith("HTTP/1.0 200") and "text/plain" in head
        text = body.decode()
        assert 'faas_meter_messages_total{outcome="accepted"} 1' in text
        assert 'faas_meter_dropped_total{reason="replayed"} 1' in text
        assert 'faas_meter_dropped_total{reason="bad_magic"} 1' in text
        for request in (
            b"GET /metrics HTTP/1.1\r\nAccept: application/json\r\n\r\n",
            b"GET /metrics.json HTTP/1.0\r\n\r\n",
        ):
            head, body = await http_get(port, request)
            counters = json.loads(body)
            assert counters["received"] == 3 and counters["accepted"] == 1
            assert counters["dropped"]["replayed"] == 1
        head, _ = await http_get(port, b"GET /other HTTP/1.0\r\n\r\n")
        assert head.startswith("HTTP/1.0 404")
        head, _ = await http_get(port, b"POST /metrics HTTP/1.0\r\n\r\n")
        assert head.startswith("HTTP/1.0 405")
    finally:
        await target.stop()


def test_constructor_rejects_missing_dependencies() -> None:
    s = settings()
    for args in (
        (None, s.kafka, FakeSink()),
        (s.meter, None, FakeSink()),
        (s.meter, s.kafka, None),
    ):
        with pytest.raises(ValueError):
            MeterServer(*args)  # type: ignore[arg-type]
