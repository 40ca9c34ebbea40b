"""The meter protocol: round trips, a golden vector, validation, and fuzzing of decode."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meter.protocol import (
    FLAG_FINAL,
    HEADER_BYTES,
    MAGIC,
    MAX_DATAGRAM_BYTES,
    MAX_ENCODED_BYTES,
    MAX_NODE_BYTES,
    MAX_RUN_ID_BYTES,
    MAX_TENANT_BYTES,
    MIN_ENCODED_BYTES,
    TAG_BYTES,
    VERSION,
    DecodeError,
    DropReason,
    EncodeError,
    MessageKind,
    MeterMessage,
    decode,
    encode,
)

U64_MAX = 2**64 - 1
U128_MAX = 2**128 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
FIXED_BYTES = 52
DOC = Path(__file__).resolve().parents[2] / "docs" / "METER_PROTOCOL.md"

SECRET = b"example-secret-do-not-use"

# The example in docs/METER_PROTOCOL.md; its bytes are pinned by GOLDEN_HEX below.
GOLDEN = MeterMessage(
    kind=MessageKind.SAMPLE,
    node="node-7",
    run_id="0b9c7a52-3f1e-4d2a-9c8e-5b7f6a1d2e3f",
    tenant="alice@example.com",
    seq=42,
    time_unix_ns=1_767_225_600_000_000_000,  # 2026-01-01T00:00:00Z
    cpu_ns=1_250_000_000,  # 1.25 CPU-seconds so far
    memory_bytes=268_435_456,  # 256 MiB now
    memory_byte_ms=2_684_354_560_000,  # 256 MiB for 10 s so far
)
GOLDEN_HEX = (
    "464d0101000624116e6f64652d3730623963376135322d336631652d346432612d396338652d3562"
    "37663661316432653366616c696365406578616d706c652e636f6d000000000000002a18867251ed"
    "fa0000000000004a817c8000000000100000000000000000000000000002710000000000000000f6"
    "8f5642bebf9ddab8c4b66b768e17ee"
)


def sign(signed: bytes, secret: bytes = SECRET) -> bytes:
    """Append the protocol's tag to arbitrary bytes (to reach the post-signature checks)."""
    return signed + hmac.new(secret, signed, hashlib.sha256).digest()[:TAG_BYTES]


def reason_of(data: bytes, secret: bytes = SECRET) -> DropReason:
    with pytest.raises(DecodeError) as info:
        decode(data, secret)
    assert isinstance(info.value.reason, DropReason)
    return info.value.reason


def message(**overrides: Any) -> MeterMessage:
    return dataclasses.replace(GOLDEN, **overrides)


# --------------------------------------------------------------------------- strategies

_CONTROL = "".join(map(chr, [*range(0x20), 0x7F]))
_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters=_CONTROL)


def utf8_text(max_bytes: int) -> st.SearchStrategy[str]:
    """Any valid field text, cut (on a character boundary) to at most ``max_bytes``."""

    def fit(s: str) -> str:
        return s.encode()[:max_bytes].decode("utf-8", "ignore")

    return st.one_of(
        st.text(_CHARS, min_size=1, max_size=max_bytes).map(fit),
        st.text(st.sampled_from("ab.-@é€😀"), min_size=max_bytes, max_size=max_bytes).map(fit),
    )


@st.composite
def messages(draw: st.DrawFn) -> MeterMessage:
    kind = draw(st.sampled_from(MessageKind))
    return MeterMessage(
        kind=kind,
        node=draw(utf8_text(MAX_NODE_BYTES)),
        run_id=draw(utf8_text(MAX_RUN_ID_BYTES)),
        tenant=draw(utf8_text(MAX_TENANT_BYTES)),
        seq=draw(st.integers(0, U64_MAX)),
        time_unix_ns=draw(st.integers(0, U64_MAX)),
        cpu_ns=draw(st.integers(0, U64_MAX)),
        memory_bytes=draw(st.integers(0, U64_MAX)),
        memory_byte_ms=draw(st.integers(0, U128_MAX)),
        final=draw(st.booleans()) if kind is not MessageKind.STARTED else False,
        exit_code=draw(st.integers(I32_MIN, I32_MAX)) if kind is MessageKind.EXITED else None,
    )


