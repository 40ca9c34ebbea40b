"""Re-billing a month for 1,000 runs of 50 tenants on the real ClickHouse engine: new
versions with the right totals, untouched tenants untouched, reruns idempotent, and a
crash between publishing and storing still yields exactly one revision per invoice."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl
import pyarrow as pa
import pytest

from analytics.clickhouse import DirectClickHouse
from analytics.invoice_store import InvoiceStore
from analytics.invoicing import priced_invoice, tariff_prices
from analytics.rebill import RebillScope, rebill_tenant, tenants_in_scope
from analytics.samples import SAMPLE_COLUMNS
from analytics.schema import migrate
from app.events import RunStatus, Stopped, StopReason
from app.invoices import Invoice, InvoiceEvent
from app.pricing import Usage, price_run
from app.tariffs.schemas import TariffView

MONTH = datetime(2026, 10, 1, tzinfo=UTC)
SCOPE = RebillScope(since=MONTH, until=datetime(2026, 11, 1, tzinfo=UTC))


def tariff(tariff_id: int, cpu_price: str) -> TariffView:
    return TariffView(
        id=tariff_id, name=f"t{tariff_id}", currency="USD", price_cpu_second=Decimal(cpu_price),
        price_gib_second=Decimal("0.00002"), price_execution=Decimal("0.0001"), price_second=Decimal(0),
        created_at=MONTH, updated_at=MONTH,
    )  # fmt: skip


OLD, NEW = tariff(1, "0.001"), tariff(1, "0.002")  # the admin raised the CPU price


def month_of_runs(
    runs: int = 1000, tenants: int = 50, readings: int = 20
) -> tuple[list[Stopped], pa.Table]:
    rng = random.Random(7)
    stops, rows = [], []
    for n in range(runs):
        start = MONTH + timedelta(minutes=rng.randrange(0, 30 * 24 * 60 - 10))
        stop = Stopped(
            run_id=f"run-{n:04d}", tenant=f"tenant-{n % tenants:02d}@example.com", image_name="img",
            status=RunStatus.SUCCEEDED, reason=StopReason.EXITED, exit_code=0, started_at=start,
            finished_at=start + timedelta(milliseconds=250 * readings),
        )  # fmt: skip
        cores, memory = rng.choice([250, 500, 1000]), rng.choice([16, 64, 256]) << 20
        for i in range(readings):
            rows.append({
                "run_id": stop.run_id, "tenant": stop.tenant, "node": "n1", "seq": i,
                "sample_time": start + timedelta(milliseconds=250 * (i + 1)),
                "cpu_ns": cores * 250_000 * (i + 1), "memory_bytes": memory,
                "memory_byte_ms": memory * 250 * (i + 1), "final": i == readings - 1,
            })  # fmt: skip
        stops.append(stop)
    return stops, pa.Table.from_pylist(rows, schema=SAMPLE_COLUMNS)


@pytest.fixture
async def billed(clickhouse: DirectClickHouse) -> list[Invoice]:
    await migrate(clickhouse)
    stops, samples = month_of_runs()
    await clickhouse.insert_arrow("usage_samples", samples)
    frame: pl.DataFrame = pl.from_arrow(samples)  # type: ignore[assignment]
    invoices = [
        priced_invoice(s, frame.filter(pl.col("run_id") == s.run_id), OLD, Usage.zero())
        for s in stops
    ]
    await InvoiceStore(clickhouse).save(invoices)
    return invoices


def expected_total(invoice: Invoice, price: TariffView) -> Decimal:
    q = {line.kind: line.quantity for line in invoice.lines}
    return price_run(
        Usage(q["cpu"], q["memory"], q["execution"], q["duration"]), tariff_prices(price)
    ).total


async def versions(clickhouse: DirectClickHouse) -> dict[int, int]:
    table = await clickhouse.query_arrow(
        "SELECT version, count() AS n FROM invoices FINAL GROUP BY version"
    )
    return {int(r["version"]): int(r["n"]) for r in table.to_pylist()}


async def test_rebill_a_month(clickhouse: DirectClickHouse, billed: list[Invoice]) -> None:
    store = InvoiceStore(clickhouse)
    tenants = await tenants_in_scope(store, SCOPE)
    assert len(tenants) == 50
    untouched = set(tenants[:5])
    published: list[InvoiceEvent] = []

    async def publish(events: Sequence[InvoiceEvent]) -> None:
        published.extend(events)

    dry = [
        r
        for t in tenants
        for r in await rebill_tenant(clickhouse, t, SCOPE, lambda _: NEW, dry_run=True)
    ]
    assert len(dry) == 1000 and all(r.changed for r in dry)
    assert await versions(clickhouse) == {1: 1000}  # the dry run changed nothing

    for tenant in tenants:
        if tenant not in untouched:
            await rebill_tenant(
                clickhouse, tenant, SCOPE, lambda _: NEW, dry_run=False, publish=publish
            )
    assert await versions(clickhouse) == {1: 1000, 2: 900}
    assert len(published) == 900 and {e.type for e in published} == {"invoice.revised"}
    by_run = {i.run_id: i for i in billed}
    for event in published:
        old = by_run[event.run_id]
        assert event.invoice.version == 2 and event.previous_total == old.total
        assert event.invoice.total == expected_total(old, NEW)
    for tenant in untouched:
        current, _, _ = await store.for_tenant(tenant, limit=1000)
        assert {i.version for i in current} == {1}

    # The same re-bill again changes nothing.
    again = [r for t in tenants if t not in untouched
             for r in await rebill_tenant(clickhouse, t, SCOPE, lambda _: NEW, dry_run=False, publish=publish)]  # fmt: skip
    assert not any(r.changed for r in again) and len(published) == 900
    assert await versions(clickhouse) == {1: 1000, 2: 900}


async def test_crash_between_publish_and_store_then_rerun(
    clickhouse: DirectClickHouse, billed: list[Invoice]
) -> None:
    tenants = await tenants_in_scope(InvoiceStore(clickhouse), SCOPE)
    published: list[str] = []
    crashed = {tenants[3], tenants[17]}

    async def crashing_publish(events: Sequence[InvoiceEvent]) -> None:
        published.extend(e.event_id for e in events)
        if events[0].tenant in crashed:
            raise RuntimeError("worker killed after publishing, before storing")

    for tenant in tenants:
        with contextlib.suppress(RuntimeError):
            await rebill_tenant(
                clickhouse, tenant, SCOPE, lambda _: NEW, dry_run=False, publish=crashing_publish
            )
    assert (await versions(clickhouse))[2] == 1000 - 40  # two tenants' 20 runs each not stored
    crashed.clear()
    for tenant in tenants:  # the rerun
        await rebill_tenant(
            clickhouse, tenant, SCOPE, lambda _: NEW, dry_run=False, publish=crashing_publish
        )
    assert await versions(clickhouse) == {1: 1000, 2: 1000}
    # The crashed tenants' events went out twice with the same ids: the notifier drops repeats.
    assert len(published) == 1040 and len(set(published)) == 1000
