"""Meter server: authenticated UDP datagrams → Kafka, batched, keyed by run id
(``python -m meter.server``).

Every datagram is counted once: accepted, or dropped with its ``DropReason`` (or as
``buffer_full``), so ``received == accepted + Σ dropped + dropped_buffer_full``. Samples go
to ``faas.metrics`` as ``UsageSample`` JSON, agent lifecycle observations to
``faas.node-events`` as ``NodeEvent``. The receive path never awaits Kafka: accepted
records wait in a bounded buffer that a flusher drains on count or wait, whichever
first, and keeps (retrying with back-off) while Kafka is away.

Replays: per ``(node, run_id)`` and topic the highest accepted seq is kept (two agents
may report one run, each with its own sequence; samples and lifecycle events are
separate streams, so an EXITED overtaking the FINAL sample in the network cannot make the
FINAL look stale); the same seq again is a DUPLICATE (the agent repeats its FINAL on
purpose), a lower one is REPLAYED. Windows not heard from for ``run_ttl_s`` are forgotten,
at most ``max_runs`` are kept (least recently heard-from go first): a replay older than
that is accepted but harmless, because the counters are cumulative and the ingestor's key
``(run_id, node, seq)`` deduplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from app.events import EventPublisher
from app.kafka import KafkaEventPublisher, ensure_topics, partition_for
from app.settings import KafkaSettings, MeterSettings, Settings
from meter.batch_protocol import BATCH_VERSION_BYTE
from meter.protocol import MAX_DATAGRAM_BYTES, DecodeError, DropReason
from meter.record_decoder import RecordDecoder
from meter.records import MeterCounters, pack_by_partition

log = logging.getLogger(__name__)
MAX_BUFFER = 200_000  # records held while Kafka is unreachable
MAX_TRACKED_RUNS = 100_000  # replay windows kept
RUN_TTL_S = 600.0  # a window not heard from for this long is forgotten
FLUSH_BATCH = 20_000  # records per publish call
STOP_FLUSH_S = 10.0  # how long stop() tries to hand the buffer to Kafka
RECEIVE_BUFFER = 32 * 1024 * 1024  # bursts (a flush, a GC pause) queue in the kernel
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux: beyond rmem_max, if allowed
DRAIN_MESSAGES = 512  # messages read per wake-up before the loop serves other tasks
DROP_LOG_EVERY_S = 10.0


def receive_buffer(sock: socket.socket, size: int = RECEIVE_BUFFER) -> int:
    """Asks for a ``size``-byte receive buffer: SO_RCVBUFFORCE where permitted (root or
    CAP_NET_ADMIN), else SO_RCVBUF, which the kernel caps at ``net.core.rmem_max``. Returns
    what the socket got (Linux reports twice the asked size: its bookkeeping included)."""
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            break
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2


class MeterSink(EventPublisher, Protocol):
    """Where accepted records go: Kafka (``KafkaEventPublisher``), a fake in unit tests."""

    async def partition_count(self, topic: str) -> int: ...

    async def publish_to(self, topic: str, records: list[tuple[int, bytes]]) -> None: ...


class MeterServer(asyncio.DatagramProtocol):
    """UDP receiver, replay filter, bounded buffer and Kafka flusher, plus ``/metrics``."""

    def __init__(
        self,
        meter: MeterSettings,
        kafka: KafkaSettings,
        sink: MeterSink,
        *,
        max_buffer: int = MAX_BUFFER,
        max_runs: int = MAX_TRACKED_RUNS,
        run_ttl_s: float = RUN_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if meter is None or kafka is None or sink is None or monotonic is None:
            raise ValueError("meter, kafka, sink and monotonic are required")
        if max_buffer < 1 or max_runs < 1 or run_ttl_s <= 0:
            raise ValueError("max_buffer, max_runs and run_ttl_s must be positive")
        self._meter, self._kafka, self._sink = meter, kafka, sink
        self._decoder = RecordDecoder(
            meter.secret.get_secret_value().encode(), kafka.metrics_topic, kafka.node_events_topic
        )
        self._flush_count = meter.flush_count
        self._max_buffer, self._max_runs, self._ttl_s = max_buffer, max_runs, run_ttl_s
        self._monotonic = monotonic
        self._counters = MeterCounters()
        # (node, run_id, topic) -> (highest seq accepted, when), least recently heard-from first
        self._windows: OrderedDict[tuple[str, str, str], tuple[int, float]] = OrderedDict()
        self._forgot_at = float("-inf")
        # Accepted, not yet produced: samples as (run id, JSON), lifecycle (topic, key, JSON)
        self._samples: list[tuple[str, bytes]] = []
        self._events: list[tuple[str, str, bytes]] = []
        self._partitions: dict[str, int] = {}  # run id -> metrics partition (one count)
        self._partition_count = 0
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._logged_drop: dict[DropReason, float] = {}
        self._sources_until = float("-inf")  # read source addresses until then (drops seen)
        self._tasks: list[asyncio.Task[None]] = []
        self._sock: socket.socket | None = None
        self._http: asyncio.Server | None = None

    @property
    def counters(self) -> MeterCounters:
        return self._counters

    @property
    def buffered(self) -> int:
        """Accepted records not yet produced to Kafka."""
        return len(self._samples) + len(self._events)

    @property
    def udp_port(self) -> int | None:
        return None if self._sock is None else int(self._sock.getsockname()[1])

    # -- receive path (synchronous: never waits on Kafka) ----------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self._accept(((data, addr),), 1)

    def _accept(self, datagrams: Iterable[tuple[bytes, object]], count: int) -> None:
        """Decode, replay-check and buffer ``count`` datagrams with their sources (None when
        not read): one flat loop with everything it touches in locals, counters added once
        per batch. Counters count messages: a version-2 datagram holds several (each
        replay-checked on its own); a datagram dropped whole counts as one."""
        counters = self._counters
        decoder = self._decoder
        record, records, metrics_topic = decoder.record, decoder.records, self._kafka.metrics_topic
        windows = self._windows
        move_to_end = windows.move_to_end
        samples, events = self._samples, self._events
        room = self._max_buffer - len(samples) - len(events)
        now = self._monotonic()
        accepted = messages = 0
        for data, addr in datagrams:
            try:
                decoded = records(data) if data[2:3] == BATCH_VERSION_BYTE else (record(data),)
            except DecodeError as exc:
                self._drop(exc.reason, addr, exc.detail)
                messages += 1
                continue
            messages += len(decoded)
            for key, seq, topic, record_key, value in decoded:
                window = windows.get(key)
                if window is not None and seq <= window[0]:
                    if seq == window[0]:
                        self._drop(DropReason.DUPLICATE, addr, f"seq {seq} again")
                    else:
                        self._drop(DropReason.REPLAYED, addr, f"seq {seq} < {window[0]}")
                    continue
                if accepted >= room:
                    counters.dropped_buffer_full += 1  # not accepted: the window stays put
                    continue
                windows[key] = (seq, now)
                move_to_end(key)
                accepted += 1
                if topic == metrics_topic:
                    samples.append((record_key, value))
                else:
                    events.append((topic, record_key, value))
        counters.datagrams += count
        counters.received += messages
        counters.accepted += accepted
        if len(windows) > self._max_runs or now - self._forgot_at >= 1.0:
            self._forget_windows(now)
        if len(samples) + len(events) >= self._flush_count:
            self._wake.set()

    def _forget_windows(self, now: float) -> None:
        self._forgot_at = now  # the TTL is looked at once a second at most: hot path
        windows = self._windows
        while len(windows) > self._max_runs:
            windows.popitem(last=False)
        while windows and now - next(iter(windows.values()))[1] > self._ttl_s:
            windows.popitem(last=False)

    def _drop(self, reason: DropReason, addr: object, detail: str) -> None:
        self._counters.dropped[reason.value] += 1
        if reason is DropReason.REPLAYED or reason is DropReason.DUPLICATE:
            return  # expected in small numbers, harmless in large ones (counted)
        now = self._monotonic()
        if addr is None:  # sources are not read while nothing is dropped (recv is cheaper)
            self._sources_until = now + DROP_LOG_EVERY_S
        if now - self._logged_drop.get(reason, -DROP_LOG_EVERY_S) >= DROP_LOG_EVERY_S:
            self._logged_drop[reason] = now  # one line per reason per period, with a source
            source = "a source not read yet (read for the next 10 s)" if addr is None else addr
            log.warning("meter server: dropped %s datagram from %s: %s", reason, source, detail)

    def error_received(self, exc: Exception) -> None:
        log.debug("meter server: UDP error %s", exc)

    def _drain(self) -> None:
        # Many datagrams per wake-up: asyncio's own datagram transport reads one per loop
        # iteration, which caps a server at ~11k datagrams/s; this reaches the decoder's pace.
        # At most ~DRAIN_MESSAGES a wake-up (a version-2 datagram says in byte 3 how many it
        # holds): 512 datagrams of 13 samples held the loop ~50 ms, the Kafka client got a
        # turn that rarely, and at 200,000 samples/s offered producing collapsed.
        # recv, not recvfrom, unless something was dropped lately: the source address is
        # only for the drop log, and recvfrom costs ~0.7 µs more a datagram (~10 %).
        sock, size = self._sock, MAX_DATAGRAM_BYTES + 1  # larger: OVERSIZED
        assert sock is not None
        with_sources = self._monotonic() < self._sources_until
        receive: Callable[[int], Any] = sock.recvfrom if with_sources else sock.recv
        datagrams: list[Any] = []
        append = datagrams.append
        messages = 0
        try:
            while messages < DRAIN_MESSAGES:
                received = receive(size)
                append(received)
                data: bytes = received[0] if with_sources else received
                # at least 1: a flood claiming 0 entries must not keep the loop here
                messages += (
                    (data[3] or 1) if data[2:3] == BATCH_VERSION_BYTE and len(data) > 3 else 1
                )
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self.error_received(exc)
        if datagrams:
            batch = datagrams if with_sources else zip(datagrams, itertools.repeat(None))
            self._accept(batch, len(datagrams))

    # -- flusher ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Produce everything buffered; on failure the unsent records go back in front."""
        async with self._flush_lock:  # one flush at a time keeps each run's records in order
            while self._samples or self._events:
                samples, self._samples = self._samples, []
                events, self._events = self._events, []
                try:
                    while samples:  # FLUSH_BATCH at a time: a backlog goes out in pieces
                        chunk = samples[:FLUSH_BATCH]
                        metrics = self._kafka.metrics_topic
                        packed = pack_by_partition(chunk, await self._partition_of(metrics))
                        await self._sink.publish_to(metrics, packed)
                        del samples[:FLUSH_BATCH]
                        self._counters.produced += len(chunk)
                    while events:  # lifecycle: few, keyed by run id, one topic in practice
                        topic = events[0][0]
                        sending: list[tuple[str, str, bytes]] = []
                        rest: list[tuple[str, str, bytes]] = []
                        for event in events:
                            mine = event[0] == topic and len(sending) < FLUSH_BATCH
                            (sending if mine else rest).append(event)
                        await self._sink.publish(topic, [(k, v) for _, k, v in sending])
                        events = rest
                        self._counters.produced += len(sending)
                except Exception:
                    self._samples[:0] = samples
                    self._events[:0] = events
                    self._counters.produce_failures += 1
                    raise

    async def _partition_of(self, topic: str) -> Callable[[str], int]:
        """Run id → partition, as Kafka's default partitioner would place a record keyed by
        it; remembered per run (the hash costs more than a look-up)."""
        count = await self._sink.partition_count(topic)
        if count != self._partition_count or len(self._partitions) > MAX_TRACKED_RUNS:
            self._partitions, self._partition_count = {}, count
        known = self._partitions

        def partition_of(run_id: str) -> int:
            partition = known.get(run_id)
            if partition is None:
                partition = known[run_id] = partition_for(run_id, count)
            return partition

        return partition_of

    async def _flush_forever(self) -> None:
        delay = self._meter.flush_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()
            try:
                await self.flush()
                delay = self._meter.flush_ms / 1000
            except Exception as exc:
                delay = min(max(delay * 2, 0.5), 10.0)
                log.warning(
                    "meter server: Kafka produce failed (%r); %d records wait, retry in %.1fs",
                    exc, self.buffered, delay,
                )  # fmt: skip

    async def _log_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            log.info("meter server counters: %s", json.dumps(self._counters.as_dict()))

    # -- counters over HTTP ----------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await asyncio.wait_for(reader.readline(), timeout=5)).decode("latin-1")
            accept = ""
            for _ in range(100):  # read the headers, so closing does not reset the connection
                line = (await asyncio.wait_for(reader.readline(), timeout=5)).decode("latin-1")
                if not line.strip():
                    break
                if line.lower().startswith("accept:"):
                    accept = line.lower()
            method, _, rest = request.partition(" ")
            path = rest.partition(" ")[0]
            status, kind, body = self._http_response(method, path, accept)
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _http_response(self, method: str, path: str, accept: str) -> tuple[str, str, bytes]:
        route, _, query = path.partition("?")
        if route not in ("/metrics", "/metrics.json"):
            return "404 Not Found", "text/plain", b"not found\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if route == "/metrics.json" or "format=json" in query or "application/json" in accept:
            body = {**self._counters.as_dict(), "buffered": self.buffered}
            return "200 OK", "application/json", json.dumps(body).encode()
        text = self._counters.prometheus() + (
            "# TYPE faas_meter_buffered_records gauge\n"
            f"faas_meter_buffered_records {self.buffered}\n"
        )
        return "200 OK", "text/plain; version=0.0.4", text.encode()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, log_every_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (
            await loop.getaddrinfo(self._meter.host, self._meter.port, type=socket.SOCK_DGRAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            buffered = receive_buffer(sock)
            if buffered < RECEIVE_BUFFER:
                log.info(
                    "meter server: UDP receive buffer %d bytes (asked %d; raise "
                    "net.core.rmem_max or grant CAP_NET_ADMIN to absorb longer bursts)",
                    buffered, RECEIVE_BUFFER,
                )  # fmt: skip
            sock.bind(address)
            sock.setblocking(False)
            self._http = await asyncio.start_server(
                self._serve_http, self._meter.host, self._meter.metrics_port
            )
        except OSError:
            sock.close()
            raise
        self._sock = sock
        loop.add_reader(sock.fileno(), self._drain)
        self._tasks = [
            asyncio.create_task(self._flush_forever()),
            asyncio.create_task(self._log_forever(log_every_s)),
        ]

    async def stop(self) -> None:
        """Stop receiving, then hand what is buffered to Kafka (for up to 10 s)."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
        if self._http is not None:
            self._http.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self.flush(), timeout=STOP_FLUSH_S)
        except Exception as exc:
            log.warning("meter server: %d records not produced at stop (%r)", self.buffered, exc)
        log.info("meter server stopped: %s", json.dumps(self._counters.as_dict()))


async def run_server(settings: Settings) -> None:
    """Run the server against Kafka until SIGTERM or SIGINT."""
    try:
        await asyncio.wait_for(ensure_topics(settings.kafka), timeout=15)
    except Exception as exc:  # the flusher keeps retrying while Kafka is away
        log.warning("meter server: cannot ensure topics yet (%r)", exc)
    publisher = KafkaEventPublisher(
        settings.kafka, max_batch_bytes=settings.meter.produce_batch_bytes
    )
    server = MeterServer(settings.meter, settings.kafka, publisher)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "meter server on udp://%s:%s (max %d-byte datagrams), counters on http://%s:%s/metrics",
        settings.meter.host, settings.meter.port, MAX_DATAGRAM_BYTES,
        settings.meter.host, settings.meter.metrics_port,
    )  # fmt: skip
    try:
        await stop.wait()
    finally:
        await server.stop()
        await publisher.close()


def _summary() -> str:
    return (__doc__ or "").split("\n\n")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meter.server", description=_summary())
    parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )  # fmt: skip
    asyncio.run(run_server(Settings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
