from datetime import UTC, datetime, timedelta
from decimal import Decimal

from app.invoices import Invoice, InvoiceEvent, InvoiceLineView, MemoryPoint
from app.mail.render import memory_chart_svg, render_invoice_email

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def event(kind: str = "invoice.created", image: str = "localhost/faas-mem") -> InvoiceEvent:
    lines = [
        InvoiceLineView(kind="memory", quantity=Decimal("0.3125"), billable_quantity=Decimal("0.3125"),
                        unit="gib_second", unit_price=Decimal("0.0000025"), amount=Decimal("0.00000078125"))
    ]  # fmt: skip
    invoice = Invoice(
        invoice_id="r1", run_id="r1", tenant="t@example.com", image_name=image, tariff="std",
        tariff_id=1, version=2, started_at=NOW, finished_at=NOW + timedelta(seconds=5),
        currency="USD", total=Decimal("0.00000078125"), lines=lines, created_at=NOW,
        memory_series=[MemoryPoint(t_s=0, bytes=0), MemoryPoint(t_s=5, bytes=64 << 20)],
    )  # fmt: skip
    return InvoiceEvent(type=kind, event_id="r1:v2", event_time=NOW, run_id="r1", tenant="t@example.com",
                        invoice=invoice, previous_total=Decimal("1.5") if kind == "invoice.revised" else None)  # fmt: skip


def test_both_parts_exact_decimals_and_chart() -> None:
    message = render_invoice_email(event(), "billing@faas.local")
    assert message["To"] == "t@example.com" and "0.00000078125 USD" in message["Subject"]
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "0.3125 GiB-s x 0.0000025 = 0.00000078125 USD" in text
    assert "e-" not in text.lower()  # no float or exponent formatting anywhere
    assert "<svg" in html and "peak 64.0 MiB" in html
    assert "r1.v2" in message["Message-ID"]


def test_user_strings_are_escaped_in_html() -> None:
    message = render_invoice_email(event(image="evil<script>alert(1)</script>"), "b@faas.local")
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_revised_invoice_says_so_and_shows_the_previous_total() -> None:
    message = render_invoice_email(event("invoice.revised"), "b@faas.local")
    assert message["Subject"].startswith("Corrected invoice")
    assert "Previously invoiced: 1.5 USD" in message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_no_chart_without_points() -> None:
    assert memory_chart_svg([]) == ""
