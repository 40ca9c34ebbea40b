"""Meter protocol version 2: several SAMPLEs of one node in one signed datagram.

An agent samples every run on its node each tick; one datagram per run made the meter
server pay a ``recv``, an HMAC and a header parse per sample (about half its CPU a sample).
Version 2 packs a tick's samples into datagrams of at most ``MAX_DATAGRAM_BYTES`` with one
tag each. Lifecycle messages and FINAL repeats stay version 1 (one per datagram). Pure
functions; ``decode_batch`` raises only ``DecodeError``. Layout (docs/METER_PROTOCOL.md)::

    0        2  magic  b"FM"
    2        1  version (2)
    3        1  C = entry count (1..255)
    4        1  N = node length
    5        N  node      UTF-8
    then C entries, each:
    +0       1  kind (SAMPLE only)
    +1       1  flags (bit 0 = FINAL)
    +2       1  R = run id length
    +3       1  T = tenant length
    +4       R  run id    UTF-8
    +4+R     T  tenant    UTF-8
    +4+R+T  52  seq … exit_code, as in version 1
    end     16  tag = HMAC-SHA256(secret, bytes[0 : end])[:16]
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterable
from typing import Final

from meter.protocol import (
    _FIXED,
    _KNOWN_FLAGS,
    FLAG_FINAL,
    MAGIC,
    MAX_DATAGRAM_BYTES,
    MAX_NODE_BYTES,
    MAX_RUN_ID_BYTES,
    MAX_TENANT_BYTES,
    TAG_BYTES,
    DecodeError,
    DropReason,
    EncodeError,
    MessageKind,
    MeterMessage,
    _decode_strings,
    _tag,
    checked_secret,
    decode,
    encoded_parts,
)

BATCH_VERSION: Final = 2
BATCH_VERSION_BYTE: Final = bytes((BATCH_VERSION,))  # byte 2 of a version-2 datagram
BATCH_HEADER_BYTES: Final = 5  # magic, version, count, node length
ENTRY_HEADER_BYTES: Final = 4  # kind, flags, run id length, tenant length
MAX_ENTRIES: Final = 255
_FIXED_BYTES: Final = _FIXED.size
_ENTRY_HEADER: Final = struct.Struct(">BBBB")
_KINDS: Final = frozenset(kind.value for kind in MessageKind)


def encode_batches(messages: Iterable[MeterMessage], secret: bytes) -> list[bytes]:
    """SAMPLEs of one node as few version-2 datagrams as fit (in order, each at most
    ``MAX_DATAGRAM_BYTES``). Raises ``EncodeError`` for an invalid message, another kind
    or a second node; nothing is returned then."""
    secret = checked_secret(secret)
    node: bytes | None = None
    entries: list[bytes] = []
    for msg in messages:
        kind, flags, msg_node, run_id, tenant, fixed = encoded_parts(msg)
        if kind != MessageKind.SAMPLE:
            raise EncodeError(f"a batch carries SAMPLEs only, not {msg.kind.name}")
        if node is not None and msg_node != node:
            raise EncodeError("a batch carries the samples of one node")
        node = msg_node
        header = _ENTRY_HEADER.pack(kind, flags, len(run_id), len(tenant))
        entries.append(b"".join((header, run_id, tenant, fixed)))
    if node is None:
        return []
    room = MAX_DATAGRAM_BYTES - BATCH_HEADER_BYTES - len(node) - TAG_BYTES
    datagrams: list[bytes] = []
    start, used = 0, 0
    for index, entry in enumerate(entries):
        if index > start and (used + len(entry) > room or index - start == MAX_ENTRIES):
            datagrams.append(_signed(node, entries[start:index], secret))
            start, used = index, 0
        used += len(entry)
    datagrams.append(_signed(node, entries[start:], secret))
    return datagrams


def _signed(node: bytes, entries: list[bytes], secret: bytes) -> bytes:
    header = MAGIC + bytes((BATCH_VERSION, len(entries), len(node)))
    signed = b"".join((header, node, *entries))
    return signed + _tag(secret, signed)


def entries_end(data: bytes) -> int:
    """Where the tag starts, from the (unauthenticated) framing; raises TRUNCATED or
    MALFORMED (trailing bytes) like version 1. ``data`` is a version-2 datagram of at most
    ``MAX_DATAGRAM_BYTES`` with magic and version checked."""
    size = len(data)
    limit = size - TAG_BYTES
    if size < BATCH_HEADER_BYTES:
        raise DecodeError(DropReason.TRUNCATED, f"{size} bytes < {BATCH_HEADER_BYTES}-byte header")
    pos = BATCH_HEADER_BYTES + data[4]
    for index in range(data[3]):
        if pos + ENTRY_HEADER_BYTES > limit:
            raise DecodeError(DropReason.TRUNCATED, f"entry {index} cut off at byte {pos}")
        pos += ENTRY_HEADER_BYTES + data[pos + 2] + data[pos + 3] + _FIXED_BYTES
    if pos > limit:
        raise DecodeError(DropReason.TRUNCATED, f"{size} bytes < {pos + TAG_BYTES} from header")
    if pos < limit:
        raise DecodeError(DropReason.MALFORMED, f"{limit - pos} trailing bytes")
    return pos


def decode_batch(data: bytes, secret: bytes) -> list[MeterMessage]:
    """Authenticate and parse a version-2 datagram whose magic and version were checked
    (``decode_datagram`` dispatches here). Framing (TRUNCATED, MALFORMED), then
    the tag (BAD_SIGNATURE), then the contents: a datagram is accepted or dropped whole."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise DecodeError(DropReason.OVERSIZED, f"{len(data)} bytes > {MAX_DATAGRAM_BYTES}")
    end = entries_end(data)
    if not secret or not hmac.compare_digest(
        _tag(bytes(secret), bytes(data[:end])), bytes(data[end:])
    ):
        raise DecodeError(DropReason.BAD_SIGNATURE, "HMAC tag mismatch")
    # Authenticated from here on: failures mean a key holder sent something invalid.
    count, node_len = data[3], data[4]
    if count == 0:
        raise DecodeError(DropReason.MALFORMED, "a batch with no entries")
    (node,), pos = _decode_strings(data, BATCH_HEADER_BYTES, (("node", node_len, MAX_NODE_BYTES),))
    messages = []
    for _ in range(count):
        message, pos = _entry(data, pos, node)
        messages.append(message)
    return messages


