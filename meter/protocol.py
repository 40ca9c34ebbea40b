"""Meter protocol: one HMAC-signed UDP datagram per usage report, agent -> server.

Pure functions, no I/O. ``encode`` validates a :class:`MeterMessage` and returns the
datagram; ``decode`` authenticates and parses a datagram and raises only
:class:`DecodeError`, whose ``reason`` (a :class:`DropReason`) the server counts.
The wire format is specified in docs/METER_PROTOCOL.md; keep the two in step.

Layout, version 1 (big-endian; N, R, T are the string lengths from the header)::

    0        2  magic  b"FM"
    2        1  version (1)
    3        1  kind (MessageKind)
    4        1  flags (bit 0 = FINAL, other bits zero)
    5        1  N = node length
    6        1  R = run id length
    7        1  T = tenant length
    8        N  node      UTF-8
    8+N      R  run id    UTF-8
    8+N+R    T  tenant    UTF-8
    S=8+N+R+T
    S        8  seq              uint64
    S+8      8  time_unix_ns     uint64
    S+16     8  cpu_ns           uint64  cumulative
    S+24     8  memory_bytes     uint64  current
    S+32    16  memory_byte_ms   uint128 cumulative
    S+48     4  exit_code        int32   (EXITED only, else 0)
    S+52    16  tag = HMAC-SHA256(secret, bytes[0 : S+52])[:16]
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "FLAG_FINAL",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_DATAGRAM_BYTES",
    "MAX_ENCODED_BYTES",
    "MAX_NODE_BYTES",
    "MAX_RUN_ID_BYTES",
    "MAX_TENANT_BYTES",
    "MIN_ENCODED_BYTES",
    "TAG_BYTES",
    "VERSION",
    "DecodeError",
    "DropReason",
    "EncodeError",
    "MessageKind",
    "MeterMessage",
    "decode",
    "encode",
]

MAGIC: Final = b"FM"
"""First two bytes of every datagram ("FaaS Meter")."""

VERSION: Final = 1
"""The only wire version this module speaks; any other version is dropped as BAD_VERSION."""

MAX_DATAGRAM_BYTES: Final = 1400
"""Hard ceiling on a datagram (fits one Ethernet frame with IPv6 + UDP headers to spare).

