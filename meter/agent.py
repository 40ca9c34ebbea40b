"""Meter agent: samples every function container on this node and sends its cumulative
usage to the meter server over UDP (``python -m meter.agent``).

Every interval it reads each tracked container's cgroup (cheap and exact) and sends one
SAMPLE per run. The runtime (Docker Engine API) is asked in background tasks, so a slow or
absent runtime never delays a reading:

- **Cgroup first.** Each tick lists the container cgroups (a directory listing) and starts
  reading a new one at once; the runtime is asked *by id* whose it is (labels
  ``faas.run_id``/``faas.tenant``, StartedAt: one inspect). Until it answers the run is
  metered but nothing is sent; if it ended meanwhile, it is sent as started and finished
  (FINAL) as soon as the answer comes. This matters under load: podman's listing of all
  containers took 5-10 s while 100 were being created, longer than a 1 s run lives, and
  such runs were never metered at all (issue 8).
- **Listing.** The runtime's listing of running containers remains, in its own task, as
  the backstop (another cgroup layout, a leaked cgroup: a container it stops listing is
  finished). Exit codes are asked by id.

Per run it keeps the cgroup's cumulative CPU counter and the memory integral in byte·ms
by the trapezoid rule, in integers, so a lost datagram loses nothing.

- **Integral start.** The first reading comes up to one interval plus the discovery
  delay after the start; its level is carried back to the runtime's StartedAt (asked
  once per run). If StartedAt is unknown (runtime unreachable), the integral starts at
  the first reading (``first_seen``). This is the contract ``analytics/usage.py`` and
  ``app.events.UsageSample`` rely on. After an agent restart mid-run, the new process
  carries its first level back to StartedAt too: the past is approximated, CPU stays exact.
- **No extrapolation forward.** The last sample is the last reading; the invoicer closes
  the gap to the runtime's FinishedAt with ``memory_bytes`` and the last CPU rate.
- **Sequence numbers** are ``(agent start in ms << 22) + counter``, one counter for all
  runs of the process: strictly increasing per run, and a restarted agent starts above
  anything the previous process sent (it would need 2^22 datagrams per ms to catch up),
  so nothing is persisted and nothing is mistaken for a replay.
- **End of a run.** When the cgroup is gone or empty (or the runtime has not listed the
  container for three discoveries), the agent sends the last reading as a FINAL SAMPLE
  three times ~0.4 s apart (same bytes and seq; the server drops the copies as DUPLICATE),
  then an EXITED (also FINAL, same counters) once the runtime tells the exit code. Only
  listings asked for after the run was first seen count as not listing it.
- **Failures.** Runtime unreachable: known containers keep being read. Server down:
  datagrams are lost, the next one carries the whole state. Warnings are rate-limited.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.settings import Settings
from meter.batch_protocol import encode_batches
from meter.cgroups import Reader, Reading
from meter.discovery import Container, Described, Discovery
from meter.protocol import EncodeError, MessageKind, MeterMessage, encode
from meter.sources import sources

log = logging.getLogger(__name__)
SEQ_EPOCH_SHIFT = 22
FINAL_SENDS = 3  # the FINAL sample goes out this many times (UDP may drop one)…
FINAL_SPACING_NS = 400_000_000  # …this far apart
LABEL_THREADS = 8  # inspect calls in flight at once for new cgroups
EXIT_CODE_WAIT_NS = 10_000_000_000  # how long to keep asking the runtime for an exit code
REMEMBER_FINISHED_NS = 60_000_000_000  # a finished container still listed is not a new run
MISSING_SNAPSHOTS = 3  # not listed this many times in a row: finished, even if its cgroup is not
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass
class RunMeter:
    """One run's state. Integers only, so the integral never drifts by rounding."""

    container: Container
    started_ns: int | None  # runtime StartedAt; None: integrate from the first reading
    first_seen_ns: int
    last_ns: int | None = None
    last_memory: int = 0
    cpu_ns: int = 0
    doubled_byte_ns: int = 0  # 2·∫memory dt in byte·ns (the trapezoid's halves stay exact)
    missing: int = 0  # consecutive runtime listings without this container
    first_ns: int | None = None  # the first reading: carried back to StartedAt, even if
    first_memory: int = 0  # StartedAt is only learnt after it (cgroup-first discovery)
    gone_ns: int | None = None  # unlabelled: when its cgroup went away

    def update(self, reading: Reading, now_ns: int) -> None:
        if self.last_ns is None:
            start = now_ns if self.started_ns is None else self.started_ns
            self.doubled_byte_ns += 2 * reading.memory_bytes * max(0, now_ns - start)
            self.first_ns, self.first_memory = now_ns, reading.memory_bytes
        else:
            span = max(0, now_ns - self.last_ns)  # a clock step back adds nothing
            self.doubled_byte_ns += (self.last_memory + reading.memory_bytes) * span
        self.last_ns, self.last_memory = now_ns, reading.memory_bytes
        self.cpu_ns = max(self.cpu_ns, reading.cpu_ns)  # cumulative: never goes back

    def start_at(self, started_ns: int | None) -> None:
        """StartedAt learnt after the first reading: carry that reading back to it."""
        if started_ns is None or self.started_ns is not None:
            return
        self.started_ns = started_ns
        if self.first_ns is not None:
            self.doubled_byte_ns += 2 * self.first_memory * max(0, self.first_ns - started_ns)

    @property
    def memory_byte_ms(self) -> int:
        return self.doubled_byte_ns // 2_000_000

    @property
    def time_ns(self) -> int:
        """When the counters were read (the start time before any reading)."""
        if self.last_ns is not None:
            return self.last_ns
        return self.first_seen_ns if self.started_ns is None else self.started_ns


