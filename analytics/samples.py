"""Usage samples from ``faas.metrics`` to Arrow columns for ClickHouse."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from pydantic import ValidationError

from app.events import UsageSample

MAX_UINT64 = 2**64 - 1
SAMPLE_COLUMNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("tenant", pa.string()),
        ("node", pa.string()),
        ("seq", pa.uint64()),
        ("sample_time", pa.timestamp("us", tz="UTC")),
        ("first_seen", pa.timestamp("us", tz="UTC")),
        ("cpu_ns", pa.uint64()),
        ("memory_bytes", pa.uint64()),
        ("memory_byte_ms", pa.uint64()),
        ("final", pa.bool_()),
    ]
)


class BadSample(ValueError):
    """A record that is not a usage sample we can store (goes to the dead-letter topic)."""


def parse_sample(raw: bytes | None) -> UsageSample:
    if raw is None:
        raise BadSample("empty record")
    try:
        sample = UsageSample.model_validate_json(raw)
    except ValidationError as exc:
        raise BadSample(f"not a usage sample: {exc.errors(include_url=False)[:3]}") from exc
    if max(sample.seq, sample.cpu_ns, sample.memory_bytes, sample.memory_byte_ms) > MAX_UINT64:
        raise BadSample("counter beyond UInt64")
    return sample


def samples_table(samples: Sequence[UsageSample]) -> pa.Table:
    return pa.table(
        {
            "run_id": [s.run_id for s in samples],
            "tenant": [s.tenant for s in samples],
            "node": [s.node for s in samples],
            "seq": [s.seq for s in samples],
            "sample_time": [s.event_time for s in samples],
            "first_seen": [s.first_seen for s in samples],
            "cpu_ns": [s.cpu_ns for s in samples],
            "memory_bytes": [s.memory_bytes for s in samples],
            "memory_byte_ms": [s.memory_byte_ms for s in samples],
            "final": [s.final for s in samples],
        },
        schema=SAMPLE_COLUMNS,
    )
