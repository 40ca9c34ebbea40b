"""Meter agent: samples every function container on this node and sends cumulative
usage to the meter server over UDP.

Per run it keeps the CPU counter (the cgroup's own, cumulative since start) and the
memory integral in byte·ms by the trapezoid rule, integrated here so that a lost datagram
loses nothing. The integral starts at the container's StartedAt: the first reading's
level is carried back to it (the cgroup is read at most one interval after the start).
It does not extrapolate past the last reading; the invoicer closes that gap with the
runtime's finish time. Sequence numbers are ``agent start (ms) << 22 | counter``, so an
agent restart never looks like a replay. If the runtime API is unreachable, known
containers keep being read from their cgroups; if the server is down, datagrams are lost
but the next one carries the whole state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.settings import Settings
from meter.cgroups import CgroupReader, Reading
from meter.discovery import Container, DockerDiscovery
from meter.protocol import MessageKind, MeterMessage, encode

log = logging.getLogger(__name__)
FINAL_REPEATS = 3  # the final datagram is sent on this many ticks (UDP may drop one)


@dataclass
class RunMeter:
    container: Container
    seq_base: int
    started_ns: int
    count: int = 0
    last_ns: int | None = None
    last_memory: int = 0
    doubled_byte_ns: int = 0  # 2·∫memory dt in byte·ns: the trapezoid stays in integers
    cpu_ns: int = 0

    def update(self, reading: Reading, now_ns: int) -> None:
        if self.last_ns is None:
            self.doubled_byte_ns += 2 * reading.memory_bytes * max(0, now_ns - self.started_ns)
        else:
            span = max(0, now_ns - self.last_ns)
            self.doubled_byte_ns += (self.last_memory + reading.memory_bytes) * span
        self.last_ns, self.last_memory, self.cpu_ns = now_ns, reading.memory_bytes, reading.cpu_ns

    def message(
        self, kind: MessageKind, node: str, *, final: bool = False, exit_code: int | None = None
    ) -> MeterMessage:
        self.count += 1
        return MeterMessage(
            kind=kind, node=node, run_id=self.container.run_id, tenant=self.container.tenant,
            seq=self.seq_base + self.count, time_unix_ns=self.last_ns or self.started_ns,
            cpu_ns=self.cpu_ns, memory_bytes=self.last_memory,
            memory_byte_ms=self.doubled_byte_ns // 2_000_000, final=final, exit_code=exit_code,
        )  # fmt: skip


class MeterAgent:
    def __init__(
        self,
        settings: Settings,
        discovery: DockerDiscovery,
        reader: CgroupReader,
        send: Callable[[bytes], None],
        *,
        drop_ratio: float = 0.0,
        clock: Callable[[], int] = time.time_ns,
        seed: int | None = None,
    ) -> None:
        if settings is None or discovery is None or reader is None or send is None:
            raise ValueError("settings, discovery, reader and send are required")
        self._node = settings.meter.node or socket.gethostname()
        self._secret = settings.meter.secret.get_secret_value().encode()
        self._interval_s = settings.meter.interval_ms / 1000
        self._discovery = discovery
        self._reader = reader
        self._send_raw = send
        self._clock = clock
        self._drop_ratio = drop_ratio  # test switch: lose this share of datagrams on purpose
        self._random = random.Random(seed)  # noqa: S311 - a test switch, not security
        self._seq_base = (time.time_ns() // 1_000_000) << 22
        self.runs: dict[str, RunMeter] = {}
        self._finals: list[tuple[bytes, int]] = []
        self.sent = self.dropped_on_purpose = 0
        self._warned_at = 0.0

    def _send(self, message: MeterMessage) -> bytes:
        data = encode(message, self._secret)
        self._transmit(data)
        return data

    def _transmit(self, data: bytes) -> None:
        if self._drop_ratio and self._random.random() < self._drop_ratio:
            self.dropped_on_purpose += 1
            return
        try:
            self._send_raw(data)
            self.sent += 1
        except OSError as exc:  # server down: the next datagram carries the whole state
            self._warn(f"send failed: {exc}")

    def _warn(self, text: str) -> None:
        if time.monotonic() - self._warned_at > 30:
            self._warned_at = time.monotonic()
            log.warning("meter agent: %s", text)

    async def _discover(self) -> list[Container] | None:
        try:
            return await asyncio.to_thread(self._discovery.running)
        except Exception as exc:  # runtime down: keep reading the cgroups we know
            self._warn(f"runtime unreachable: {exc}")
            return None

    async def tick(self) -> None:
        running = await self._discover()
        if running is not None:
            for container in running:
                if container.container_id not in self.runs:
                    await self._track(container)
        alive = None if running is None else {c.container_id for c in running}
        for container_id, meter in list(self.runs.items()):
            reading = self._reader.read(container_id)
            if reading is None or (alive is not None and container_id not in alive):
                await self._finish(container_id, meter)
                continue
            meter.update(reading, self._clock())
            self._send(meter.message(MessageKind.SAMPLE, self._node))
        self._finals = [(data, left - 1) for data, left in self._finals if left > 1]
        for data, _ in self._finals:
            self._transmit(data)

    async def _track(self, container: Container) -> None:
        try:
            started = await asyncio.to_thread(self._discovery.started_at, container.container_id)
        except Exception:
            started = None
        started_ns = int(started.timestamp() * 1e9) if started else self._clock()
        meter = RunMeter(container, self._seq_base, started_ns)
        self.runs[container.container_id] = meter
        self._send(meter.message(MessageKind.STARTED, self._node))

    async def _finish(self, container_id: str, meter: RunMeter) -> None:
        del self.runs[container_id]
        if meter.last_ns is None:
            return  # never read: nothing measured to report
        final = self._send(meter.message(MessageKind.SAMPLE, self._node, final=True))
        self._finals.append((final, FINAL_REPEATS))
        try:
            code = await asyncio.to_thread(self._discovery.exit_code, container_id)
        except Exception:
            code = None
        if code is not None:
            self._send(meter.message(MessageKind.EXITED, self._node, exit_code=code))

    async def run_forever(self) -> None:
        next_at = time.monotonic()
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._warn(f"tick failed: {exc}")
            next_at += self._interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - self._interval_s)


def udp_sender(host: str, port: int) -> Callable[[bytes], None]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    target = (host, port)

    def send(data: bytes) -> None:
        sock.sendto(data, target)

    return send
