"""Meter server: authenticated UDP datagrams → Kafka, batched, keyed by run id.

Every datagram is counted once: accepted, or dropped with its ``DropReason``. Samples go
to ``faas.metrics`` as ``UsageSample`` JSON, agent lifecycle observations to
``faas.node-events``. The receive path never awaits Kafka: accepted records wait in a
bounded buffer that a flusher drains on count or wait, whichever first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections import OrderedDict, deque
from itertools import groupby

from app.events import EventPublisher
from app.settings import KafkaSettings, MeterSettings
from meter.protocol import DecodeError, DropReason, decode
from meter.records import MeterCounters, to_record

log = logging.getLogger(__name__)
MAX_BUFFER = 200_000  # records held while Kafka is unreachable
RECEIVE_BUFFER = 8 * 1024 * 1024
MAX_TRACKED_RUNS = 100_000  # replay windows kept; the least recently heard-from go first


class MeterServer(asyncio.DatagramProtocol):
    def __init__(self, meter: MeterSettings, kafka: KafkaSettings, sink: EventPublisher) -> None:
        if meter is None or kafka is None or sink is None:
            raise ValueError("meter, kafka and sink are required")
        self._meter = meter
        self._kafka = kafka
        self._sink = sink
        self._secret = meter.secret.get_secret_value().encode()
        self.counters = MeterCounters()
        self._highest_seq: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._buffer: deque[tuple[str, str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._http: asyncio.Server | None = None

    # -- receive path (synchronous: never waits on Kafka) ----------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.counters.received += 1
        try:
            message = decode(data, self._secret)
        except DecodeError as exc:
            self.counters.dropped[exc.reason.value] += 1
            return
        key = (message.node, message.run_id)
        last = self._highest_seq.get(key)
        if last is not None and message.seq <= last:
            self.counters.dropped[DropReason.REPLAYED.value] += 1
            return
        if len(self._buffer) >= MAX_BUFFER:
            self.counters.dropped_buffer_full += 1
            return
        self._highest_seq[key] = message.seq
        self._highest_seq.move_to_end(key)
        if len(self._highest_seq) > MAX_TRACKED_RUNS:
            self._highest_seq.popitem(last=False)
        self.counters.accepted += 1
        self._buffer.append(
            to_record(message, self._kafka.metrics_topic, self._kafka.node_events_topic)
        )
        if len(self._buffer) >= self._meter.flush_count:
            self._wake.set()

    # -- flusher ---------------------------------------------------------------------------

    async def flush(self) -> None:
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), 5_000))]
            try:
                for topic, records in groupby(batch, key=lambda r: r[0]):
                    chunk = [(key, value) for _, key, value in records]
                    await self._sink.publish(topic, chunk)
                    self.counters.produced += len(chunk)
            except Exception:
                # Put the unsent tail back in front, in order (some of the batch may have
                # gone out: the ingestor's table key makes a resend harmless).
                self._buffer.extendleft(reversed(batch))
                self.counters.produce_failures += 1
                raise

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
                    "meter server: Kafka produce failed (%s); retrying in %.1fs", exc, delay
                )

    async def _log_forever(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            log.info("meter server counters: %s", json.dumps(self.counters.as_dict()))

    # -- counters over HTTP ----------------------------------------------------------------

    async def _serve_metrics(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            path = request.split(b" ")[1] if request.count(b" ") >= 2 else b"/"
            if path.startswith(b"/metrics.json"):
                body, kind = json.dumps(self.counters.as_dict()).encode(), b"application/json"
            elif path.startswith(b"/metrics"):
                body, kind = self.counters.prometheus().encode(), b"text/plain; version=0.0.4"
            else:
                body, kind = b"not found\n", b"text/plain"
            status = b"200 OK" if body != b"not found\n" else b"404 Not Found"
            writer.write(
                b"HTTP/1.0 " + status + b"\r\nContent-Type: " + kind
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )  # fmt: skip
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, log_every_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(self._meter.host, self._meter.port)
        )
        sock = self._transport.get_extra_info("socket")
        with contextlib.suppress(OSError):  # bursts queue in the kernel, not on the floor
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self._http = await asyncio.start_server(
            self._serve_metrics, self._meter.host, self._meter.metrics_port
        )
        self._tasks = [
            asyncio.create_task(self._flush_forever()),
            asyncio.create_task(self._log_forever(log_every_s)),
        ]

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._http is not None:
            self._http.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.flush()
