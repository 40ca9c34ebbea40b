"""The memory-over-time chart of an invoice email, as a small PNG.

PNG rather than SVG: most mail clients (Gmail, Outlook) strip inline SVG but show a
``cid:`` PNG. It is drawn and encoded here (zlib + struct) to need no imaging library.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal

from app.invoices import MemoryPoint

_BACKGROUND, _FILL, _LINE, _GRID, _AXIS = range(5)
_PALETTE = bytes.fromhex("ffffff dbeafe 2563eb e5e7eb 6b7280")  # in the order above
_MARGIN = 4


def peak_mib(points: Sequence[MemoryPoint]) -> Decimal:
    """The highest memory reading in MiB, to one decimal (0 without readings)."""
    peak = max((p.bytes for p in points), default=0)
    return (Decimal(peak) / 2**20).quantize(Decimal("0.1"), ROUND_HALF_EVEN)


def _column_values(points: Sequence[MemoryPoint], columns: int) -> list[float]:
    """One value per pixel column: the highest reading inside it (so a short spike still
    shows), or the line between its neighbours where no reading falls."""
    ordered = sorted(points, key=lambda p: p.t_s)
    times = [p.t_s for p in ordered]
    start, span = times[0], (times[-1] - times[0]) or 1.0
    values = []
    for x in range(columns):
        low, high = start + span * x / columns, start + span * (x + 1) / columns
        i, j = bisect.bisect_left(times, low), bisect.bisect_right(times, high)
        if i < j:
            values.append(float(max(p.bytes for p in ordered[i:j])))
            continue
        before, after = ordered[max(i - 1, 0)], ordered[min(i, len(ordered) - 1)]
        gap = after.t_s - before.t_s
        share = (low - before.t_s) / gap if gap > 0 else 0.0
        values.append(before.bytes + (after.bytes - before.bytes) * share)
    return values


def _png(width: int, height: int, rows: list[bytearray]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)  # 8-bit palette
    raw = b"".join(b"\x00" + bytes(row) for row in rows)  # filter type 0 on every row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", _PALETTE)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def memory_chart_png(
    points: Sequence[MemoryPoint], width: int = 480, height: int = 120
) -> bytes | None:
    """An area chart of memory over the run scaled to its peak; None without readings."""
    if not points:
        return None
    rows = [bytearray(width) for _ in range(height)]
    bottom, top = height - 1 - _MARGIN, _MARGIN
    for quarter in (1, 2, 3, 4):  # grid lines at 25 % steps of the peak
        rows[bottom - (bottom - top) * quarter // 4][_MARGIN : width - _MARGIN] = bytes(
            [_GRID] * (width - 2 * _MARGIN)
        )
    peak = max(p.bytes for p in points) or 1
    values = _column_values(points, width - 2 * _MARGIN)
    previous: int | None = None
    for offset, value in enumerate(values):
        x = _MARGIN + offset
        y = bottom - round((bottom - top) * value / peak)
        for row in range(y + 1, bottom + 1):
            rows[row][x] = _FILL
        # Join to the previous column so steep steps stay one connected line.
        low, high = (y, y) if previous is None else (min(y, previous), max(y, previous))
        for row in range(low, high + 1):
            rows[row][x] = _LINE
        previous = y
    rows[bottom + 1][_MARGIN : width - _MARGIN] = bytes([_AXIS] * (width - 2 * _MARGIN))
    return _png(width, height, rows)
