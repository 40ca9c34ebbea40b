"""What the meter server counts and the Kafka records accepted datagrams become."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from app.events import EVENT_VERSION, NodeEvent
from meter.protocol import DropReason, MessageKind, MeterMessage


@dataclass
class MeterCounters:
    """Per message (a version-2 datagram carries several; one dropped whole counts as one):
    ``received == accepted + Σ dropped + dropped_buffer_full``. ``datagrams`` are read."""

    datagrams: int = 0
    received: int = 0
    accepted: int = 0
    produced: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in DropReason})
    dropped_buffer_full: int = 0
    produce_failures: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "datagrams": self.datagrams, "received": self.received, "accepted": self.accepted, "produced": self.produced,
            "dropped": dict(self.dropped), "dropped_buffer_full": self.dropped_buffer_full,
            "produce_failures": self.produce_failures,
        }  # fmt: skip

    def prometheus(self) -> str:
        lines = [
            "# TYPE faas_meter_datagrams_total counter",
            f"faas_meter_datagrams_total {self.datagrams}",
            "# TYPE faas_meter_messages_total counter",
            f'faas_meter_messages_total{{outcome="received"}} {self.received}',
            f'faas_meter_messages_total{{outcome="accepted"}} {self.accepted}',
            *(f'faas_meter_dropped_total{{reason="{r}"}} {n}' for r, n in self.dropped.items()),
            f'faas_meter_dropped_total{{reason="buffer_full"}} {self.dropped_buffer_full}',
            f"faas_meter_produced_total {self.produced}",
            f"faas_meter_produce_failures_total {self.produce_failures}",
        ]
        return "\n".join(lines) + "\n"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _time(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)  # exact: no float on the way


def iso_utc(time_ns: int) -> str:
    """RFC 3339 UTC with microseconds, always six digits (one format for the ingestor)."""
    second, nanos = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{nanos // 1000:06d}Z"


def to_record(
    message: MeterMessage, metrics_topic: str, events_topic: str
) -> tuple[str, str, bytes]:
    """(topic, key, value) for an accepted datagram. Samples are formatted directly (this is
    the server's hot path); ``UsageSample`` is their schema and a test keeps them equal."""
    when = iso_utc(message.time_unix_ns)
    event_id = f"{message.run_id}:{message.node}:{message.seq}"
    if message.kind == MessageKind.SAMPLE:
        value = json.dumps(
            {
                "type": "usage.sample",
                "version": EVENT_VERSION,
                "event_id": event_id,
                "event_time": when,
                "run_id": message.run_id,
                "tenant": message.tenant,
                "node": message.node,
                "seq": message.seq,
                "cpu_ns": message.cpu_ns,
                "memory_bytes": message.memory_bytes,
                "memory_byte_ms": message.memory_byte_ms,
                "final": message.final,
            },
            separators=(",", ":"),
        )
        return metrics_topic, message.run_id, value.encode()
    kind = "container.started" if message.kind == MessageKind.STARTED else "container.exited"
    event = NodeEvent(
        type=kind, event_id=event_id, event_time=_time(message.time_unix_ns),
        run_id=message.run_id, tenant=message.tenant, node=message.node, exit_code=message.exit_code,
    )  # fmt: skip
    return events_topic, message.run_id, event.model_dump_json().encode()


MAX_SAMPLES_PER_RECORD = 256  # ~80 KiB of JSON lines: far below Kafka's 1 MiB message limit


def pack_by_partition(
    records: list[tuple[str, bytes]],
    partition_of: Callable[[str], int],
    max_lines: int = MAX_SAMPLES_PER_RECORD,
) -> list[tuple[int, bytes]]:
    """``faas.metrics`` records for one flush: the samples (JSON lines) of all runs whose key
    hashes to one partition, joined by ``\n`` in arrival order, at most ``max_lines`` per
    record, as ``(partition, value)``. Kafka's and the ingestor's cost is per record, and at
    the agent's 4 Hz a flush holds about one sample per run: packing by run alone left one
    sample per record. Each run's samples stay in one partition, in order."""
    lines: dict[int, list[bytes]] = {}
    for key, value in records:
        partition = partition_of(key)
        found = lines.get(partition)
        if found is None:
            lines[partition] = [value]
        else:
            found.append(value)
    return [
        (partition, b"\n".join(values[start : start + max_lines]))
        for partition, values in lines.items()
        for start in range(0, len(values), max_lines)
    ]
