"""What the meter server counts, and the Kafka record each accepted datagram becomes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from app.events import EVENT_VERSION, NodeEvent
from meter.protocol import DropReason, MessageKind, MeterMessage


@dataclass
class MeterCounters:
    received: int = 0
    accepted: int = 0
    produced: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: {r.value: 0 for r in DropReason})
    dropped_buffer_full: int = 0
    produce_failures: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received, "accepted": self.accepted, "produced": self.produced,
            "dropped": dict(self.dropped), "dropped_buffer_full": self.dropped_buffer_full,
            "produce_failures": self.produce_failures,
        }  # fmt: skip

    def prometheus(self) -> str:
        lines = [
            "# TYPE faas_meter_datagrams_total counter",
            f'faas_meter_datagrams_total{{outcome="received"}} {self.received}',
            f'faas_meter_datagrams_total{{outcome="accepted"}} {self.accepted}',
            *(f'faas_meter_dropped_total{{reason="{r}"}} {n}' for r, n in self.dropped.items()),
            f'faas_meter_dropped_total{{reason="buffer_full"}} {self.dropped_buffer_full}',
            f"faas_meter_produced_total {self.produced}",
            f"faas_meter_produce_failures_total {self.produce_failures}",
        ]
        return "\n".join(lines) + "\n"


def _time(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def to_record(
    message: MeterMessage, metrics_topic: str, events_topic: str
) -> tuple[str, str, bytes]:
    """(topic, key, value) for an accepted datagram. Samples are formatted directly (this is
    the server's hot path); ``UsageSample`` is their schema and a test keeps them equal."""
    when = _time(message.time_unix_ns).isoformat().replace("+00:00", "Z")
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
