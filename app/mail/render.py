"""The invoice email: plain text, and an HTML alternative with an inline PNG chart."""

from __future__ import annotations

import hashlib
import html
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from app.currency import is_currency, minor_units
from app.decimals import plain_decimal
from app.invoices import Invoice, InvoiceEvent
from app.mail.chart import memory_chart_png, peak_mib

_TIMES = "\N{MULTIPLICATION SIGN}"
_SAFE_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def money(value: Decimal, currency: str) -> str:
    """Exact digits, padded to the currency's minor unit: ``1`` USD -> ``1.00``; finer
    amounts keep every digit they have (``0.00000078125``)."""
    text = plain_decimal(value)
    digits = minor_units(currency) if is_currency(currency) else 0
    whole, _, fraction = text.partition(".")
    if len(fraction) >= digits:
        return text
    return f"{whole}.{fraction.ljust(digits, '0')}"


def duration_text(elapsed: timedelta) -> str:
    """Exact seconds (microsecond resolution, no float), plus h:mm:ss past a minute."""
    seconds = Decimal(elapsed // timedelta(microseconds=1)) / 1_000_000
    text = f"{plain_decimal(seconds)} s"
    if seconds >= 60:
        whole_minutes, rest = divmod(seconds, 60)
        hours, minutes = divmod(int(whole_minutes), 60)
        second = plain_decimal(rest)
        text += f" ({hours}:{minutes:02d}:{'0' if rest < 10 else ''}{second})"
    return text


def _domain(sender: str) -> str:
    return parseaddr(sender)[1].rpartition("@")[2] or "faas.local"


def message_id(invoice_id: str, version: int, domain: str = "faas.local") -> str:
    """The same for every send of one invoice version, so a re-send is recognisable."""
    token = invoice_id if _SAFE_ID.fullmatch(invoice_id) else "h" + _digest(invoice_id)
    return f"<invoice.{token}.v{version}@{domain}>"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _subject(event: InvoiceEvent) -> str:
    invoice = event.invoice
    total = f"{money(invoice.total, invoice.currency)} {invoice.currency}"
    if event.type == "invoice.revised":
        was = (
            ""
            if event.previous_total is None
            else f" (was {money(event.previous_total, invoice.currency)})"
        )
        return f"Corrected invoice for run {invoice.run_id[:8]} — {total}{was}"
    return f"Invoice for run {invoice.run_id[:8]} — {total}"


def _text(event: InvoiceEvent, has_chart: bool) -> str:
    invoice, cur = event.invoice, event.invoice.currency
    lines = [
        _subject(event),
        "",
        f"Run:       {invoice.run_id}",
        f"Image:     {invoice.image_name}",
        f"Tariff:    {invoice.tariff}",
        f"Started:   {invoice.started_at.isoformat()}",
        f"Finished:  {invoice.finished_at.isoformat()}",
        f"Duration:  {duration_text(invoice.finished_at - invoice.started_at)}",
        f"Version:   {invoice.version}",
        "",
    ]
    for line in invoice.lines:
        free = ""
        if line.billable_quantity != line.quantity:
            free = f" (measured {plain_decimal(line.quantity)}, rest within the free allowance)"
        lines.append(
            f"{line.kind:<10} {plain_decimal(line.billable_quantity)} {line.unit} {_TIMES} "
            f"{plain_decimal(line.unit_price)} {cur} = {money(line.amount, cur)} {cur}{free}"
        )
    lines += ["", f"Total: {money(invoice.total, cur)} {cur}"]
    if event.type == "invoice.revised" and event.previous_total is not None:
        change = invoice.total - event.previous_total
        lines.append(
            f"Previously invoiced: {money(event.previous_total, cur)} {cur} "
            f"(change {'+' if change >= 0 else ''}{money(change, cur)} {cur})"
        )
    if has_chart:
        lines += [
            "",
            f"Memory: peak {peak_mib(invoice.memory_series)} MiB over "
            f"{len(invoice.memory_series)} readings (the HTML version shows a chart).",
        ]
    return "\n".join(lines) + "\n"


def _html(event: InvoiceEvent, chart_cid: str | None) -> str:
    invoice, e = event.invoice, html.escape
    cur = e(invoice.currency)
    rows = "".join(
        f"<tr><td>{e(line.kind)}</td><td>{plain_decimal(line.quantity)}</td>"
        f"<td>{plain_decimal(line.billable_quantity)}</td><td>{e(line.unit)}</td>"
        f"<td>{plain_decimal(line.unit_price)} {cur}</td>"
        f"<td>{money(line.amount, invoice.currency)} {cur}</td></tr>"
        for line in invoice.lines
    )
    previous = ""
    if event.type == "invoice.revised" and event.previous_total is not None:
        previous = (
            f"<p>Previously invoiced: {money(event.previous_total, invoice.currency)} {cur}</p>"
        )
    chart = ""
    if chart_cid is not None:
        peak = peak_mib(invoice.memory_series)
        chart = (
            f'<p>Memory over the run (peak {peak} MiB):<br><img src="cid:{e(chart_cid[1:-1])}" '
            f'width="480" height="120" alt="memory over time, peak {peak} MiB"></p>'
        )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        f"<h2>{e(_subject(event))}</h2>"
        f"<p>Run <code>{e(invoice.run_id)}</code>, image <code>{e(invoice.image_name)}</code>, "
        f"tariff {e(invoice.tariff)}, version {invoice.version}.<br>"
        f"{e(invoice.started_at.isoformat())} → {e(invoice.finished_at.isoformat())}, "
        f"{e(duration_text(invoice.finished_at - invoice.started_at))}</p>"
        '<table border="1" cellpadding="4" cellspacing="0"><thead><tr><th>kind</th>'
        "<th>quantity</th><th>billable</th><th>unit</th><th>unit price</th><th>amount</th>"
        f"</tr></thead><tbody>{rows}</tbody><tfoot><tr><th colspan='5'>Total</th>"
        f"<th>{money(invoice.total, invoice.currency)} {cur}</th></tr></tfoot></table>"
        f"{previous}{chart}</body></html>"
    )


def render_invoice_email(event: InvoiceEvent, sender: str) -> EmailMessage:
    """One invoice version as a ``multipart/alternative`` email to its tenant."""
    if not sender:
        raise ValueError("sender is required")
    invoice: Invoice = event.invoice
    domain = _domain(sender)
    chart = memory_chart_png(invoice.memory_series)
    chart_cid = None
    if chart is not None:
        chart_cid = f"<memory.{_digest(f'{invoice.invoice_id}:{invoice.version}')}@{domain}>"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = invoice.tenant
    message["Subject"] = _subject(event)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id(invoice.invoice_id, invoice.version, domain)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
    message["X-Faas-Invoice"] = f"{invoice.invoice_id}; version={invoice.version}"
    message.set_content(_text(event, chart is not None))
    message.add_alternative(_html(event, chart_cid), subtype="html")
    if chart is not None:
        html_part = message.get_body(("html",))
        if html_part is None:  # cannot happen: added just above; keeps mypy's types honest
            raise RuntimeError("the HTML part went missing")
        html_part.add_related(
            chart, "image", "png", cid=chart_cid, disposition="inline", filename="memory.png"
        )
    return message
