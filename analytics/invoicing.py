"""Pricing one stopped run: its samples (Polars over ClickHouse) and its tariff make an invoice."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

import polars as pl
from aiokafka import TopicPartition

from analytics.clickhouse import ClickHouse
from analytics.ingestion import IngestionProgress, caught_up
from analytics.invoice_store import InvoiceStore
from analytics.usage import RunUsage, no_samples_usage, run_endpoints, usage_from_endpoints
from app.events import Stopped
from app.invoices import Invoice, InvoiceLineView, MemoryPoint
from app.pricing import TariffPrices, Usage, price_run
from app.tariffs.schemas import TariffView

_SAMPLES = (
    "SELECT run_id, node, seq, sample_time, memory_bytes, memory_byte_ms, cpu_ns, final"
    " FROM usage_samples FINAL WHERE run_id = {run:String} ORDER BY node, seq"
)
CHART_POINTS = 60
log = logging.getLogger(__name__)


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


class RunSamples:
    """Reads a run's samples; waits for the agent's final sample up to a grace period and,
    without it, until the ingestor has stored what was published by then."""

    def __init__(
        self,
        clickhouse: ClickHouse,
        *,
        grace_s: float = 5.0,
        poll_s: float = 0.2,
        progress: IngestionProgress | None = None,
        max_wait_s: float = 120.0,
    ) -> None:
        if clickhouse is None:
            raise ValueError("clickhouse is required")
        self._clickhouse = clickhouse
        self._grace_s = grace_s
        self._poll_s = poll_s
        self._progress = progress
        self._max_wait_s = max_wait_s

    async def read(self, run_id: str) -> pl.DataFrame:
        return pl.from_arrow(await self._clickhouse.query_arrow(_SAMPLES, {"run": run_id}))  # type: ignore[return-value]

    async def settled(self, run_id: str, finished_at: datetime) -> pl.DataFrame:
        """The samples once the final one landed, or once the grace period after the
        finish has passed (the final datagram may be lost; counters are cumulative) and
        the ingestor has caught up with ``faas.metrics`` (it may be down or behind)."""
        waited_from = time.monotonic()
        targets: dict[TopicPartition, int] | None = None
        while True:
            samples = await self.read(run_id)
            if samples.height and samples["final"].any():
                return samples
            waited = time.monotonic() - waited_from
            since_finish = (datetime.now(UTC) - finished_at).total_seconds()
            if min(since_finish, waited) < self._grace_s:
                await asyncio.sleep(self._poll_s)
                continue
            if self._progress is None:
                return samples
            if waited >= self._max_wait_s:
                log.warning("run %s priced without its final sample: ingestion behind", run_id)
                return samples
            try:
                if targets is None:
                    targets = await self._progress.end_offsets()
                elif caught_up(await self._progress.committed(), targets):
                    return await self.read(run_id)
            except Exception as exc:  # Kafka away: keep waiting, up to max_wait_s
                log.warning("ingestion progress unknown (%s); waiting", exc)
            await asyncio.sleep(max(self._poll_s, 0.5))


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


async def build_invoice(
    stopped: Stopped, samples: pl.DataFrame, tariff: TariffView, store: InvoiceStore
) -> Invoice:
    """A new run's invoice: the allowance used is what earlier invoices this month took."""
    cpu, gib, executions = await store.month_usage(
        stopped.tenant, tariff.id, month_start(stopped.finished_at), stopped.finished_at,
        stopped.run_id,
    )  # fmt: skip
    return priced_invoice(stopped, samples, tariff, Usage(cpu, gib, executions, Decimal(0)))