secrets = st.binary(min_size=1, max_size=100)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "msg",
    [
        GOLDEN,
        message(final=True),
        message(kind=MessageKind.STARTED, cpu_ns=0, memory_bytes=0, memory_byte_ms=0, seq=0),
        message(kind=MessageKind.EXITED, exit_code=0, final=True),
        message(kind=MessageKind.EXITED, exit_code=137),
        message(kind=MessageKind.EXITED, exit_code=I32_MIN),
        message(seq=U64_MAX, time_unix_ns=U64_MAX, cpu_ns=U64_MAX, memory_bytes=U64_MAX),
        message(memory_byte_ms=U128_MAX),
        message(memory_byte_ms=64 * 2**30 * 31 * 86_400_000),  # 64 GiB for 31 days > 2**64
        message(node="ñ", run_id="r", tenant="用户@例子.广告"),
    ],
    ids=lambda m: f"{m.kind.name}-{m.final}-{m.exit_code}",
)
def test_round_trip_examples(msg: MeterMessage) -> None:
    data = encode(msg, SECRET)
    assert decode(data, SECRET) == msg
    assert MIN_ENCODED_BYTES <= len(data) <= MAX_ENCODED_BYTES


def test_golden_vector_pins_the_wire_format() -> None:
    data = encode(GOLDEN, SECRET)
    assert data.hex() == GOLDEN_HEX
    assert len(data) == 135
    assert decode(bytes.fromhex(GOLDEN_HEX), SECRET) == GOLDEN


def test_doc_hex_dump_is_the_golden_vector() -> None:
    # Lines like "00000000  46 4d 01 01 00 06 24 11  6e 6f 64 65 2d 37 30 62  |FM....$.node-70b|"
    dump = re.findall(
        r"^[0-9a-f]{8}  ((?:[0-9a-f]{2} {1,2})+)", DOC.read_text(encoding="utf-8"), re.MULTILINE
    )
    assert "".join(line.replace(" ", "") for line in dump) == GOLDEN_HEX


def test_layout_offsets_and_tag() -> None:
    data = encode(message(kind=MessageKind.EXITED, exit_code=-1, final=True), SECRET)
    magic, version, kind, flags, n, r, t = struct.unpack_from(">2sBBBBBB", data)
    assert (magic, version, kind, flags) == (MAGIC, VERSION, MessageKind.EXITED, FLAG_FINAL)
    assert data[HEADER_BYTES : HEADER_BYTES + n] == GOLDEN.node.encode()
    assert data[HEADER_BYTES + n : HEADER_BYTES + n + r] == GOLDEN.run_id.encode()
    s = HEADER_BYTES + n + r + t
    assert data[HEADER_BYTES + n + r : s] == GOLDEN.tenant.encode()
    assert struct.unpack_from(">QQQQ", data, s) == (
        GOLDEN.seq,
        GOLDEN.time_unix_ns,
        GOLDEN.cpu_ns,
        GOLDEN.memory_bytes,
    )
    assert int.from_bytes(data[s + 32 : s + 48], "big") == GOLDEN.memory_byte_ms
    assert struct.unpack_from(">i", data, s + 48) == (-1,)
    assert len(data) == s + FIXED_BYTES + TAG_BYTES
    full = hmac.new(SECRET, data[:-TAG_BYTES], hashlib.sha256).digest()
    assert data[-TAG_BYTES:] == full[:TAG_BYTES]


@given(messages(), secrets)
def test_round_trip_all_valid_messages(msg: MeterMessage, secret: bytes) -> None:
    data = encode(msg, secret)
    assert len(data) <= MAX_ENCODED_BYTES <= MAX_DATAGRAM_BYTES
    assert decode(data, secret) == msg


