"""Re-billing one tenant: recompute its invoices in a period from the stored samples,
optionally with another tariff, and write a new version only where something changed.

Order of effects per tenant: ``invoice.revised`` events are published first, then the new
versions stored. A crash in between republishes on the rerun (same event ids
``run:vN``, which the notifier's ledger drops), and once stored, a rerun computes the
same invoices, finds nothing changed and writes nothing: one revision per invoice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl

from analytics.clickhouse import ClickHouse
from analytics.invoice_store import InvoiceStore
from analytics.invoicing import invoice_for_usage, month_start
from analytics.usage import ENDPOINTS_SQL, busiest_node, no_samples_usage, usage_from_endpoints
from app.invoices import Invoice, InvoiceEvent
from app.pricing import Usage
from app.tariffs.schemas import TariffView


@dataclass(frozen=True)
class RebillScope:
    since: datetime
    until: datetime
    tenants: tuple[str, ...] | None = None
    tariff_id: int | None = None  # only invoices priced with this tariff


@dataclass(frozen=True)
class Revision:
    run_id: str
    tenant: str
    currency: str
    old_version: int
    old_total: Decimal
    new_total: Decimal
    changed: bool


def _same_bill(old: Invoice, new: Invoice) -> bool:
    return (old.tariff_id, old.currency, old.total, old.lines) == (
        new.tariff_id, new.currency, new.total, new.lines,
    )  # fmt: skip


async def tenants_in_scope(store: InvoiceStore, scope: RebillScope) -> list[str]:
    if scope.tenants is not None:
        return sorted(set(scope.tenants))
    return await store.tenants(scope.since, scope.until)


async def rebill_tenant(
    clickhouse: ClickHouse,
    tenant: str,
    scope: RebillScope,
    tariff_for: Callable[[Invoice], TariffView],
    *,
    dry_run: bool,
    publish: Callable[[Sequence[InvoiceEvent]], Awaitable[None]] | None = None,
) -> list[Revision]:
    store = InvoiceStore(clickhouse)
    invoices, _, _ = await store.for_tenant(
        tenant, since=scope.since, until=scope.until, limit=10**9
    )
    if scope.tariff_id is not None:
        invoices = [i for i in invoices if i.tariff_id == scope.tariff_id]
    invoices.sort(key=lambda i: (i.finished_at, i.run_id))
    if not invoices:
        return []
    # Usage endpoints aggregated inside ClickHouse: only one row per run comes back.
    table = await clickhouse.query_arrow(ENDPOINTS_SQL, {"runs": [i.run_id for i in invoices]})
    endpoints: pl.DataFrame = pl.from_arrow(table)  # type: ignore[assignment]
    by_run = {row["run_id"]: row for row in busiest_node(endpoints).iter_rows(named=True)}
    used: dict[tuple[datetime, int], Usage] = defaultdict(lambda: Usage.zero())
    revisions, revised = [], []
    for old in invoices:
        tariff = tariff_for(old)
        month = month_start(old.finished_at)
        if (month, tariff.id) not in used and month < scope.since:
            # Invoices of this month before the period keep what they took of the allowance.
            cpu, gib, n = await store.month_usage(tenant, tariff.id, month, scope.since, "")
            used[(month, tariff.id)] = Usage(cpu, gib, n, Decimal(0))
        row = by_run.get(old.run_id)
        usage = (
            usage_from_endpoints(row, old.started_at, old.finished_at)
            if row is not None
            else no_samples_usage(old.run_id, old.started_at, old.finished_at)
        )
        # The memory chart does not change with a price: the revision keeps the original's.
        new = invoice_for_usage(
            old, usage, tariff, used[(month, tariff.id)], old.memory_series, old.version + 1
        )
        quantities = {line.kind: line.quantity for line in new.lines}
        used[(month, tariff.id)] += Usage(
            quantities["cpu"], quantities["memory"], quantities["execution"], Decimal(0)
        )
        changed = not _same_bill(old, new)
        revisions.append(
            Revision(old.run_id, tenant, new.currency, old.version, old.total, new.total, changed)
        )
        if changed:
            revised.append((old, new))
    if revised and not dry_run:
        events = [
            InvoiceEvent(
                type="invoice.revised",
                event_id=f"{new.run_id}:v{new.version}",
                event_time=datetime.now(UTC),
                run_id=new.run_id,
                tenant=tenant,
                invoice=new,
                previous_total=old.total,
            )
            for old, new in revised
        ]
        if publish is not None:
            await publish(events)
        await store.save([new for _, new in revised])
    return revisions
