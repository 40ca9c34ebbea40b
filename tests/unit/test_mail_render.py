"""The invoice email: both parts, exact decimals, escaping, subject, the inline PNG chart."""

from __future__ import annotations

import re
import struct
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage

import pytest

from app.invoices import Invoice, InvoiceEvent, InvoiceLineView, MemoryPoint
from app.mail.chart import memory_chart_png
from app.mail.render import duration_text, message_id, money, render_invoice_email

NOW = datetime(2026, 11, 28, tzinfo=UTC)
SENDER = "Billing <billing@faas.local>"


def event(
    kind: str = "invoice.created",
    *,
    image: str = "localhost/faas-mem",
    tariff: str = "std",
    tenant: str = "t@example.com",
    version: int = 2,
    memory: list[MemoryPoint] | None = None,
) -> InvoiceEvent:
    lines = [
        InvoiceLineView(kind="memory", quantity=Decimal("0.3125"), billable_quantity=Decimal("0.3125"),
                        unit="gib_second", unit_price=Decimal("0.0000025"), amount=Decimal("0.00000078125")),
        InvoiceLineView(kind="cpu", quantity=Decimal("12.5"), billable_quantity=Decimal("2.5"),
                        unit="cpu_second", unit_price=Decimal("0.1"), amount=Decimal("0.25")),
    ]  # fmt: skip
    series = [MemoryPoint(t_s=0, bytes=0), MemoryPoint(t_s=5, bytes=64 << 20)]
    invoice = Invoice(
        invoice_id="4f1c2d3e-run", run_id="4f1c2d3e-run", tenant=tenant, image_name=image,
        tariff=tariff, tariff_id=1, version=version, started_at=NOW,
        finished_at=NOW + timedelta(seconds=5, milliseconds=250), currency="USD",
        total=Decimal("0.25000078125"), lines=lines, created_at=NOW,
        memory_series=series if memory is None else memory,
    )  # fmt: skip
    return InvoiceEvent(
        type=kind, event_id=f"4f1c2d3e-run:v{version}", event_time=NOW, run_id="4f1c2d3e-run",
        tenant=tenant, invoice=invoice,
        previous_total=Decimal("1.5") if kind == "invoice.revised" else None,
    )  # fmt: skip


def parts(message: EmailMessage) -> tuple[str, str]:
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def png_pixels(data: bytes) -> list[bytes]:
    """Decode the chart's own PNG (8-bit palette, filter 0): one bytes object per row."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows = [raw[y * (width + 1) : (y + 1) * (width + 1)] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return [row[1:] for row in rows]


def test_headers_subject_and_deterministic_message_id() -> None:
    message = render_invoice_email(event(), SENDER)
    assert message["To"] == "t@example.com" and message["From"] == SENDER
    assert message["Subject"] == "Invoice for run 4f1c2d3e — 0.25000078125 USD"
    again = render_invoice_email(event(), SENDER)
    assert message["Message-ID"] == again["Message-ID"] == "<invoice.4f1c2d3e-run.v2@faas.local>"
    assert render_invoice_email(event(version=3), SENDER)["Message-ID"] != message["Message-ID"]
    assert message_id("odd id/<x>", 1).startswith("<invoice.h")  # never raw unsafe characters


def test_both_parts_with_lines_and_exact_decimals() -> None:
    message = render_invoice_email(event(), SENDER)
    assert message.get_content_type() == "multipart/alternative"
    text, html = parts(message)
    assert "0.3125 gib_second \N{MULTIPLICATION SIGN} 0.0000025 USD = 0.00000078125 USD" in text
    assert "2.5 cpu_second \N{MULTIPLICATION SIGN} 0.1 USD = 0.25 USD (measured 12.5" in text
    assert "Total: 0.25000078125 USD" in text and "Duration:  5.25 s" in text
    assert "<td>memory</td><td>0.3125</td><td>0.3125</td><td>gib_second</td>" in html
    assert "<td>0.0000025 USD</td><td>0.00000078125 USD</td>" in html
    assert "0.25000078125 USD</th>" in html
    assert not re.search(r"\dE[-+]\d", text + html, re.IGNORECASE)  # no exponent anywhere


def test_user_strings_are_escaped_in_html() -> None:
    message = render_invoice_email(
        event(image="evil<script>alert(1)</script>", tariff='"><img src=x>'), SENDER
    )
    _, html = parts(message)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x>" not in html and "&quot;&gt;&lt;img src=x&gt;" in html


def test_header_injection_through_the_tenant_is_refused() -> None:
    with pytest.raises(ValueError):
        render_invoice_email(event(tenant="t@example.com\r\nBcc: all@example.com"), SENDER)


def test_revised_invoice_says_so_and_shows_the_previous_total() -> None:
    message = render_invoice_email(event("invoice.revised"), SENDER)
    assert message["Subject"] == (
        "Corrected invoice for run 4f1c2d3e — 0.25000078125 USD (was 1.50)"
    )
    text, html = parts(message)
    assert "Previously invoiced: 1.50 USD (change -1.24999921875 USD)" in text
    assert "Previously invoiced: 1.50 USD" in html


def test_chart_is_an_inline_png_referenced_by_content_id() -> None:
    message = render_invoice_email(event(), SENDER)
    images = [p for p in message.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1 and images[0].get_content_disposition() == "inline"
    cid = str(images[0]["Content-ID"])
    _, html = parts(message)
    assert f'src="cid:{cid[1:-1]}"' in html and "peak 64.0 MiB" in html
    rows = png_pixels(images[0].get_payload(decode=True))  # type: ignore[arg-type]
    assert len(rows) == 120 and len(rows[0]) == 480
    text, _ = parts(message)
    assert "peak 64.0 MiB" in text  # the plain part tells what the chart shows


def test_chart_keeps_a_short_spike() -> None:
    series = [MemoryPoint(t_s=i / 100, bytes=10 << 20) for i in range(10_000)]
    series[5_000] = MemoryPoint(t_s=50.0, bytes=200 << 20)
    chart = memory_chart_png(series)
    assert chart is not None
    top = png_pixels(chart)[4]  # the top margin row is where 100 % of the peak is drawn
    assert 2 in top  # the line colour reaches the peak in at least one column


def test_no_chart_without_points() -> None:
    message = render_invoice_email(event(memory=[]), SENDER)
    assert not [p for p in message.walk() if p.get_content_maintype() == "image"]
    text, html = parts(message)
    assert "<img" not in html and "chart" not in text
    assert memory_chart_png([]) is None


@pytest.mark.parametrize(
    ("value", "currency", "shown"),
    [("1", "USD", "1.00"), ("2.5", "EUR", "2.50"), ("0.00000078125", "USD", "0.00000078125"),
     ("1500", "JPY", "1500"), ("1.2", "BHD", "1.200"), ("-0.5", "USD", "-0.50")],
)  # fmt: skip
def test_money_is_exact_and_padded_to_the_minor_unit(value: str, currency: str, shown: str) -> None:
    assert money(Decimal(value), currency) == shown


def test_duration_is_exact() -> None:
    assert duration_text(timedelta(seconds=3723, microseconds=250_000)) == "3723.25 s (1:02:03.25)"
    assert duration_text(timedelta(microseconds=1)) == "0.000001 s"
