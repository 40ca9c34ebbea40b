"""The invoice email: plain text and HTML (with an inline SVG chart of memory over time)."""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.utils import make_msgid

from app.decimals import plain_decimal
from app.invoices import InvoiceEvent, MemoryPoint

_UNITS = {"cpu_second": "CPU-s", "gib_second": "GiB-s", "execution": "exec", "second": "s"}


def memory_chart_svg(points: list[MemoryPoint], width: int = 480, height: int = 120) -> str:
    """A small line chart; empty string when there is nothing to draw."""
    if len(points) < 2:
        return ""
    t_max = max(p.t_s for p in points) or 1.0
    m_max = max(p.bytes for p in points) or 1
    coords = " ".join(
        f"{10 + (width - 20) * p.t_s / t_max:.1f},{height - 20 - (height - 30) * p.bytes / m_max:.1f}"
        for p in points
    )
    peak = m_max / 2**20
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="memory over time, peak {peak:.1f} MiB">'
        f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{coords}"/>'
        f'<text x="10" y="12" font-size="11">memory, peak {peak:.1f} MiB</text>'
        f'<text x="{width - 10}" y="{height - 4}" font-size="11" text-anchor="end">{t_max:.1f} s</text>'
        "</svg>"
    )


def render_invoice_email(event: InvoiceEvent, sender: str) -> EmailMessage:
    invoice = event.invoice
    revised = event.type == "invoice.revised"
    short = invoice.run_id[:8]
    total = f"{plain_decimal(invoice.total)} {invoice.currency}"
    duration = (invoice.finished_at - invoice.started_at).total_seconds()
    message = EmailMessage()
    message["From"] = sender
    message["To"] = invoice.tenant
    message["Subject"] = (
        f"{'Corrected invoice' if revised else 'Invoice'} for run {short} — {total}"
    )
    message["Message-ID"] = make_msgid(
        idstring=f"{invoice.invoice_id}.v{invoice.version}", domain="faas.local"
    )
    message["X-Faas-Invoice"] = f"{invoice.invoice_id};v{invoice.version}"
    lines = [
        f"Run {invoice.run_id} ({invoice.image_name}), tariff {invoice.tariff}",
        f"From {invoice.started_at.isoformat()} to {invoice.finished_at.isoformat()} ({duration:.3f} s)",
        "",
    ]
    for line in invoice.lines:
        lines.append(
            f"{line.kind:<10} {plain_decimal(line.billable_quantity)} {_UNITS[line.unit]} x "
            f"{plain_decimal(line.unit_price)} = {plain_decimal(line.amount)} {invoice.currency}"
            f"   (measured {plain_decimal(line.quantity)})"
        )
    lines += ["", f"Total: {total}"]
    if revised and event.previous_total is not None:
        lines.append(
            f"Previously invoiced: {plain_decimal(event.previous_total)} {invoice.currency}"
        )
    lines.append("The HTML part of this email shows memory over time as an inline SVG chart.")
    message.set_content("\n".join(lines))

    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(line.kind)}</td><td>{plain_decimal(line.billable_quantity)} {_UNITS[line.unit]}</td>"
        f"<td>{plain_decimal(line.unit_price)}</td><td>{plain_decimal(line.amount)}</td></tr>"
        for line in invoice.lines
    )
    message.add_alternative(
        "<html><body>"
        f"<h2>{'Corrected invoice' if revised else 'Invoice'} for run {esc(short)}</h2>"
        f"<p>Image <code>{esc(invoice.image_name)}</code>, tariff {esc(invoice.tariff)}, "
        f"{duration:.3f} s.</p>"
        "<table border='1' cellpadding='4'><tr><th>line</th><th>quantity</th>"
        f"<th>unit price</th><th>amount</th></tr>{rows}</table>"
        f"<p><strong>Total: {esc(total)}</strong></p>"
        f"{memory_chart_svg(invoice.memory_series)}"
        "</body></html>",
        subtype="html",
    )
    return message
