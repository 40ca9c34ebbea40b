"""The meter server's hot path: datagram → Kafka record, with the verdicts of ``decode``.

``RecordDecoder.record(data)`` returns what ``to_record(decode(data))`` returns (the same
``DecodeError`` reasons, a record with the same JSON content), and ``records(data)`` what
it makes of each message of ``decode_datagram(data)`` (version 2, several samples), but a
SAMPLE from a (node, run, tenant) it has already decoded once skips the string decoding
and the ``MeterMessage``: the HMAC is checked, the fixed fields unpacked and the JSON
formatted from a cached prefix. Anything unusual (other kinds, unknown identities, odd sizes or
fields) takes the full ``decode``, so the cached path never accepts what ``decode`` drops.
A property test keeps the two equal.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import time
from typing import Any, Final, NamedTuple

from app.events import EVENT_VERSION
from meter.batch_protocol import (
    BATCH_HEADER_BYTES,
    BATCH_VERSION_BYTE,
    ENTRY_HEADER_BYTES,
    decode_datagram,
)
from meter.protocol import (
    FLAG_FINAL,
    HEADER_BYTES,
    MAGIC,
    MAX_DATAGRAM_BYTES,
    TAG_BYTES,
    DecodeError,
    DropReason,
    MessageKind,
    MeterMessage,
    decode,
)
from meter.records import to_record

_FIXED: Final = struct.Struct(">QQQQQQi")
_FIXED_BYTES: Final = _FIXED.size
_SAMPLE_HEADER: Final = b"FM\x01" + bytes([MessageKind.SAMPLE])
_MAX_IDENTITIES: Final = 100_000
_BATCH_HEADER: Final = MAGIC + BATCH_VERSION_BYTE
_MIN_BATCH_BYTES: Final = BATCH_HEADER_BYTES + TAG_BYTES
_SHA256_BLOCK: Final = 64
_SAMPLE: Final = int(MessageKind.SAMPLE)


DecodedRecord = tuple[tuple[str, str, str], int, str, str, bytes]
"""The replay window (node, run id, topic) and the seq checked against it, then the Kafka
record: topic, key, value."""


def _second_text(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


class _Identity(NamedTuple):
    window: tuple[str, str, str]  # node, run id, metrics topic: one tuple per identity
    run_id: str
    prefix: str  # the record's JSON up to the per-sample fields
    event_id: str  # "run:node:" JSON-escaped, the seq follows


def _hmac_pads(secret: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer pads hashed once, so each
    datagram costs two compressions less than a one-shot ``hmac.digest`` (~1 µs of ~6 on
    this path; ``hmac.HMAC.copy`` would save them too but adds its Python wrapper back).
    The property tests compare every tag with ``hmac``'s."""
    key = hashlib.sha256(secret).digest() if len(secret) > _SHA256_BLOCK else secret
    key = key.ljust(_SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in key))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in key))
    return inner, outer