def test_max_size_strings_fit_in_one_datagram() -> None:
    msg = message(
        node="n" * MAX_NODE_BYTES,
        run_id="é" * (MAX_RUN_ID_BYTES // 2),
        tenant="😀" * 63 + "@@",  # 254 bytes
        memory_byte_ms=U128_MAX,
    )
    data = encode(msg, SECRET)
    assert len(data) == MAX_ENCODED_BYTES == 458
    assert len(data) <= MAX_DATAGRAM_BYTES
    assert decode(data, SECRET) == msg


def test_min_size() -> None:
    data = encode(message(node="n", run_id="r", tenant="t"), SECRET)
    assert len(data) == MIN_ENCODED_BYTES == 79


# --------------------------------------------------------------------------- encode errors


@pytest.mark.parametrize(
    "overrides",
    [
        {"node": ""},
        {"node": "n" * (MAX_NODE_BYTES + 1)},
        {"node": "é" * (MAX_NODE_BYTES // 2 + 1)},  # 33 characters but 66 bytes
        {"run_id": ""},
        {"run_id": "r" * (MAX_RUN_ID_BYTES + 1)},
        {"tenant": ""},
        {"tenant": "t" * (MAX_TENANT_BYTES + 1)},
        {"tenant": "\ud800@example.com"},  # lone surrogate: not UTF-8
        {"tenant": "alice\x00@example.com"},
        {"node": "node\n7"},
        {"run_id": "run\x7f"},
        {"node": b"node-7"},
        {"seq": -1},
        {"seq": U64_MAX + 1},
        {"seq": True},
        {"seq": 1.0},
        {"time_unix_ns": -1},
        {"time_unix_ns": U64_MAX + 1},
        {"cpu_ns": U64_MAX + 1},
        {"memory_bytes": -1},
        {"memory_byte_ms": U128_MAX + 1},
        {"memory_byte_ms": -1},
        {"kind": 1},
        {"final": 1},
        {"kind": MessageKind.STARTED, "final": True},
        {"kind": MessageKind.SAMPLE, "exit_code": 0},
        {"kind": MessageKind.STARTED, "exit_code": 1},
        {"kind": MessageKind.EXITED},
        {"kind": MessageKind.EXITED, "exit_code": I32_MAX + 1},
        {"kind": MessageKind.EXITED, "exit_code": I32_MIN - 1},
        {"kind": MessageKind.EXITED, "exit_code": False},
    ],
    ids=repr,
)
def test_encode_rejects_invalid_fields(overrides: dict[str, Any]) -> None:
    with pytest.raises(EncodeError):
        encode(message(**overrides), SECRET)


def test_encode_rejects_empty_secret() -> None:
    with pytest.raises(EncodeError):
        encode(GOLDEN, b"")


def test_encode_error_is_a_value_error() -> None:
    assert issubclass(EncodeError, ValueError)


# --------------------------------------------------------------------------- decode errors


def test_decode_error_carries_reason() -> None:
    with pytest.raises(DecodeError) as info:
        decode(b"", SECRET)
    assert info.value.reason is DropReason.TRUNCATED
    assert str(info.value).startswith("truncated:")
    assert not issubclass(DecodeError, ValueError)


def test_drop_reasons_are_stable_labels() -> None:
    assert {r.name: r.value for r in DropReason} == {
        "OVERSIZED": "oversized",
        "TRUNCATED": "truncated",
        "BAD_MAGIC": "bad_magic",
        "BAD_VERSION": "bad_version",
        "BAD_KIND": "bad_kind",
        "MALFORMED": "malformed",
        "BAD_SIGNATURE": "bad_signature",
        "REPLAYED": "replayed",
        "DUPLICATE": "duplicate",
    }


def test_wrong_secret_is_bad_signature() -> None:
    data = encode(GOLDEN, SECRET)
    assert reason_of(data, b"another-secret") is DropReason.BAD_SIGNATURE
    assert reason_of(data, SECRET[:-1]) is DropReason.BAD_SIGNATURE


def test_empty_secret_authenticates_nothing() -> None:
    # Even a datagram whose tag was computed with the empty key.
    data = encode(GOLDEN, SECRET)
    forged = sign(data[:-TAG_BYTES], b"")
    assert reason_of(forged, b"") is DropReason.BAD_SIGNATURE


@given(messages(), st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_wrong_secret_is_bad_signature_for_any_message(
    msg: MeterMessage, secret: bytes, other: bytes
) -> None:
    # Equal-length keys: HMAC zero-pads short keys, so b"k" and b"k\x00" are the same key.
    if secret != other:
        assert reason_of(encode(msg, secret), other) is DropReason.BAD_SIGNATURE


def test_every_truncation_is_truncated() -> None:
    for msg in (GOLDEN, message(kind=MessageKind.EXITED, exit_code=3)):
        data = encode(msg, SECRET)
        for n in range(len(data)):
            assert reason_of(data[:n]) is DropReason.TRUNCATED, n


def test_trailing_bytes_are_malformed() -> None:
    data = encode(GOLDEN, SECRET)
    assert reason_of(data + b"\x00") is DropReason.MALFORMED
    # Even if the extra bytes are a valid tag over everything before them.
    assert reason_of(sign(data)) is DropReason.MALFORMED


@pytest.mark.parametrize("size", [MAX_DATAGRAM_BYTES + 1, 2000, 65_507])
def test_oversized(size: int) -> None:
    data = encode(GOLDEN, SECRET)
    assert reason_of(data + b"\x00" * (size - len(data))) is DropReason.OVERSIZED
    assert reason_of(b"\xff" * size) is DropReason.OVERSIZED


def test_exactly_max_datagram_bytes_is_not_oversized() -> None:
    data = encode(GOLDEN, SECRET)
    padded = data + b"\x00" * (MAX_DATAGRAM_BYTES - len(data))
    assert reason_of(padded) is DropReason.MALFORMED


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"F", DropReason.TRUNCATED),
        (b"FM", DropReason.TRUNCATED),
        (b"FM\x01\x01", DropReason.TRUNCATED),
        (b"XM\x01", DropReason.BAD_MAGIC),
        (b"fm" + bytes(200), DropReason.BAD_MAGIC),
        (b"FM\x00", DropReason.BAD_VERSION),
        (b"FM\x02", DropReason.BAD_VERSION),
        (b"FM\xff" + bytes(200), DropReason.BAD_VERSION),
        (
            b"FM\x01\x01\x00\x01\x01\x01" + bytes(3 + FIXED_BYTES + TAG_BYTES),
            DropReason.BAD_SIGNATURE,
        ),
    ],
)
def test_structural_rejections(data: bytes, reason: DropReason) -> None:
    assert reason_of(data) is reason


def test_unknown_version_with_valid_tag_is_bad_version() -> None:
    signed = encode(GOLDEN, SECRET)[:-TAG_BYTES]
    future = sign(signed[:2] + bytes([VERSION + 1]) + signed[3:])
    assert reason_of(future) is DropReason.BAD_VERSION


def expected_flip_reason(data: bytes, byte: int, bit: int) -> set[DropReason]:
    if byte < 2:
        return {DropReason.BAD_MAGIC}
    if byte == 2:
        return {DropReason.BAD_VERSION}
    if byte in (5, 6, 7):  # a string length: a shorter total leaves trailing bytes
        return {DropReason.MALFORMED if data[byte] >> bit & 1 else DropReason.TRUNCATED}
    return {DropReason.BAD_SIGNATURE}  # kind, flags, strings, integers, tag


@pytest.mark.parametrize(
    "msg",
    [
        GOLDEN,
        message(kind=MessageKind.EXITED, exit_code=1, final=True, memory_byte_ms=U128_MAX),
        message(node="n" * 64, run_id="r" * 64, tenant="t" * 254),
    ],
    ids=["golden", "exited", "max"],
)
def test_every_single_bit_flip_is_rejected(msg: MeterMessage) -> None:
    data = encode(msg, SECRET)
    for byte in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[byte] ^= 1 << bit
            reason = reason_of(bytes(flipped))
            assert reason in expected_flip_reason(data, byte, bit), (byte, bit, reason)


@given(messages(), secrets, st.data())
def test_any_bit_flip_of_any_message_is_rejected(
    msg: MeterMessage, secret: bytes, data: st.DataObject
) -> None:
    datagram = encode(msg, secret)
    byte = data.draw(st.integers(0, len(datagram) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(datagram)
    flipped[byte] ^= 1 << bit
    reason = reason_of(bytes(flipped), secret)
    assert reason in expected_flip_reason(datagram, byte, bit)


# ------------------------------------------------------------------ authenticated but invalid


def body(
    *,
    kind: int = MessageKind.SAMPLE,
    flags: int = 0,
    node: bytes = b"node-7",
    run_id: bytes = b"run-1",
    tenant: bytes = b"a@b.c",
    exit_code: int = 0,
) -> bytes:
    header = struct.pack(
        ">2sBBBBBB", MAGIC, VERSION, kind, flags, len(node), len(run_id), len(tenant)
    )
    fixed = struct.pack(">QQQQQQi", 1, 2, 3, 4, 5, 6, exit_code)
    return header + node + run_id + tenant + fixed


def test_signed_helper_builds_a_valid_datagram() -> None:
    msg = decode(sign(body()), SECRET)
    assert (msg.node, msg.run_id, msg.tenant, msg.memory_byte_ms) == (
        "node-7",
        "run-1",
        "a@b.c",
        5 << 64 | 6,
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"kind": 0}, DropReason.BAD_KIND),
        ({"kind": 4}, DropReason.BAD_KIND),
        ({"kind": 255}, DropReason.BAD_KIND),
        ({"flags": 0x02}, DropReason.MALFORMED),
        ({"flags": 0x80 | FLAG_FINAL}, DropReason.MALFORMED),
        ({"kind": MessageKind.STARTED, "flags": FLAG_FINAL}, DropReason.MALFORMED),
        ({"exit_code": 1}, DropReason.MALFORMED),
        ({"kind": MessageKind.STARTED, "exit_code": -1}, DropReason.MALFORMED),
        ({"node": b""}, DropReason.MALFORMED),
        ({"run_id": b""}, DropReason.MALFORMED),
        ({"tenant": b""}, DropReason.MALFORMED),
        ({"node": b"n" * (MAX_NODE_BYTES + 1)}, DropReason.MALFORMED),
        ({"run_id": b"r" * (MAX_RUN_ID_BYTES + 1)}, DropReason.MALFORMED),
        ({"tenant": b"t" * (MAX_TENANT_BYTES + 1)}, DropReason.MALFORMED),
        ({"tenant": b"\xff@b.c"}, DropReason.MALFORMED),
        ({"node": b"\xc3"}, DropReason.MALFORMED),  # cut multi-byte sequence
        ({"run_id": b"\xed\xa0\x80"}, DropReason.MALFORMED),  # encoded surrogate
        ({"tenant": b"a\x00@b.c"}, DropReason.MALFORMED),
        ({"node": b"node\t7"}, DropReason.MALFORMED),
    ],
    ids=repr,
)
def test_authenticated_but_invalid_contents(fields: dict[str, Any], reason: DropReason) -> None:
    assert reason_of(sign(body(**fields))) is reason


