"""Protocol version 2 (several samples of one node a datagram): packing, round trips,
verdicts on damage, and fuzzing of decode_datagram."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter.batch_protocol import (
    BATCH_VERSION,
    MAX_ENTRIES,
    decode_batch,
    decode_datagram,
    encode_batches,
)
from meter.protocol import (
    MAX_DATAGRAM_BYTES,
    TAG_BYTES,
    DecodeError,
    DropReason,
    EncodeError,
    MessageKind,
    MeterMessage,
    encode,
)
from tests.unit.test_meter_protocol import GOLDEN, SECRET, messages, sign


def samples_of(node: str, count: int) -> list[MeterMessage]:
    return [
        dataclasses.replace(GOLDEN, node=node, run_id=f"{i:036d}", seq=i, final=i % 7 == 3)
        for i in range(count)
    ]


@st.composite
def node_samples(draw: st.DrawFn) -> list[MeterMessage]:
    """1..40 SAMPLEs of one node with any valid fields."""
    drawn = draw(st.lists(messages(), min_size=1, max_size=25))
    node = drawn[0].node
    return [
        dataclasses.replace(m, kind=MessageKind.SAMPLE, node=node, exit_code=None) for m in drawn
    ]


def reason_of(data: bytes) -> DropReason:
    with pytest.raises(DecodeError) as info:
        decode_datagram(data, SECRET)
    return info.value.reason


@settings(max_examples=100)
@given(node_samples())
def test_round_trip_in_order_within_the_size_limit(samples: list[MeterMessage]) -> None:
    datagrams = encode_batches(samples, SECRET)
    assert all(len(d) <= MAX_DATAGRAM_BYTES and d[2] == BATCH_VERSION for d in datagrams)
    assert [m for d in datagrams for m in decode_datagram(d, SECRET)] == samples


def test_a_tick_of_many_runs_fills_datagrams() -> None:
    samples = samples_of("node-7", 100)  # UUID-long run ids: 4 + 36 + 17 + 52 = 109 bytes
    datagrams = encode_batches(samples, SECRET)
    # 1,400 - 5 (header) - 6 (node) - 16 (tag) = 1,373 bytes: 12 entries; 100 = 8 x 12 + 4
    assert [d[3] for d in datagrams] == [12] * 8 + [4]
    assert all(len(d) > MAX_DATAGRAM_BYTES - 109 for d in datagrams[:-1])


def test_smallest_entries_fill_by_size_and_the_count_byte_says_how_many() -> None:
    tiny = [
        dataclasses.replace(GOLDEN, node="n", run_id="r", tenant="t", seq=i) for i in range(600)
    ]  # 4 + 1 + 1 + 52 = 58 bytes an entry; 1,400 - 5 - 1 - 16 = 1,378: 23 fit (255 never binds)
    datagrams = encode_batches(tiny, SECRET)
    assert [d[3] for d in datagrams] == [23] * 26 + [2]
    assert [d[3] for d in datagrams] == [len(decode_datagram(d, SECRET)) for d in datagrams]
    assert MAX_ENTRIES * 58 > MAX_DATAGRAM_BYTES


def test_nothing_to_send_is_no_datagram() -> None:
    assert encode_batches([], SECRET) == []


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"kind": MessageKind.STARTED}, "SAMPLEs only"),
        ({"kind": MessageKind.EXITED, "exit_code": 1, "final": True}, "SAMPLEs only"),
        ({"node": "another-node"}, "one node"),
        ({"cpu_ns": -1}, "cpu_ns"),
        ({"tenant": ""}, "tenant"),
    ],
)
def test_encoding_refuses_what_a_batch_cannot_carry(change: dict[str, object], error: str) -> None:
    with pytest.raises(EncodeError, match=error):
        encode_batches([GOLDEN, dataclasses.replace(GOLDEN, **change)], SECRET)  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="secret"):
        encode_batches([GOLDEN], b"")


def test_version_1_datagrams_still_decode() -> None:
    assert decode_datagram(encode(GOLDEN, SECRET), SECRET) == [GOLDEN]


def test_verdicts_on_damaged_batches() -> None:
    (good,) = encode_batches(samples_of("node-7", 3), SECRET)
    signed = good[:-TAG_BYTES]
    assert reason_of(good[:-1]) is DropReason.TRUNCATED  # tag cut
    assert reason_of(good[:20]) is DropReason.TRUNCATED  # entry cut
    assert reason_of(good[:4]) is DropReason.TRUNCATED  # header cut
    assert reason_of(good + b"x") is DropReason.MALFORMED  # trailing byte
    assert reason_of(good + bytes(MAX_DATAGRAM_BYTES)) is DropReason.OVERSIZED
    assert reason_of(signed + bytes(TAG_BYTES)) is DropReason.BAD_SIGNATURE
    with pytest.raises(DecodeError) as info:
        decode_batch(good, b"another-key")
    assert info.value.reason is DropReason.BAD_SIGNATURE
    bumped = bytearray(good)
    bumped[2] = 3
    assert reason_of(bytes(bumped)) is DropReason.BAD_VERSION


def test_signed_but_invalid_contents_are_named() -> None:
    (good,) = encode_batches(samples_of("node-7", 1), SECRET)
    entry = 5 + len("node-7")

    def resigned(position: int, value: int) -> bytes:
        body = bytearray(good[:-TAG_BYTES])
        body[position] = value
        return sign(bytes(body))

    assert reason_of(resigned(entry, 9)) is DropReason.BAD_KIND
    assert reason_of(resigned(entry, MessageKind.EXITED)) is DropReason.MALFORMED  # lifecycle
    assert reason_of(resigned(entry + 1, 0x80)) is DropReason.MALFORMED  # unknown flag
    empty = sign(b"FM" + bytes((BATCH_VERSION, 0, 1)) + b"n")
    assert reason_of(empty) is DropReason.MALFORMED  # no entries
    exit_code_at = len(good) - TAG_BYTES - 4
    assert reason_of(resigned(exit_code_at + 3, 1)) is DropReason.MALFORMED  # exit code 1


@settings(max_examples=1000)
@given(st.binary(max_size=MAX_DATAGRAM_BYTES + 10))
def test_random_version_2_bytes_raise_only_decode_error(tail: bytes) -> None:
    data = b"FM" + bytes((BATCH_VERSION,)) + tail
    with contextlib.suppress(DecodeError):
        decode_datagram(data, SECRET)


@settings(max_examples=150)
@given(node_samples(), st.data())
def test_damaged_batches_are_rejected(samples: list[MeterMessage], data: st.DataObject) -> None:
    """A flipped byte anywhere is caught (by framing or by the tag): nothing forged passes."""
    (datagram, *_) = encode_batches(samples, SECRET)
    position = data.draw(st.integers(0, len(datagram) - 1))
    damaged = bytearray(datagram)
    damaged[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(DecodeError):
        decode_datagram(bytes(damaged), SECRET)


@settings(max_examples=500)
@given(st.data())
def test_signed_garbage_raises_only_decode_error(data: st.DataObject) -> None:
    """Past the tag (a key holder's bytes): any damage gives messages or a DecodeError."""
    (datagram,) = encode_batches(samples_of("node-7", 3), SECRET)
    body = bytearray(datagram[:-TAG_BYTES])
    for _ in range(data.draw(st.integers(1, 6))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_datagram(sign(bytes(body)), SECRET)
    except DecodeError:
        return
    assert all(m.kind is MessageKind.SAMPLE for m in decoded)