class RecordDecoder:
    """Datagrams → records for ``metrics_topic`` / ``events_topic``; see the module doc."""

    def __init__(self, secret: bytes, metrics_topic: str, events_topic: str) -> None:
        if not secret or not metrics_topic or not events_topic:
            raise ValueError("secret, metrics_topic and events_topic are required")
        self._secret = secret
        self._inner, self._outer = _hmac_pads(secret)
        self._metrics, self._events = metrics_topic, events_topic
        self._identities: dict[bytes, _Identity] = {}
        self._batch_identities: dict[bytes, dict[bytes, _Identity]] = {}  # node -> entry ->
        self._second = -1
        self._second_text = ""

    def record(self, data: bytes) -> DecodedRecord:
        """A version-1 datagram's record. Raises only ``DecodeError``."""
        size = len(data)
        if size < HEADER_BYTES or size > MAX_DATAGRAM_BYTES or data[:4] != _SAMPLE_HEADER:
            return self._slow(data)
        flags = data[4]
        end = HEADER_BYTES + data[5] + data[6] + data[7]
        identity = self._identities.get(data[5:end])
        signed = end + _FIXED_BYTES
        if identity is None or size != signed + TAG_BYTES or flags & ~FLAG_FINAL:
            return self._slow(data)
        self._authenticate(data, signed)
        seq, time_ns, cpu_ns, memory, mem_hi, mem_lo, exit_code = _FIXED.unpack_from(data, end)
        if exit_code != 0:
            return self._slow(data)  # decode names the error
        value = self._value(identity, flags, seq, time_ns, cpu_ns, memory, mem_hi, mem_lo)
        return identity.window, seq, self._metrics, identity.run_id, value

    def records(self, data: bytes) -> list[DecodedRecord]:
        """``record`` for a version-2 datagram (several samples of one node), what
        ``to_record`` makes of each of ``decode_datagram``'s messages. Raises only
        ``DecodeError``, for the datagram as a whole."""
        size = len(data)
        if size < _MIN_BATCH_BYTES or size > MAX_DATAGRAM_BYTES or data[:3] != _BATCH_HEADER:
            return self._slow_batch(data)
        node_end = BATCH_HEADER_BYTES + data[4]
        known = self._batch_identities.get(data[BATCH_HEADER_BYTES:node_end])
        signed = size - TAG_BYTES
        count = data[3]
        if known is None or count == 0:
            return self._slow_batch(data)
        starts = []
        pos = node_end
        for _ in range(count):  # the framing first: its verdicts come before the tag's
            if pos + ENTRY_HEADER_BYTES > signed:
                return self._slow_batch(data)
            starts.append(pos)
            pos += ENTRY_HEADER_BYTES + data[pos + 2] + data[pos + 3] + _FIXED_BYTES
        if pos != signed:
            return self._slow_batch(data)
        self._authenticate(data, signed)
        out: list[DecodedRecord] = []
        value_of, metrics = self._value, self._metrics
        for start in starts:
            flags = data[start + 1]
            end = start + ENTRY_HEADER_BYTES + data[start + 2] + data[start + 3]
            identity = known.get(data[start + 2 : end])
            if identity is None or data[start] != _SAMPLE or flags & ~FLAG_FINAL:
                return self._slow_batch(data)
            seq, time_ns, cpu_ns, memory, hi, lo, exit_code = _FIXED.unpack_from(data, end)
            if exit_code != 0:
                return self._slow_batch(data)
            value = value_of(identity, flags, seq, time_ns, cpu_ns, memory, hi, lo)
            out.append((identity.window, seq, metrics, identity.run_id, value))
        return out

    def _authenticate(self, data: bytes, signed: int) -> None:
        inner = self._inner.copy()
        inner.update(data[:signed])
        outer = self._outer.copy()
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.digest()[:TAG_BYTES], data[signed:]):
            raise DecodeError(DropReason.BAD_SIGNATURE, "HMAC tag mismatch")

    def _value(
        self, identity: _Identity, flags: int, seq: int, time_ns: int, cpu_ns: int,
        memory: int, mem_hi: int, mem_lo: int,
    ) -> bytes:  # fmt: skip
        """The ``UsageSample`` JSON of one sample, from the identity's cached prefix."""
        second, nanos = divmod(time_ns, 1_000_000_000)
        if second != self._second:
            self._second, self._second_text = second, _second_text(second)
        return (
            f'{identity.prefix}"event_id":"{identity.event_id}{seq}",'
            f'"event_time":"{self._second_text}.{nanos // 1000:06d}Z","seq":{seq},'
            f'"cpu_ns":{cpu_ns},"memory_bytes":{memory},'
            f'"memory_byte_ms":{(mem_hi << 64) | mem_lo},'
            f'"final":{"true" if flags & FLAG_FINAL else "false"}}}'
        ).encode()

    def _slow_batch(self, data: bytes) -> list[DecodedRecord]:
        out: list[DecodedRecord] = []
        batch = data[2:3] == BATCH_VERSION_BYTE  # version 1 identities are kept by _remember
        for message in decode_datagram(data, self._secret):
            topic, key, value = to_record(message, self._metrics, self._events)
            out.append(((message.node, message.run_id, topic), message.seq, topic, key, value))
            if batch and message.kind is MessageKind.SAMPLE:
                self._remember_in_batch(message)
        return out

    def _remember_in_batch(self, message: MeterMessage) -> None:
        node = message.node.encode()
        known = self._batch_identities.setdefault(node, {})
        if len(known) >= _MAX_IDENTITIES:
            known.clear()  # cheap bound, as for version 1
        run_id, tenant = message.run_id.encode(), message.tenant.encode()
        entry = bytes((len(run_id), len(tenant))) + run_id + tenant
        known[entry] = self._identity(message.node, message.run_id, message.tenant)

    def _slow(self, data: bytes) -> DecodedRecord:
        message = decode(data, self._secret)
        topic, key, value = to_record(message, self._metrics, self._events)
        if message.kind is MessageKind.SAMPLE:
            self._remember(bytes(data[5:HEADER_BYTES]), data, message.node, message.run_id)
        return (message.node, message.run_id, topic), message.seq, topic, key, value

    def _remember(self, lengths: bytes, data: bytes, node: str, run_id: str) -> None:
        if len(self._identities) >= _MAX_IDENTITIES:
            self._identities.clear()  # cheap bound; the next datagram of each run re-learns it
        end = HEADER_BYTES + sum(lengths)
        tenant = bytes(data[HEADER_BYTES + lengths[0] + lengths[1] : end]).decode()
        self._identities[bytes(data[5:end])] = self._identity(node, run_id, tenant)

    def _identity(self, node: str, run_id: str, tenant: str) -> _Identity:
        prefix = (
            f'{{"type":"usage.sample","version":{EVENT_VERSION},'
            f'"run_id":{json.dumps(run_id)},"tenant":{json.dumps(tenant)},'
            f'"node":{json.dumps(node)},'
        )
        event_id = json.dumps(f"{run_id}:{node}:")[1:-1]
        return _Identity((node, run_id, self._metrics), run_id, prefix, event_id)
