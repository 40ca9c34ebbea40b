"""Batch parsing of ``faas.metrics`` records: the meter server's time format takes a fast
path, any other RFC 3339 form the general parser, with the same result as the schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.samples import samples_batch
from app.events import UsageSample
from meter.records import iso_utc

BASE = datetime(2026, 11, 1, tzinfo=UTC)


def line(seq: int, event_time: str) -> bytes:
    return json.dumps(
        {"type": "usage.sample", "version": 1, "event_id": f"r:n:{seq}", "event_time": event_time,
         "run_id": "r", "tenant": "t@example.com", "node": "n", "seq": seq, "cpu_ns": seq,
         "memory_bytes": 1, "memory_byte_ms": 2, "final": False},
        separators=(",", ":"),
    ).encode()  # fmt: skip


@settings(deadline=None, max_examples=50)  # a shared machine: Polars batches, not µs
@given(st.lists(st.integers(0, 10**15), min_size=1, max_size=20))
def test_meter_times_and_other_forms_parse_as_the_schema_does(offsets_us: list[int]) -> None:
    moments = [BASE + timedelta(microseconds=us) for us in offsets_us]
    meter = [iso_utc(int(m.timestamp()) * 10**9 + m.microsecond * 1000) for m in moments]
    pydantic = [UsageSample.model_validate_json(line(0, t)).event_time for t in meter]
    plus_two = timezone(timedelta(hours=2))
    other = [m.astimezone(plus_two).isoformat() for m in moments]  # "+02:00", no "Z"
    for texts in (meter, other, meter[:-1] + other[-1:]):  # one odd line: general parser
        table, bad = samples_batch([b"\n".join(line(i, t) for i, t in enumerate(texts))])
        assert bad == []
        assert table.column("sample_time").to_pylist() == pydantic == moments


def test_nanoseconds_are_cut_to_microseconds_and_a_bad_time_fails_its_record() -> None:
    table, bad = samples_batch([line(1, "2026-11-01T00:00:00.123456789Z")])
    assert bad == [] and table.column("sample_time").to_pylist() == [
        BASE + timedelta(microseconds=123456)
    ]
    table, bad = samples_batch([line(1, "2026-11-01T00:00:00Z"), line(2, "yesterday")])
    assert bad == [1] and table.column("seq").to_pylist() == [1]