def _entry(data: bytes, pos: int, node: str) -> tuple[MeterMessage, int]:
    kind_raw, flags, run_id_len, tenant_len = _ENTRY_HEADER.unpack_from(data, pos)
    if kind_raw != MessageKind.SAMPLE:
        reason = DropReason.MALFORMED if kind_raw in _KINDS else DropReason.BAD_KIND
        raise DecodeError(reason, f"kind {kind_raw} in a batch (SAMPLEs only)")
    if flags & ~_KNOWN_FLAGS:
        raise DecodeError(DropReason.MALFORMED, f"unknown flags {flags:#04x}")
    (run_id, tenant), pos = _decode_strings(
        data,
        pos + ENTRY_HEADER_BYTES,
        (("run_id", run_id_len, MAX_RUN_ID_BYTES), ("tenant", tenant_len, MAX_TENANT_BYTES)),
    )
    seq, time_unix_ns, cpu_ns, memory_bytes, mem_hi, mem_lo, exit_code = _FIXED.unpack_from(
        data, pos
    )
    if exit_code != 0:
        raise DecodeError(DropReason.MALFORMED, f"exit_code {exit_code} on SAMPLE")
    message = MeterMessage(
        kind=MessageKind.SAMPLE, node=node, run_id=run_id, tenant=tenant, seq=seq,
        time_unix_ns=time_unix_ns, cpu_ns=cpu_ns, memory_bytes=memory_bytes,
        memory_byte_ms=(mem_hi << 64) | mem_lo, final=bool(flags & FLAG_FINAL),
    )  # fmt: skip
    return message, pos + _FIXED_BYTES


def decode_datagram(data: bytes, secret: bytes) -> list[MeterMessage]:
    """Any datagram the server may receive: version 2 here, everything else to version 1's
    ``decode`` (which names the drop reason of unknown versions). Raises only
    ``DecodeError``."""
    if len(data) <= MAX_DATAGRAM_BYTES and data[2:3] == BATCH_VERSION_BYTE and data[:2] == MAGIC:
        return decode_batch(data, secret)
    return [decode(data, secret)]
