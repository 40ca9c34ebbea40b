"""Meter agent logic with fakes: integration math, sequence numbers, end of a run, loss."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from datetime import UTC, datetime
from fractions import Fraction

import pytest

from app.settings import Settings
from meter.agent import FINAL_SENDS, SEQ_EPOCH_SHIFT, MeterAgent
from meter.batch_protocol import decode_datagram
from meter.cgroups import Reading
from meter.discovery import Container, Described
from meter.protocol import MessageKind, MeterMessage, decode

SECRET = "agent-unit-secret"
T0 = 1_800_000_000_000_000_000  # Unix ns, 2027-01-15T08:00:00Z
MS = 1_000_000
C1 = Container("c1" * 32, "run-1", "alice@example.com")
C2 = Container("c2" * 32, "run-2", "bob@example.com")


class FakeDiscovery:
    def __init__(self) -> None:
        self.containers: list[Container] = []
        self.starts: dict[str, datetime] = {}
        self.codes: dict[str, int] = {}
        self.fail = False
        self.calls = 0
        self.exited: dict[str, Container] = {}  # inspectable after exit, until removed
        self.foreign: set[str] = set()  # containers without a run id label
        self.described: list[str] = []

    def _check(self) -> None:
        self.calls += 1
        if self.fail:
            raise ConnectionError("runtime socket gone")

    def running(self) -> list[Container]:
        self._check()
        return list(self.containers)

    def started_at(self, container_id: str) -> datetime | None:
        self._check()
        return self.starts.get(container_id)

    def exit_code(self, container_id: str) -> int | None:
        self._check()
        return self.codes.get(container_id)

    def describe(self, container_id: str) -> Described | None:
        self._check()
        self.described.append(container_id)
        if container_id in self.foreign:
            return Described(None, None)
        known = {c.container_id: c for c in self.containers} | self.exited
        if container_id not in known:
            return None
        return Described(known[container_id], self.starts.get(container_id))


class FakeReader:
    def __init__(self) -> None:
        self.readings: dict[str, Reading | None] = {}
        self.cgroups: set[str] | None = None  # None: cannot list (the runtime's listing only)

    def read(self, container_id: str) -> Reading | None:
        return self.readings.get(container_id)

    def present(self) -> set[str] | None:
        return None if self.cgroups is None else set(self.cgroups)


class Clock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += int(ms * MS)


def as_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns // 1000 / 1e6, UTC).replace(microsecond=ns // 1000 % 10**6)


class Rig:
    def __init__(self, drop_ratio: float = 0.0, node: str = "node-1") -> None:
        self.settings = Settings(meter={"secret": SECRET, "node": node, "interval_ms": 250})  # type: ignore[arg-type]
        self.discovery = FakeDiscovery()
        self.reader = FakeReader()
        self.sent: list[bytes] = []
        self.clock = Clock()
        self.agent = MeterAgent(
            self.settings, self.discovery, self.reader, self.sent.append, self.clock,
            drop_ratio=drop_ratio, seed=7,
        )  # fmt: skip

    def start(self, container: Container, started_ns: int | None = T0) -> None:
        self.discovery.containers.append(container)
        if started_ns is not None:
            self.discovery.starts[container.container_id] = as_datetime(started_ns)

    def stop(self, container: Container, exit_code: int | None = 0) -> None:
        self.discovery.containers.remove(container)
        self.reader.readings[container.container_id] = None
        if exit_code is not None:
            self.discovery.codes[container.container_id] = exit_code

    async def step(self, ms: float, **readings: Reading | None) -> None:
        """Advance the clock, let discovery run, set readings (by run id), sample."""
        self.clock.advance_ms(ms)
        for container in (C1, C2):
            if container.run_id.replace("-", "_") in readings:
                value = readings[container.run_id.replace("-", "_")]
                self.reader.readings[container.container_id] = value
        await self.agent.discover()
        self.agent.tick()

    def messages(self, run_id: str | None = None) -> list[MeterMessage]:
        return [m for m in self.decoded(self.sent) if run_id is None or m.run_id == run_id]

    @staticmethod
    def decoded(datagrams: list[bytes]) -> list[MeterMessage]:
        """Every message of the datagrams, in order (a version-2 datagram holds several)."""
        return [m for data in datagrams for m in decode_datagram(data, SECRET.encode())]


async def test_memory_is_integrated_by_trapezoid_from_started_at() -> None:
    rig = Rig()
    rig.start(C1)
    await rig.step(100, run_1=Reading(cpu_ns=10, memory_bytes=1000))
    await rig.step(250, run_1=Reading(cpu_ns=30, memory_bytes=3000))
    await rig.step(250, run_1=Reading(cpu_ns=30, memory_bytes=3000))
    started, *samples = rig.messages()
    assert started.kind is MessageKind.STARTED and started.time_unix_ns == T0
    assert (started.cpu_ns, started.memory_byte_ms) == (0, 0)
    # First level carried back 100 ms to StartedAt; then (1000+3000)/2·250; then 3000·250.
    assert [s.memory_byte_ms for s in samples] == [100_000, 600_000, 1_350_000]
    assert [s.cpu_ns for s in samples] == [10, 30, 30]
    assert [s.memory_bytes for s in samples] == [1000, 3000, 3000]
    assert [s.time_unix_ns for s in samples] == [T0 + 100 * MS, T0 + 350 * MS, T0 + 600 * MS]
    assert all(s.kind is MessageKind.SAMPLE and not s.final for s in samples)


async def test_integral_is_exact_in_integers_over_odd_spans() -> None:
    rig = Rig()
    rig.start(C1)
    levels = [1001, 2003, 7, 5_000_000_011, 1, 999_999_937]
    spans_ns = [123_457, 249_999_999, 250_000_001, 17, 333_333_333, 1]
    expected = Fraction(0)
    prev_level, now = None, T0
    for level, span in zip(levels, spans_ns, strict=True):
        rig.clock.now += span
        rig.reader.readings[C1.container_id] = Reading(0, level)
        await rig.agent.discover()
        rig.agent.tick()
        now += span
        if prev_level is None:
            expected += Fraction(level * span)
        else:
            expected += Fraction((prev_level + level) * span, 2)
        prev_level = level
    last = rig.messages()[-1]
    assert last.memory_byte_ms == int(expected / MS)  # byte·ns → byte·ms, floored once


async def test_without_started_at_the_integral_starts_at_first_seen() -> None:
    rig = Rig()
    rig.start(C1, started_ns=None)
    await rig.step(100, run_1=Reading(cpu_ns=5, memory_bytes=4096))
    await rig.step(250, run_1=Reading(cpu_ns=9, memory_bytes=4096))
    started, first, second = rig.messages()
    assert started.time_unix_ns == T0 + 100 * MS  # first seen
    assert first.memory_byte_ms == 0
    assert second.memory_byte_ms == 4096 * 250


async def test_sequence_numbers_increase_per_run_and_survive_a_restart() -> None:
    rig = Rig()
    rig.start(C1)
    rig.start(C2)
    for _ in range(50):
        await rig.step(250, run_1=Reading(1, 1), run_2=Reading(1, 1))
    for run_id in ("run-1", "run-2"):
        seqs = [m.seq for m in rig.messages(run_id)]
        assert seqs == sorted(set(seqs)) and len(seqs) == 51
        assert seqs[0] >= (T0 // MS) << SEQ_EPOCH_SHIFT
    # A new agent process one millisecond later starts above everything sent before.
    restarted = Rig()
    restarted.clock.now = T0 + MS
    restarted.agent = MeterAgent(
        restarted.settings, restarted.discovery, restarted.reader, restarted.sent.append,
        restarted.clock,
    )  # fmt: skip
    restarted.start(C1)
    await restarted.step(250, run_1=Reading(1, 1))
    assert min(m.seq for m in restarted.messages()) > max(m.seq for m in rig.messages())


async def test_exit_sends_the_last_reading_as_final_three_times_then_exited() -> None:
    rig = Rig()
    rig.start(C1)
    await rig.step(100, run_1=Reading(cpu_ns=10, memory_bytes=1000))
    await rig.step(250, run_1=Reading(cpu_ns=50, memory_bytes=2000))
    last_sample = rig.messages()[-1]
    before = len(rig.sent)
    rig.stop(C1, exit_code=3)  # the cgroup is gone; stats of an exited container are empty
    for _ in range(8):
        await rig.step(250)
    tail = rig.sent[before:]
    finals = [data for data in tail if decode(data, SECRET.encode()).kind is MessageKind.SAMPLE]
    assert len(finals) == FINAL_SENDS and len(set(finals)) == 1  # identical bytes
    final = decode(finals[0], SECRET.encode())
    assert final.final and final.seq > last_sample.seq
    assert (final.cpu_ns, final.memory_bytes, final.memory_byte_ms, final.time_unix_ns) == (
        last_sample.cpu_ns, last_sample.memory_bytes, last_sample.memory_byte_ms,
        last_sample.time_unix_ns,
    )  # fmt: skip
    (exited,) = [m for m in rig.messages() if m.kind is MessageKind.EXITED]
    assert exited.exit_code == 3 and exited.final and exited.seq > final.seq
    assert exited.memory_byte_ms == final.memory_byte_ms
    assert not rig.agent.runs


async def test_final_repeats_are_spread_over_time() -> None:
    rig = Rig()
    rig.start(C1)
    await rig.step(100, run_1=Reading(1, 1))
    rig.stop(C1)
    send_times = []
    for _ in range(12):
        before = len(rig.sent)
        await rig.step(100)
        if any(m.kind is MessageKind.SAMPLE for m in rig.decoded(rig.sent[before:])):
            send_times.append(rig.clock.now)
    assert len(send_times) == FINAL_SENDS
    assert min(b - a for a, b in itertools.pairwise(send_times)) >= 400 * MS


async def test_a_container_the_runtime_stops_listing_is_finished() -> None:
    rig = Rig()
    rig.start(C1)
    await rig.step(100, run_1=Reading(1, 1))
    rig.discovery.containers.clear()  # cgroup still readable, e.g. a leaked one
    for _ in range(3):
        await rig.step(250)
    assert not rig.agent.runs
    assert rig.messages()[-1].final


async def test_a_finished_container_still_listed_is_not_a_new_run() -> None:
    rig = Rig()
    rig.start(C1)
    await rig.step(100, run_1=Reading(1, 1))
    rig.reader.readings[C1.container_id] = None  # cgroup gone, runtime still lists it
    for _ in range(4):
        await rig.step(250)
    assert [m.kind for m in rig.messages()].count(MessageKind.STARTED) == 1


async def test_runtime_unreachable_keeps_sampling_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    rig.start(C1)
    await rig.step(100, run_1=Reading(1, 100))
    rig.discovery.fail = True
    with caplog.at_level(logging.WARNING, logger="meter.agent"):
        for i in range(20):
            await rig.step(250, run_1=Reading(2 + i, 100))
    samples = [m for m in rig.messages() if m.kind is MessageKind.SAMPLE]
    assert len(samples) == 21 and samples[-1].cpu_ns == 21
    assert samples[-1].memory_byte_ms == 100 * (100 + 20 * 250)
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1


async def test_server_unreachable_never_raises() -> None:
    rig = Rig()

    def refuse(_: bytes) -> None:
        raise ConnectionRefusedError("nobody listens")

    rig.agent = MeterAgent(rig.settings, rig.discovery, rig.reader, refuse, rig.clock)
    rig.start(C1)
    for _ in range(5):
        await rig.step(250, run_1=Reading(1, 1))
    assert rig.agent.send_failures == 6 and rig.agent.sent == 0


async def test_container_without_tenant_is_ignored_others_are_sampled() -> None:
    rig = Rig()
    anonymous = Container("c3" * 32, "run-3", "")
    rig.start(anonymous)
    rig.start(C1)
    rig.reader.readings[anonymous.container_id] = Reading(1, 1)
    await rig.step(100, run_1=Reading(1, 1))
    await rig.step(250, run_1=Reading(2, 1))
    assert {m.run_id for m in rig.messages()} == {"run-1"}
    assert anonymous.container_id not in rig.agent.runs


async def test_drop_ratio_drops_that_share_and_the_final_totals_still_arrive() -> None:
    lossless, lossy = Rig(), Rig(drop_ratio=0.3)
    for rig in (lossless, lossy):
        rig.start(C1)
        for i in range(400):
            await rig.step(250, run_1=Reading(cpu_ns=1000 * i, memory_bytes=4096 + i))
        rig.stop(C1)
        for _ in range(6):
            await rig.step(250)
    total = lossy.agent.sent + lossy.agent.dropped_on_purpose
    assert lossless.agent.dropped_on_purpose == 0
    assert 0.25 < lossy.agent.dropped_on_purpose / total < 0.35
    assert len(lossy.sent) == lossy.agent.sent

    def last_sample(rig: Rig) -> MeterMessage:
        return max((m for m in rig.messages() if m.kind is MessageKind.SAMPLE), key=lambda m: m.seq)

    clean, dropped = last_sample(lossless), last_sample(lossy)
    assert dropped.final
    assert (dropped.cpu_ns, dropped.memory_byte_ms) == (clean.cpu_ns, clean.memory_byte_ms)


async def test_run_forever_samples_until_cancelled() -> None:
    settings = Settings(meter={"secret": SECRET, "node": "n", "interval_ms": 10})  # type: ignore[arg-type]
    discovery, reader, sent = FakeDiscovery(), FakeReader(), list[bytes]()
    discovery.containers.append(C1)
    reader.readings[C1.container_id] = Reading(1, 1)
    agent = MeterAgent(settings, discovery, reader, sent.append)
    task = asyncio.create_task(agent.run_forever())
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    kinds = [m.kind for d in sent for m in decode_datagram(d, SECRET.encode())]
    assert kinds[0] is MessageKind.STARTED and kinds.count(MessageKind.SAMPLE) >= 10


def test_constructor_rejects_missing_dependencies_and_bad_settings() -> None:
    settings = Settings(meter={"secret": SECRET, "node": "n"})  # type: ignore[arg-type]
    parts = [settings, FakeDiscovery(), FakeReader(), list[bytes]().append]
    for index in range(len(parts)):
        broken = list(parts)
        broken[index] = None
        with pytest.raises(ValueError):
            MeterAgent(*broken)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MeterAgent(*parts, drop_ratio=1.0)  # type: ignore[arg-type]
    no_secret = Settings(meter={"secret": "", "node": "n"})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MeterAgent(no_secret, *parts[1:])  # type: ignore[arg-type]
    long_node = Settings(meter={"secret": SECRET, "node": "n" * 65})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MeterAgent(long_node, *parts[1:])  # type: ignore[arg-type]


# -- cgroup-first discovery: the runtime's listing is too slow under load -----------------------


def cgroup_rig() -> Rig:
    rig = Rig()
    rig.reader.cgroups = set()
    return rig


def appear(rig: Rig, container: Container, started_ns: int = T0) -> None:
    """A container starts: its cgroup appears and the runtime can inspect it by id, but
    its listing has not caught up (as with podman while many containers start at once)."""
    rig.discovery.exited[container.container_id] = container
    rig.discovery.starts[container.container_id] = as_datetime(started_ns)
    assert rig.reader.cgroups is not None
    rig.reader.cgroups.add(container.container_id)


def vanish(rig: Rig, container: Container) -> None:
    assert rig.reader.cgroups is not None
    rig.reader.cgroups.discard(container.container_id)
    rig.reader.readings[container.container_id] = None


async def test_a_run_never_listed_is_metered_from_its_cgroup_to_a_final_sample() -> None:
    rig = cgroup_rig()
    appear(rig, C1)
    rig.discovery.codes[C1.container_id] = 0
    await rig.step(100, run_1=Reading(cpu_ns=10, memory_bytes=1000))  # found, read
    await rig.step(250, run_1=Reading(cpu_ns=30, memory_bytes=3000))  # labelled, sampled
    await rig.step(250, run_1=Reading(cpu_ns=30, memory_bytes=3000))
    vanish(rig, C1)
    for _ in range(6):
        await rig.step(250)
    messages = rig.messages("run-1")
    assert messages[0].kind is MessageKind.STARTED
    samples = [m for m in messages if m.kind is MessageKind.SAMPLE]
    # The same integral as with StartedAt known from the start (first test above): the
    # first level is carried back to StartedAt once the runtime tells it.
    assert [s.memory_byte_ms for s in samples] == [600_000, 1_350_000] + [1_350_000] * FINAL_SENDS
    assert [s.final for s in samples] == [False, False] + [True] * FINAL_SENDS
    assert len({s.seq for s in samples}) == 2 + 1  # the FINAL copies share one seq
    (exited,) = [m for m in messages if m.kind is MessageKind.EXITED]
    assert exited.final and exited.exit_code == 0 and exited.seq > samples[-1].seq
    assert rig.discovery.described == [C1.container_id]  # asked once, by id
    assert not rig.agent.runs


async def test_a_run_that_ends_before_the_runtime_answers_still_gets_its_final_sample() -> None:
    rig = cgroup_rig()
    appear(rig, C1)
    rig.discovery.fail = True  # the runtime is too busy to answer for now
    await rig.step(100, run_1=Reading(cpu_ns=7, memory_bytes=2048))
    await rig.step(250, run_1=Reading(cpu_ns=9, memory_bytes=2048))
    vanish(rig, C1)
    await rig.step(250)
    assert rig.sent == []  # whose it is is still unknown: nothing can be sent yet
    rig.discovery.fail = False
    rig.discovery.codes[C1.container_id] = 0
    for _ in range(6):
        await rig.step(250)
    messages = rig.messages("run-1")
    kinds = [m.kind for m in messages]
    assert kinds[0] is MessageKind.STARTED and kinds.count(MessageKind.EXITED) == 1
    assert kinds.count(MessageKind.SAMPLE) == FINAL_SENDS
    final = messages[1]
    assert final.final and final.cpu_ns == 9
    assert final.memory_byte_ms == 2048 * (100 + 250)  # carried back 100 ms to StartedAt
    assert final.time_unix_ns == T0 + 350 * MS  # the last reading, not when it was labelled


async def test_a_container_that_is_not_a_function_is_asked_about_once_and_never_sent() -> None:
    rig = cgroup_rig()
    foreign = Container("f0" * 32, "", "")
    assert rig.reader.cgroups is not None
    rig.reader.cgroups.add(foreign.container_id)
    rig.reader.readings[foreign.container_id] = Reading(1, 1)
    rig.discovery.foreign.add(foreign.container_id)
    for _ in range(5):
        await rig.step(250)
    assert rig.sent == [] and rig.discovery.described == [foreign.container_id]


async def test_a_listing_asked_for_before_a_cgroup_appeared_does_not_count_against_it() -> None:
    rig = cgroup_rig()
    gate = threading.Event()
    listing_rig_running = rig.discovery.running

    def slow_running() -> list[Container]:
        gate.wait(10)  # podman under load: seconds per listing
        return listing_rig_running()

    rig.discovery.running = slow_running  # type: ignore[method-assign]
    listing = asyncio.create_task(rig.agent.list_running())
    await asyncio.sleep(0.05)  # asked for now, at T0
    appear(rig, C1)
    rig.reader.readings[C1.container_id] = Reading(cpu_ns=1, memory_bytes=1)
    for _ in range(2):  # found by its cgroup, then labelled by id
        rig.clock.advance_ms(100)
        rig.agent.tick()
        await rig.agent.describe_new()
    gate.set()
    await listing  # without C1: it was asked for before C1 existed
    rig.clock.advance_ms(100)
    rig.reader.readings[C1.container_id] = Reading(cpu_ns=3, memory_bytes=1)
    rig.agent.tick()
    assert rig.agent.runs[C1.container_id].missing == 0
    listing = asyncio.create_task(rig.agent.list_running())  # asked for now: it counts
    await listing
    rig.agent.tick()
    assert rig.agent.runs[C1.container_id].missing == 1


async def test_an_unlabelled_cgroup_that_ended_is_given_up_after_a_minute() -> None:
    rig = cgroup_rig()
    appear(rig, C1)
    rig.discovery.fail = True
    await rig.step(100, run_1=Reading(cpu_ns=7, memory_bytes=2048))
    vanish(rig, C1)
    await rig.step(250)
    rig.clock.advance_ms(60_000)
    await rig.step(250)
    assert rig.agent.unlabelled_lost == 1 and rig.sent == []
    rig.discovery.fail = False
    await rig.step(250)
    assert rig.sent == []