@dataclass
class _Final:
    data: bytes
    sends_left: int
    due_ns: int


def _ns(moment: datetime | None) -> int | None:
    return None if moment is None else (moment - _EPOCH) // _US * 1000


class MeterAgent:
    """Samples containers (``reader``), found through ``discovery``, and hands signed
    datagrams to ``sender``. ``clock`` gives Unix time in ns. ``drop_ratio`` loses that
    share of datagrams on purpose (a test switch)."""

    def __init__(
        self,
        settings: Settings,
        discovery: Discovery,
        reader: Reader,
        sender: Callable[[bytes], None],
        clock: Callable[[], int] = time.time_ns,
        *,
        drop_ratio: float = 0.0,
        seed: int | None = None,
        warn_every_s: float = 30.0,
    ) -> None:
        if settings is None or discovery is None or reader is None or sender is None:
            raise ValueError("settings, discovery, reader and sender are required")
        if clock is None or not 0.0 <= drop_ratio < 1.0:
            raise ValueError("clock is required and drop_ratio must be in [0, 1)")
        self._node = settings.meter.node or socket.gethostname()
        self._secret = settings.meter.secret.get_secret_value().encode()
        self._interval_s = settings.meter.interval_ms / 1000
        self._discovery, self._reader, self._sender, self._clock = (
            discovery, reader, sender, clock,
        )  # fmt: skip
        self._drop_ratio = drop_ratio
        self._random = random.Random(seed)  # noqa: S311 - a test switch, not security
        self._warn_every_s = warn_every_s
        self._warned: dict[str, float] = {}
        self._seq = (clock() // 1_000_000) << SEQ_EPOCH_SHIFT
        self.runs: dict[str, RunMeter] = {}  # by container id
        self._new: dict[str, tuple[Container, int | None]] = {}  # discovered, not yet tracked
        self._listings = self._listings_seen = 0  # runtime listings done / looked at by tick
        self._listed_ids: set[str] = set()
        self._listed_at = 0  # when the last listing was asked for (clock ns)
        self._finished: dict[str, int] = {}  # container id -> when it finished
        self._ignored: set[str] = set()  # not ours (no run id label) or labels we cannot encode
        # Cgroup-first discovery: a new cgroup is read from the next tick on, while the
        # runtime is asked for its labels by id (``describe``); until they arrive the run is
        # "unlabelled" (metered, nothing sent). Under load the runtime's listing takes seconds,
        # longer than a short run lives; a cgroup appears the moment the container starts.
        self._unlabelled: dict[str, RunMeter] = {}
        self._to_describe: set[str] = set()
        self._describing: set[str] = set()  # asked, no answer yet
        self._asking: set[asyncio.Future[None]] = set()
        self._labeller: ThreadPoolExecutor | None = None  # made on first use
        self._described: dict[str, Described | None] = {}  # answers for tick to apply
        self.unlabelled_lost = 0  # metered cgroups the runtime never said whose they were
        self._finals: list[_Final] = []
        self._exits: dict[str, tuple[RunMeter, int]] = {}  # awaiting exit code, deadline
        self.sent = self.dropped_on_purpose = self.send_failures = 0
        # Fail at start-up, not per datagram, on a bad node name or an empty secret.
        probe = MeterMessage(
            kind=MessageKind.STARTED, node=self._node, run_id="r", tenant="t", seq=0,
            time_unix_ns=0, cpu_ns=0, memory_bytes=0, memory_byte_ms=0,
        )  # fmt: skip
        encode(probe, self._secret)

    @property
    def node(self) -> str:
        return self._node

    # -- sending ----------------------------------------------------------------------------

    def _message(
        self, run: RunMeter, kind: MessageKind, *, final: bool = False, exit_code: int | None = None
    ) -> MeterMessage:
        seq, self._seq = self._seq, self._seq + 1
        return MeterMessage(
            kind=kind, node=self._node, run_id=run.container.run_id, tenant=run.container.tenant,
            seq=seq, time_unix_ns=run.time_ns, cpu_ns=run.cpu_ns, memory_bytes=run.last_memory,
            memory_byte_ms=run.memory_byte_ms, final=final, exit_code=exit_code,
        )  # fmt: skip

    def _send(self, message: MeterMessage) -> bytes:
        data = encode(message, self._secret)
        self._transmit(data)
        return data

    def _transmit(self, data: bytes) -> None:
        if self._drop_ratio and self._random.random() < self._drop_ratio:
            self.dropped_on_purpose += 1
            return
        try:
            self._sender(data)
            self.sent += 1
        except OSError as exc:  # server away: the next datagram carries the whole state
            self.send_failures += 1
            self._warn("send", f"cannot send to the meter server: {exc}")

    def _warn(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(key, -self._warn_every_s) >= self._warn_every_s:
            self._warned[key] = now
            log.warning("meter agent: %s", text)

    # -- discovery (runtime API, in threads) ------------------------------------------------

    async def discover(self) -> None:
        """One round with the runtime: labels of new cgroups, which containers run (and
        StartedAt of new ones), exit codes of finished ones. Never raises."""
        await asyncio.gather(self.describe_new(), self.list_running())
        await self._resolve_exits()

    async def describe_new(self, *, wait: bool = True) -> None:
        """Asks the runtime, by id, whose the cgroups found since the last round are: one
        inspect each, at once, in threads of their own (``LABEL_THREADS``), so they never
        queue behind a slow listing or exit-code call. ``wait=False`` (``run_forever``)
        returns at once; a new cgroup is then asked about on the next round, not after the
        slowest answer of this one. Never raises."""
        pending = [cid for cid in self._to_describe if cid not in self._describing]
        if not pending:
            return
        if self._labeller is None:
            self._labeller = ThreadPoolExecutor(LABEL_THREADS, thread_name_prefix="meter-label")
        self._describing.update(pending)
        asks = [asyncio.ensure_future(self._describe(cid, self._labeller)) for cid in pending]
        self._asking.update(asks)
        for ask in asks:
            ask.add_done_callback(self._asking.discard)
        if wait:
            await asyncio.gather(*asks)

    async def _describe(self, cid: str, threads: ThreadPoolExecutor) -> None:
        try:
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(threads, self._discovery.describe, cid)
        except Exception as exc:  # runtime away: ask again next round
            self._warn("runtime", f"runtime unreachable, cannot label {cid[:12]}: {exc}")
            return
        finally:
            self._describing.discard(cid)
        self._to_describe.discard(cid)
        self._described[cid] = answer

    async def list_running(self) -> None:
        """Lists the running function containers (labels, StartedAt of new ones): the
        backstop for what the cgroups cannot tell (another layout, a leaked cgroup)."""
        listed_at = self._clock()
        try:
            running = await asyncio.to_thread(self._discovery.running)
        except Exception as exc:
            self._warn("runtime", f"runtime unreachable, reading known containers only: {exc}")
            running = None
        if running is not None:
            now = self._clock()
            self._finished = {
                cid: at for cid, at in self._finished.items() if now - at < REMEMBER_FINISHED_NS
            }
            ids = {c.container_id for c in running}
            fresh = [
                c
                for c in running
                if c.container_id not in self.runs
                and c.container_id not in self._finished
                and c.container_id not in self._ignored
            ]
            starts = await asyncio.gather(*(self._started_ns(c.container_id) for c in fresh))
            self._new.update({c.container_id: (c, s) for c, s in zip(fresh, starts, strict=True)})
            self._listed_ids, self._listings = ids, self._listings + 1
            self._listed_at = listed_at

    async def _started_ns(self, container_id: str) -> int | None:
        try:
            started: datetime | None = await asyncio.to_thread(
                self._discovery.started_at, container_id
            )
        except Exception:
            return None
        return _ns(started)

    async def _resolve_exits(self) -> None:
        pending = list(self._exits.items())
        codes = await asyncio.gather(
            *(asyncio.to_thread(self._discovery.exit_code, cid) for cid, _ in pending),
            return_exceptions=True,
        )
        now = self._clock()
        for (cid, (run, deadline)), code in zip(pending, codes, strict=True):
            if isinstance(code, int):
                self._send(self._message(run, MessageKind.EXITED, final=True, exit_code=code))
            elif now < deadline:
                continue
            self._exits.pop(cid, None)

    # -- sampling (cgroups, synchronous and fast) -------------------------------------------

    def tick(self) -> None:
        """Track newly discovered containers, read every tracked one, send the samples."""
        now = self._clock()
        for cid, (container, started_ns) in self._new.items():
            if cid not in self.runs and cid not in self._finished:  # listed twice meanwhile
                self._track(container, started_ns)
        self._new.clear()
        for cid, described in self._described.items():
            self._label(cid, described)
        self._described.clear()
        self._scan_cgroups(now)
        listing, self._listings_seen = self._listings > self._listings_seen, self._listings
        samples: list[MeterMessage] = []
        for cid, run in list(self.runs.items()):
            if listing and self._listed_at >= run.first_seen_ns:  # not a listing from before
                run.missing = 0 if cid in self._listed_ids else run.missing + 1
            reading = self._reader.read(cid)
            if reading is None or run.missing >= MISSING_SNAPSHOTS:
                self._finish(cid, run)
                continue
            run.update(reading, self._clock())
            samples.append(self._message(run, MessageKind.SAMPLE))
        # Several runs' samples a datagram (version 2): the server's cost is per datagram.
        for data in encode_batches(samples, self._secret):
            self._transmit(data)
        self._resend_finals()

    def _scan_cgroups(self, now: int) -> None:
        """Reads every unlabelled cgroup and starts metering new ones (see ``__init__``)."""
        present = self._reader.present()
        if present is None:
            self._ignored &= self._listed_ids  # listing only: forget what is no longer listed
            return
        self._ignored &= present | self._listed_ids
        self._finished = {
            cid: at for cid, at in self._finished.items() if now - at < REMEMBER_FINISHED_NS
        }
        for cid, run in list(self._unlabelled.items()):
            if run.gone_ns is None:
                reading = self._reader.read(cid)
                if reading is None:
                    run.gone_ns = now
                else:
                    run.update(reading, self._clock())
            elif now - run.gone_ns >= REMEMBER_FINISHED_NS:
                del self._unlabelled[cid]
                self._to_describe.discard(cid)
                self.unlabelled_lost += 1
                self._warn("unlabelled", f"container {cid[:12]} ended; runtime never said whose")
        for cid in present:
            if (
                cid in self.runs or cid in self._unlabelled or cid in self._finished
                or cid in self._ignored
            ):  # fmt: skip
                continue
            reading = self._reader.read(cid)
            if reading is None:
                continue  # an emptied cgroup, left behind a moment after an exit
            run = RunMeter(Container(cid, "", ""), None, self._clock())
            run.update(reading, run.first_seen_ns)
            self._unlabelled[cid] = run
            self._to_describe.add(cid)

    def _label(self, cid: str, described: Described | None) -> None:
        """The runtime's answer for a cgroup found first: meter it as its run, or ignore it."""
        run = self._unlabelled.pop(cid, None)
        if run is None or cid in self.runs or cid in self._finished:
            return  # the listing labelled it first, or it is over
        if described is None or described.container is None:
            self._ignored.add(cid)  # not a function container, or removed before we asked
            if described is None:
                self.unlabelled_lost += 1
                self._warn("unlabelled", f"container {cid[:12]} gone before it was labelled")
            return
        run.container = described.container
        run.start_at(_ns(described.started_at))
        if self._start(run) and run.gone_ns is not None:  # ended before we knew whose it was
            self._finish(cid, run)

    def _track(self, container: Container, started_ns: int | None) -> None:
        run = self._unlabelled.pop(container.container_id, None)
        if run is None:
            run = RunMeter(container, started_ns, self._clock())
        else:  # metered since its cgroup appeared; the listing says whose it is
            run.container = container
            run.start_at(started_ns)
        self._start(run)

    def _start(self, run: RunMeter) -> bool:
        """Sends STARTED and tracks the run; False if its labels cannot be encoded."""
        container = run.container
        try:
            data = encode(self._message(run, MessageKind.STARTED), self._secret)
        except EncodeError as exc:  # e.g. no tenant label: we could never bill it anyway
            self._ignored.add(container.container_id)
            self._warn("labels", f"ignoring container {container.container_id[:12]}: {exc}")
            return False
        self.runs[container.container_id] = run
        self._transmit(data)
        return True

    def _finish(self, cid: str, run: RunMeter) -> None:
        del self.runs[cid]
        now = self._clock()
        self._finished[cid] = now
        self._exits[cid] = (run, now + EXIT_CODE_WAIT_NS)
        if run.last_ns is None:
            return  # never read: no usage to report (billed for wall time and execution)
        data = self._send(self._message(run, MessageKind.SAMPLE, final=True))
        self._finals.append(_Final(data, FINAL_SENDS - 1, now + FINAL_SPACING_NS))

    def _resend_finals(self) -> None:
        now = self._clock()
        for final in self._finals:
            if final.due_ns <= now:
                self._transmit(final.data)
                final.sends_left -= 1
                final.due_ns = now + FINAL_SPACING_NS
        self._finals = [final for final in self._finals if final.sends_left > 0]

    # -- loops -------------------------------------------------------------------------------

    async def _every_interval(self, step: Callable[[], object], what: str) -> None:
        next_at = time.monotonic()
        while True:
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as exc:  # never die: the next round retries
                self._warn(what, f"{what} failed: {exc!r}")
            next_at = max(next_at + self._interval_s, time.monotonic() - self._interval_s)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def run_forever(self) -> None:
        """Discover and sample every interval until cancelled."""

        async def label() -> None:
            await self.describe_new(wait=False)

        loops = [  # each its own pace: a slow listing or exit code delays no labelling
            asyncio.create_task(self._every_interval(label, "labelling")),
            asyncio.create_task(self._every_interval(self._resolve_exits, "exit codes")),
            asyncio.create_task(self._every_interval(self.list_running, "discovery")),
        ]
        try:
            await self._every_interval(self.tick, "sampling")
        finally:
            for loop in [*loops, *self._asking]:
                loop.cancel()
            await asyncio.gather(*loops, *self._asking, return_exceptions=True)


class UdpSender:
    """Sends datagrams to one address, resolved once (host names are not looked up per send)."""

    def __init__(self, host: str, port: int) -> None:
        if not host or not port:
            raise ValueError("host and port are required")
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._address = address
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # a full send buffer drops the datagram, never waits

    def __call__(self, data: bytes) -> None:
        self._sock.sendto(data, self._address)

    def close(self) -> None:
        self._sock.close()


def udp_sender(host: str, port: int) -> UdpSender:
    return UdpSender(host, port)


async def run_agent(settings: Settings, drop_ratio: float = 0.0) -> None:
    """Run the agent with the real runtime, cgroups and UDP until SIGTERM or SIGINT."""
    discovery, reader = sources(settings)  # FAAS_METER_DISCOVERY: docker or kubernetes
    sender = UdpSender(settings.meter.host, settings.meter.port)
    agent = MeterAgent(settings, discovery, reader, sender, drop_ratio=drop_ratio)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(agent.run_forever())
    log.info(
        "meter agent %s: sampling every %s ms to udp://%s:%s",
        agent.node, settings.meter.interval_ms, settings.meter.host, settings.meter.port,
    )  # fmt: skip
    try:
        await stop.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        discovery.close()
        sender.close()
        log.info("meter agent stopped: %s datagrams sent", agent.sent)


def _summary() -> str:
    return (__doc__ or "").split("\n\n")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meter.agent", description=_summary())
    parser.add_argument("--node", help="node name (default: FAAS_METER_NODE or the host name)")
    parser.add_argument("--drop-ratio", type=float, default=0.0, help="lose this share (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )  # fmt: skip
    settings = Settings()
    if args.node:
        settings.meter.node = args.node
    asyncio.run(run_agent(settings, args.drop_ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
