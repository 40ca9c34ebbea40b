"""The meter server's hand-formatted records must stay exactly ``UsageSample``."""

from app.events import UsageSample
from meter.protocol import MessageKind, MeterMessage
from meter.records import to_record


def test_sample_record_matches_the_usage_sample_schema() -> None:
    message = MeterMessage(
        kind=MessageKind.SAMPLE, node="n\\1", run_id="run-1", tenant='o"brien@example.com',
        seq=7, time_unix_ns=1_800_000_000_123_456_789, cpu_ns=5, memory_bytes=6,
        memory_byte_ms=2**70, final=True,
    )  # fmt: skip
    topic, key, value = to_record(message, "metrics", "events")
    assert (topic, key) == ("metrics", "run-1")
    sample = UsageSample.model_validate_json(value)
    assert sample.event_id == "run-1:n\\1:7"
    assert sample.tenant == 'o"brien@example.com' and sample.node == "n\\1"
    assert sample.memory_byte_ms == 2**70 and sample.final
    assert sample.event_time.isoformat() == "2027-01-15T08:00:00.123456+00:00"  # floored, exact


def test_lifecycle_goes_to_the_node_events_topic() -> None:
    message = MeterMessage(
        kind=MessageKind.EXITED, node="n", run_id="r", tenant="t@example.com", seq=1,
        time_unix_ns=1_800_000_000_000_000_000, cpu_ns=0, memory_bytes=0, memory_byte_ms=0,
        exit_code=3,
    )  # fmt: skip
    topic, _key, value = to_record(message, "metrics", "events")
    assert topic == "events" and b'"container.exited"' in value and b'"exit_code":3' in value
