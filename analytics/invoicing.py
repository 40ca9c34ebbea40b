"""Pricing stopped runs: a run's samples (Polars over ClickHouse) and its tariff make an invoice."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

import polars as pl

from analytics.invoice_store import InvoiceStore
from analytics.usage import RunUsage, no_samples_usage, run_endpoints, usage_from_endpoints
from app.events import Stopped
from app.invoices import Invoice, InvoiceLineView, MemoryPoint
from app.pricing import TariffPrices, Usage, price_run
from app.tariffs.schemas import TariffView

CHART_POINTS = 60


def tariff_prices(tariff: TariffView) -> TariffPrices:
    return TariffPrices(
        currency=tariff.currency,
        price_cpu_second=tariff.price_cpu_second,
        price_gib_second=tariff.price_gib_second,
        price_execution=tariff.price_execution,
        price_second=tariff.price_second,
        free_cpu_seconds=tariff.free_cpu_seconds,
        free_gib_seconds=tariff.free_gib_seconds,
        free_executions=tariff.free_executions,
    )


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def measured_usage(samples: pl.DataFrame, run: RunFacts) -> RunUsage:
    started_at = run.started_at or run.finished_at
    if samples.height == 0:
        return no_samples_usage(run.run_id, started_at, run.finished_at)
    row = run_endpoints(samples).row(0, named=True)
    return usage_from_endpoints(row, started_at, run.finished_at)


def memory_series(samples: pl.DataFrame, started_at: datetime) -> list[MemoryPoint]:
    if samples.height == 0:
        return []
    step = max(1, samples.height // CHART_POINTS)
    picked = samples.sort("seq").gather_every(step)
    return [
        MemoryPoint(t_s=(t - started_at).total_seconds(), bytes=int(m))
        for t, m in zip(picked["sample_time"], picked["memory_bytes"], strict=True)
    ]


class RunFacts(Protocol):
    """What pricing needs to know of a run: a ``Stopped`` event or an earlier ``Invoice``."""

    @property
    def run_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def image_name(self) -> str: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def finished_at(self) -> datetime: ...


def priced_invoice(
    run: RunFacts, samples: pl.DataFrame, tariff: TariffView, used: Usage, *, version: int = 1
) -> Invoice:
    """The invoice of one run, given what the tenant already used of the allowance."""
    started_at = run.started_at or run.finished_at
    return invoice_for_usage(
        run, measured_usage(samples, run), tariff, used, memory_series(samples, started_at), version
    )


def invoice_for_usage(
    run: RunFacts,
    usage: RunUsage,
    tariff: TariffView,
    used: Usage,
    chart: list[MemoryPoint],
    version: int,
) -> Invoice:
    priced = price_run(
        Usage(usage.cpu_seconds, usage.gib_seconds, Decimal(1), usage.wall_seconds),
        tariff_prices(tariff),
        used_this_month=used,
    )
    started_at = run.started_at or run.finished_at
    return Invoice(
        invoice_id=run.run_id,
        run_id=run.run_id,
        tenant=run.tenant,
        image_name=run.image_name,
        tariff=tariff.name,
        tariff_id=tariff.id,
        version=version,
        started_at=started_at,
        finished_at=run.finished_at,
        currency=priced.currency,
        total=priced.total,
        lines=[
            InvoiceLineView(
                kind=line.kind.value,
                quantity=line.quantity,
                billable_quantity=line.billable_quantity,
                unit=line.unit.value,
                unit_price=line.unit_price,
                amount=line.amount,
            )
            for line in priced.lines
        ],
        created_at=datetime.now(UTC),
        memory_series=chart,
    )


def invoiced_usage(invoice: Invoice) -> Usage:
    """What an invoice takes of the monthly allowance (what ``month_usage`` sums)."""
    quantity = {line.kind: line.quantity for line in invoice.lines}
    return Usage(quantity["cpu"], quantity["memory"], quantity["execution"], Decimal(0))


async def build_invoices(
    runs: Sequence[tuple[Stopped, pl.DataFrame, TariffView]], store: InvoiceStore
) -> list[Invoice]:
    """New invoices of one tenant's runs, given in finish order and none of them stored yet.
    A run's allowance used is what stored invoices this month took before it finished plus
    what the earlier of ``runs`` take: the same as storing each before pricing the next."""
    invoices: list[Invoice] = []
    for stopped, samples, tariff in runs:
        month = month_start(stopped.finished_at)
        cpu, gib, executions = await store.month_usage(
            stopped.tenant, tariff.id, month, stopped.finished_at, stopped.run_id
        )
        used = Usage(cpu, gib, executions, Decimal(0))
        for earlier in invoices:
            if (earlier.tariff_id, month_start(earlier.finished_at)) == (tariff.id, month) and (
                earlier.finished_at < stopped.finished_at
            ):
                used += invoiced_usage(earlier)
        invoices.append(priced_invoice(stopped, samples, tariff, used))
    return invoices


async def build_invoice(
    stopped: Stopped, samples: pl.DataFrame, tariff: TariffView, store: InvoiceStore
) -> Invoice:
    """A new run's invoice: the allowance used is what earlier invoices this month took."""
    return (await build_invoices([(stopped, samples, tariff)], store))[0]