# --------------------------------------------------------------------------- fuzzing


@settings(max_examples=500)
@given(st.binary(max_size=MAX_DATAGRAM_BYTES + 100), secrets)
def test_decode_random_bytes_raises_only_decode_error(data: bytes, secret: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, secret)


@settings(max_examples=500)
@given(st.binary(max_size=600), st.binary(min_size=5, max_size=5))
@example(rest=bytes(100), header=b"\x01\x00\x01\x01\x01")
def test_decode_random_bytes_after_magic_and_version(rest: bytes, header: bytes) -> None:
    reason = reason_of(MAGIC + bytes([VERSION]) + header + rest)
    assert reason in {DropReason.TRUNCATED, DropReason.MALFORMED, DropReason.BAD_SIGNATURE}


def string_bytes(max_bytes: int) -> st.SearchStrategy[bytes]:
    """Mostly valid field bytes, sometimes any bytes up to the uint8 length limit."""
    return st.one_of(
        utf8_text(max_bytes).map(str.encode),
        st.binary(max_size=255),
        st.sampled_from([b"", b"\x00", b"\xc3", b"\xed\xa0\x80", b"x" * (max_bytes + 1)]),
    )


fixed_fields = st.one_of(
    st.binary(min_size=FIXED_BYTES, max_size=FIXED_BYTES),
    st.tuples(*[st.integers(0, U64_MAX)] * 6, st.integers(I32_MIN, I32_MAX)).map(
        lambda values: struct.pack(">QQQQQQi", *values)
    ),
    st.tuples(*[st.integers(0, U64_MAX)] * 6).map(
        lambda values: struct.pack(">QQQQQQi", *values, 0)
    ),
)


@settings(max_examples=1000)
@given(
    st.one_of(st.sampled_from(MessageKind), st.integers(0, 255)),
    st.one_of(st.sampled_from([0, FLAG_FINAL]), st.integers(0, 255)),
    string_bytes(MAX_NODE_BYTES),
    string_bytes(MAX_RUN_ID_BYTES),
    string_bytes(MAX_TENANT_BYTES),
    fixed_fields,
)
def test_decode_signed_garbage_raises_only_decode_error_or_round_trips(
    kind: int, flags: int, node: bytes, run_id: bytes, tenant: bytes, fixed: bytes
) -> None:
    # Correctly signed, so every post-signature check is reached; decoding either fails
    # with an authenticated-content reason or yields a message that re-encodes exactly.
    header = struct.pack(
        ">2sBBBBBB", MAGIC, VERSION, kind, flags, len(node), len(run_id), len(tenant)
    )
    data = sign(header + node + run_id + tenant + fixed)
    try:
        msg = decode(data, SECRET)
    except DecodeError as exc:
        assert exc.reason in {DropReason.BAD_KIND, DropReason.MALFORMED}
    else:
        assert encode(msg, SECRET) == data  # one message, one encoding