A server should ``recvfrom(MAX_DATAGRAM_BYTES + 1)`` so that a larger datagram arrives
with more than ``MAX_DATAGRAM_BYTES`` bytes and is dropped as OVERSIZED.
"""

TAG_BYTES: Final = 16
"""HMAC-SHA256 truncated to its first 128 bits (as in RFC 4868's HMAC-SHA-256-128)."""

MAX_NODE_BYTES: Final = 64
MAX_RUN_ID_BYTES: Final = 64
MAX_TENANT_BYTES: Final = 254
"""Longest e-mail address (RFC 5321 path limit of 256 minus the angle brackets)."""

FLAG_FINAL: Final = 0x01
"""Flags bit 0: the last message the agent sends for this run; counters are the run totals."""

_KNOWN_FLAGS: Final = FLAG_FINAL

_HEADER: Final = struct.Struct(">2sBBBBBB")  # magic, version, kind, flags, len(node/run/tenant)
_FIXED: Final = struct.Struct(">QQQQQQi")  # seq, time, cpu, mem, mem·ms hi, mem·ms lo, exit

HEADER_BYTES: Final = _HEADER.size  # 8
_FIXED_BYTES: Final = _FIXED.size  # 52
MIN_ENCODED_BYTES: Final = HEADER_BYTES + 3 + _FIXED_BYTES + TAG_BYTES  # 79, 1-byte strings
MAX_ENCODED_BYTES: Final = (  # 458, longest strings
    HEADER_BYTES + MAX_NODE_BYTES + MAX_RUN_ID_BYTES + MAX_TENANT_BYTES + _FIXED_BYTES + TAG_BYTES
)
assert MAX_ENCODED_BYTES <= MAX_DATAGRAM_BYTES

_U64_MAX: Final = (1 << 64) - 1
_U128_MAX: Final = (1 << 128) - 1
_I32_MIN: Final = -(1 << 31)
_I32_MAX: Final = (1 << 31) - 1
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


class MessageKind(enum.IntEnum):
    """What a datagram reports. Every kind carries the full counter snapshot."""

    SAMPLE = 1
    """Periodic usage sample of a running container."""
    STARTED = 2
    """Lifecycle: the agent saw the run's container start."""
    EXITED = 3
    """Lifecycle: the agent saw the run's container exit; carries ``exit_code``."""


class DropReason(enum.StrEnum):
    """Why the server dropped a datagram; the values are stable metric label values."""

    OVERSIZED = "oversized"
    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    BAD_KIND = "bad_kind"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    REPLAYED = "replayed"
    """Never raised by :func:`decode`: the server's replay check uses it (a seq below the
    newest accepted for the run: a replay, or a datagram overtaken in the network)."""
    DUPLICATE = "duplicate"
    """Never raised by :func:`decode`: a copy of the newest datagram accepted for the run
    (same seq): the agent's repeated FINAL, or a datagram the network delivered twice."""


class EncodeError(ValueError):
    """A :class:`MeterMessage` (or the secret) cannot be encoded; a bug in the caller."""


class DecodeError(Exception):
    """A datagram was rejected; :func:`decode` raises nothing else."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason: Final = reason
        self.detail: Final = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterMessage:
    """One usage report. Counters are cumulative for the run, as of ``time_unix_ns``.

    ``encode`` validates; constructing an instance does not.
    """

    kind: MessageKind
    node: str
    """Name of the node the agent runs on (1..64 UTF-8 bytes)."""
    run_id: str
    """The run being metered (1..64 UTF-8 bytes)."""
    tenant: str
    """The tenant billed for the run, an e-mail address (1..254 UTF-8 bytes)."""
    seq: int
    """Per-run sequence number, uint64, increasing across all kinds; the server drops repeats."""
    time_unix_ns: int
    """When the counters were read: Unix epoch nanoseconds, uint64 (good until 2554)."""
    cpu_ns: int
    """CPU time used by the run so far, nanoseconds, uint64 (584 years of one core)."""
    memory_bytes: int
    """Memory in use at ``time_unix_ns``, bytes, uint64."""
    memory_byte_ms: int
    """Integral of memory over time since the run started, byte-milliseconds, uint128."""
    final: bool = False
    """The last message for this run (SAMPLE or EXITED only): counters are the run totals."""
    exit_code: int | None = None
    """Container exit code (int32): required for EXITED, must be None for other kinds."""


# --------------------------------------------------------------------------- encoding


def _tag(secret: bytes, signed: bytes) -> bytes:
    return hmac.digest(secret, signed, hashlib.sha256)[:TAG_BYTES]


def _encode_str(name: str, value: object, max_bytes: int) -> bytes:
    if not isinstance(value, str):
        raise EncodeError(f"{name} must be str, not {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{name} is not encodable as UTF-8: {exc.reason}") from None
    if not 1 <= len(raw) <= max_bytes:
        raise EncodeError(f"{name} must be 1..{max_bytes} UTF-8 bytes, got {len(raw)}")
    if _CONTROL.search(value):
        raise EncodeError(f"{name} contains a control character")
    return raw


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodeError(f"{name} must be int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise EncodeError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def encode(msg: MeterMessage, secret: bytes) -> bytes:
    """Validate ``msg`` and return its signed datagram (at most ``MAX_ENCODED_BYTES``).

    Raises :class:`EncodeError` if a field is out of range or ``secret`` is empty.
    """
    secret = checked_secret(secret)
    kind, flags, node, run_id, tenant, fixed = encoded_parts(msg)
    signed = b"".join(
        (
            _HEADER.pack(MAGIC, VERSION, kind, flags, len(node), len(run_id), len(tenant)),
            node,
            run_id,
            tenant,
            fixed,
        )
    )
    datagram = signed + _tag(secret, signed)
    if len(datagram) > MAX_DATAGRAM_BYTES:  # impossible with the limits above; kept as a guard
        raise EncodeError(f"datagram is {len(datagram)} bytes > {MAX_DATAGRAM_BYTES}")
    return datagram


def checked_secret(secret: object) -> bytes:
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise EncodeError("secret must be non-empty bytes")
    return bytes(secret)


def encoded_parts(msg: MeterMessage) -> tuple[int, int, bytes, bytes, bytes, bytes]:
    """``msg`` validated, as wire pieces: kind, flags, node, run id, tenant and the packed
    fixed fields (seq … exit_code). Shared by both versions' encoders."""
    if not isinstance(msg.kind, MessageKind):
        raise EncodeError(f"kind must be a MessageKind, not {msg.kind!r}")
    if not isinstance(msg.final, bool):
        raise EncodeError(f"final must be bool, not {type(msg.final).__name__}")
    if msg.final and msg.kind is MessageKind.STARTED:
        raise EncodeError("final is not allowed on STARTED")
    if msg.kind is MessageKind.EXITED:
        if msg.exit_code is None:
            raise EncodeError("EXITED requires exit_code")
        exit_code = _check_int("exit_code", msg.exit_code, _I32_MIN, _I32_MAX)
    elif msg.exit_code is not None:
        raise EncodeError(f"exit_code is only allowed on EXITED, not {msg.kind.name}")
    else:
        exit_code = 0

    node = _encode_str("node", msg.node, MAX_NODE_BYTES)
    run_id = _encode_str("run_id", msg.run_id, MAX_RUN_ID_BYTES)
    tenant = _encode_str("tenant", msg.tenant, MAX_TENANT_BYTES)
    memory_byte_ms = _check_int("memory_byte_ms", msg.memory_byte_ms, 0, _U128_MAX)
    fixed = _FIXED.pack(
        _check_int("seq", msg.seq, 0, _U64_MAX),
        _check_int("time_unix_ns", msg.time_unix_ns, 0, _U64_MAX),
        _check_int("cpu_ns", msg.cpu_ns, 0, _U64_MAX),
        _check_int("memory_bytes", msg.memory_bytes, 0, _U64_MAX),
        memory_byte_ms >> 64,
        memory_byte_ms & _U64_MAX,
        exit_code,
    )
    return msg.kind, FLAG_FINAL if msg.final else 0, node, run_id, tenant, fixed


# --------------------------------------------------------------------------- decoding


def _decode_str(name: str, raw: bytes) -> str:
    # Lengths (non-zero, within the maximum) were checked by the caller.
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(DropReason.MALFORMED, f"{name} is not valid UTF-8") from None
    if _CONTROL.search(value):
        raise DecodeError(DropReason.MALFORMED, f"{name} contains a control character")
    return value


def _decode_strings(
    data: bytes, pos: int, fields: tuple[tuple[str, int, int], ...]
) -> tuple[list[str], int]:
    """The strings laid out back to back from ``pos``, as ``(name, length, limit)`` say
    (every length checked before any is decoded), and where they end. Both versions'
    decoders; the framing was checked by the caller, so the bytes are there."""
    for name, length, limit in fields:
        if not 1 <= length <= limit:
            raise DecodeError(DropReason.MALFORMED, f"{name} length {length} not in 1..{limit}")
    values = []
    for name, length, _ in fields:
        values.append(_decode_str(name, bytes(data[pos : pos + length])))
        pos += length
    return values, pos


def decode(data: bytes, secret: bytes) -> MeterMessage:
    """Authenticate and parse one datagram.

    Checks run in this order, so the first failing one names the :class:`DropReason`:
    size (OVERSIZED), magic (BAD_MAGIC), version (BAD_VERSION), header and the total
    length it implies (TRUNCATED when short, MALFORMED on trailing bytes), the HMAC tag
    (BAD_SIGNATURE; compared in constant time before any body field is parsed), then the
    authenticated contents (BAD_KIND, MALFORMED). Raises only :class:`DecodeError`.
    An empty ``secret`` authenticates nothing: every datagram fails with BAD_SIGNATURE.
    """
    size = len(data)
    if size > MAX_DATAGRAM_BYTES:
        raise DecodeError(DropReason.OVERSIZED, f"{size} bytes > {MAX_DATAGRAM_BYTES}")
    if size < len(MAGIC):
        raise DecodeError(DropReason.TRUNCATED, f"{size} bytes, no magic")
    if data[: len(MAGIC)] != MAGIC:
        raise DecodeError(DropReason.BAD_MAGIC, f"magic {bytes(data[:2]).hex()}")
    if size < len(MAGIC) + 1:
        raise DecodeError(DropReason.TRUNCATED, f"{size} bytes, no version")
    if data[2] != VERSION:
        raise DecodeError(DropReason.BAD_VERSION, f"version {data[2]}")
    if size < HEADER_BYTES:
        raise DecodeError(DropReason.TRUNCATED, f"{size} bytes < {HEADER_BYTES}-byte header")

    _, _, kind_raw, flags, node_len, run_id_len, tenant_len = _HEADER.unpack_from(data)
    signed_len = HEADER_BYTES + node_len + run_id_len + tenant_len + _FIXED_BYTES
    expected = signed_len + TAG_BYTES
    if size < expected:
        raise DecodeError(DropReason.TRUNCATED, f"{size} bytes < {expected} from header")
    if size > expected:
        raise DecodeError(DropReason.MALFORMED, f"{size - expected} trailing bytes")

    if not secret or not hmac.compare_digest(
        _tag(bytes(secret), bytes(data[:signed_len])), bytes(data[signed_len:])
    ):
        raise DecodeError(DropReason.BAD_SIGNATURE, "HMAC tag mismatch")

    # Authenticated from here on: failures mean a key holder sent something invalid.
    try:
        kind = MessageKind(kind_raw)
    except ValueError:
        raise DecodeError(DropReason.BAD_KIND, f"kind {kind_raw}") from None
    if flags & ~_KNOWN_FLAGS:
        raise DecodeError(DropReason.MALFORMED, f"unknown flags {flags:#04x}")
    final = bool(flags & FLAG_FINAL)
    if final and kind is MessageKind.STARTED:
        raise DecodeError(DropReason.MALFORMED, "FINAL flag on STARTED")
    (node, run_id, tenant), pos = _decode_strings(
        data,
        HEADER_BYTES,
        (
            ("node", node_len, MAX_NODE_BYTES),
            ("run_id", run_id_len, MAX_RUN_ID_BYTES),
            ("tenant", tenant_len, MAX_TENANT_BYTES),
        ),
    )
    seq, time_unix_ns, cpu_ns, memory_bytes, mem_hi, mem_lo, exit_code = _FIXED.unpack_from(
        data, pos
    )
    if kind is not MessageKind.EXITED and exit_code != 0:
        raise DecodeError(DropReason.MALFORMED, f"exit_code {exit_code} on {kind.name}")

    return MeterMessage(
        kind=kind,
        node=node,
        run_id=run_id,
        tenant=tenant,
        seq=seq,
        time_unix_ns=time_unix_ns,
        cpu_ns=cpu_ns,
        memory_bytes=memory_bytes,
        memory_byte_ms=(mem_hi << 64) | mem_lo,
        final=final,
        exit_code=exit_code if kind is MessageKind.EXITED else None,
    )
