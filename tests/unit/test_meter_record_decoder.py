"""The server's cached decoder gives the verdicts and records of ``to_record(decode(...))``."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.events import UsageSample
from meter.batch_protocol import decode_datagram, encode_batches
from meter.protocol import DecodeError, DropReason, MessageKind, decode, encode
from meter.record_decoder import RecordDecoder
from meter.records import iso_utc, pack_by_partition, to_record
from tests.unit.test_meter_batch_protocol import node_samples
from tests.unit.test_meter_protocol import SECRET, messages, sign

METRICS, EVENTS = "faas.metrics", "faas.node-events"


def reference(data: bytes) -> tuple[str, str, dict[str, object]] | DropReason:
    try:
        topic, key, value = to_record(decode(data, SECRET), METRICS, EVENTS)
    except DecodeError as exc:
        return exc.reason
    return topic, key, json.loads(value)


def verdict(decoder: RecordDecoder, data: bytes) -> tuple[str, str, dict[str, object]] | DropReason:
    try:
        *_, topic, key, value = decoder.record(data)
    except DecodeError as exc:
        return exc.reason
    return topic, key, json.loads(value)


@settings(max_examples=300)
@given(messages(), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_cached_path_formats_what_the_reference_formats(msg, seq, time_ns) -> None:  # type: ignore[no-untyped-def]
    decoder = RecordDecoder(SECRET, METRICS, EVENTS)
    first = encode(msg, SECRET)
    second = encode(dataclasses.replace(msg, seq=seq, time_unix_ns=time_ns), SECRET)
    assert verdict(decoder, first) == reference(first)  # learns the identity
    assert verdict(decoder, second) == reference(second)  # the cached path for samples


def damage(datagram: bytes, data: st.DataObject) -> bytes:
    """1-4 bytes overwritten, then cut anywhere and up to 3 bytes appended."""
    damaged = bytearray(datagram)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(damaged) - 1))
        damaged[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged) + 3))
    return bytes(damaged[:cut]) + data.draw(st.binary(max_size=3))


@settings(max_examples=500)
@given(messages(), st.data())
def test_damaged_datagrams_get_the_reference_verdict(msg, data) -> None:  # type: ignore[no-untyped-def]
    decoder = RecordDecoder(SECRET, METRICS, EVENTS)
    datagram = encode(msg, SECRET)
    decoder.record(datagram)  # prime the cache with this identity
    candidate = damage(datagram, data)
    assert verdict(decoder, candidate) == reference(candidate)


def test_cached_path_still_checks_the_signature() -> None:
    msg = dataclasses.replace(_sample(), seq=7)
    decoder = RecordDecoder(SECRET, METRICS, EVENTS)
    decoder.record(encode(_sample(), SECRET))
    forged = encode(msg, b"another secret")
    with pytest.raises(DecodeError) as info:
        decoder.record(forged)
    assert info.value.reason is DropReason.BAD_SIGNATURE


def test_sample_record_is_a_usage_sample() -> None:
    decoder = RecordDecoder(SECRET, METRICS, EVENTS)
    decoder.record(encode(_sample(), SECRET))
    *_, topic, key, value = decoder.record(
        encode(dataclasses.replace(_sample(), seq=2, final=True), SECRET)
    )
    sample = UsageSample.model_validate_json(value)
    assert (sample.run_id, sample.seq, sample.final, sample.memory_byte_ms) == ("r-1", 2, True, 5)
    assert key == "r-1" and topic == METRICS


@given(st.integers(0, 2**64 - 1))
def test_iso_time_is_exact_to_the_microsecond(time_ns: int) -> None:
    text = iso_utc(time_ns)
    assert text.endswith("Z") and text[-8] == "."
    assert int(text[-7:-1]) == time_ns // 1000 % 1_000_000


def test_pack_by_partition_keeps_each_runs_order_and_bounds_records() -> None:
    records = [(f"run-{i % 5}", f"{i % 5}:{i}".encode()) for i in range(20)]
    partition_of = {f"run-{r}": r % 2 for r in range(5)}.__getitem__
    packed = pack_by_partition(records, partition_of, max_lines=3)
    by_run: dict[str, list[int]] = {}
    for partition, value in packed:
        lines = value.split(b"\n")
        assert len(lines) <= 3
        for line in lines:
            run, _, index = line.decode().partition(":")
            assert partition_of(f"run-{run}") == partition
            by_run.setdefault(run, []).append(int(index))
    assert by_run == {f"{r}": list(range(r, 20, 5)) for r in range(5)}
    assert len(packed) == 4 + 3  # 12 lines and 8 lines, at most 3 a record


def _sample():  # type: ignore[no-untyped-def]
    from meter.protocol import MeterMessage

    return MeterMessage(
        kind=MessageKind.SAMPLE, node="n", run_id="r-1", tenant="t@example.com", seq=1,
        time_unix_ns=1_800_000_000_123_456_789, cpu_ns=3, memory_bytes=4, memory_byte_ms=5,
    )  # fmt: skip


def test_ingestor_parses_packed_records_and_rejects_them_whole() -> None:
    from analytics.samples import samples_batch

    decoder = RecordDecoder(SECRET, METRICS, EVENTS)
    lines = [
        decoder.record(encode(dataclasses.replace(_sample(), seq=seq), SECRET))[-1]
        for seq in range(1, 6)
    ]
    packed = [
        value
        for _, value in pack_by_partition(
            [("r-1", line) for line in lines], lambda _: 0, max_lines=3
        )
    ]
    table, bad = samples_batch(packed)
    assert (table.column("seq").to_pylist(), bad) == ([1, 2, 3, 4, 5], [])
    broken = [packed[0], packed[1] + b'\n{"type":"usage.sample"}', b""]
    table, bad = samples_batch(broken)
    assert (table.column("seq").to_pylist(), bad) == ([1, 2, 3], [1, 2])


@given(st.binary(min_size=1, max_size=200), st.binary(max_size=600))
def test_precomputed_pads_give_the_standard_hmac(secret: bytes, message: bytes) -> None:
    import hashlib
    import hmac

    from meter.record_decoder import _hmac_pads

    inner, outer = _hmac_pads(secret)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    assert outer.digest() == hmac.digest(secret, message, hashlib.sha256)


def batch_reference(data: bytes) -> list[tuple[str, str, dict[str, object]]] | DropReason:
    try:
        messages = decode_datagram(data, SECRET)
    except DecodeError as exc:
        return exc.reason
    records = [to_record(m, METRICS, EVENTS) for m in messages]
    return [(topic, key, json.loads(value)) for topic, key, value in records]


def batch_verdict(
    decoder: RecordDecoder, data: bytes
) -> list[tuple[str, str, dict[str, object]]] | DropReason:
    try:
        decoded = decoder.records(data)
    except DecodeError as exc:
        return exc.reason
    return [(topic, key, json.loads(value)) for *_, topic, key, value in decoded]


@settings(max_examples=100)
@given(node_samples(), st.integers(0, 2**64 - 1))
def test_cached_batch_path_formats_what_the_reference_formats(samples, seq) -> None:  # type: ignore[no-untyped-def]
    decoder = RecordDecoder(SECRET, METRICS, EVENTS)
    first = encode_batches(samples, SECRET)
    later = encode_batches([dataclasses.replace(m, seq=seq) for m in samples], SECRET)
    for datagram in first:
        assert batch_verdict(decoder, datagram) == batch_reference(datagram)  # learns
    for datagram in later:
        assert batch_verdict(decoder, datagram) == batch_reference(datagram)  # cached
    windows = [key for d in later for key, *_ in decoder.records(d)]
    assert windows == [(m.node, m.run_id, METRICS) for m in samples]


@settings(max_examples=300)
@given(node_samples(), st.data())
def test_damaged_batches_get_the_reference_verdict(samples, data) -> None:  # type: ignore[no-untyped-def]
    decoder = RecordDecoder(SECRET, METRICS, EVENTS)
    datagram = encode_batches(samples, SECRET)[0]
    decoder.records(datagram)  # prime the cache with these identities
    candidate = damage(datagram, data)
    if data.draw(st.booleans()):  # re-signed: past the tag, as a key holder's bytes would be
        candidate = sign(candidate[:-16]) if len(candidate) > 16 else candidate
    assert batch_verdict(decoder, candidate) == batch_reference(candidate)
