"""Batch re-billing as a Ray job: one Ray task per tenant, against the running platform.

    ray job submit --working-dir . -- python -m deployments.rebill_job --from 2026-10-01 --to 2026-11-01
    python -m deployments.rebill_job --from 2026-10-01 --to 2026-11-01 --dry-run --report old-vs-new.csv

Progress is printed (and so shows in the job's logs in the Ray dashboard). A rerun after
a crash is safe: tenants already re-billed find nothing changed (see analytics/rebill.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import ray
from ray import serve
from rich.progress import Progress

from analytics.clickhouse import ClickHouse, DirectClickHouse
from analytics.invoice_store import InvoiceStore
from analytics.rebill import RebillScope, Revision, rebill_tenant, tenants_in_scope
from app.invoices import Invoice, InvoiceEvent
from app.kafka import KafkaEventPublisher
from app.settings import Settings
from app.store.db import make_engine
from app.tariffs.repository import TariffRepository
from app.tariffs.schemas import TariffView
from deployments.clickhouse import OwnerClickHouse, is_embedded


def _clickhouse(settings: Settings) -> ClickHouse:
    if is_embedded(settings):  # only the platform's owner may open the embedded data path
        return OwnerClickHouse(serve.get_deployment_handle("ClickHouseOwner", app_name="analytics"))
    assert settings.clickhouse.url is not None
    return DirectClickHouse(settings.clickhouse.url, settings.clickhouse.database)


@ray.remote(max_retries=0)
def rebill_one(
    settings: Settings, tenant: str, scope: RebillScope, prices: dict[int, TariffView],
    what_if: TariffView | None, dry_run: bool,
) -> list[Revision]:  # fmt: skip
    def tariff_for(invoice: Invoice) -> TariffView:
        return what_if or prices[invoice.tariff_id]

    async def run() -> list[Revision]:
        publisher = KafkaEventPublisher(settings.kafka)

        async def publish(events: Sequence[InvoiceEvent]) -> None:
            await publisher.publish(
                settings.kafka.invoices_topic,
                [(e.tenant, e.model_dump_json().encode()) for e in events],
            )

        try:
            return await rebill_tenant(
                _clickhouse(settings), tenant, scope, tariff_for, dry_run=dry_run, publish=publish
            )
        finally:
            await publisher.close()

    return asyncio.run(run())


def rebill(
    settings: Settings,
    scope: RebillScope,
    *,
    what_if: str | None,
    dry_run: bool,
    report: Path | None,
) -> list[Revision]:
    tariffs = TariffRepository(make_engine(settings.sql_url))
    prices = {t.id: t for t in tariffs.list(include_deleted=True)}
    alternative = tariffs.resolve(what_if) if what_if else None
    tenants = asyncio.run(tenants_in_scope(InvoiceStore(_clickhouse(settings)), scope))
    pending = {
        rebill_one.remote(settings, t, scope, prices, alternative, dry_run): t for t in tenants
    }
    revisions: list[Revision] = []
    with Progress() as progress:
        bar = progress.add_task("re-billing tenants", total=len(pending))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            tenant = pending.pop(done[0])
            result = ray.get(done[0])
            revisions.extend(result)
            changed = sum(r.changed for r in result)
            progress.console.print(f"{tenant}: {len(result)} invoice(s), {changed} revised")
            progress.advance(bar)
    if report is not None:
        frame = (
            pl.DataFrame([dataclasses.asdict(r) for r in revisions])
            if revisions
            else pl.DataFrame()
        )
        frame = (
            frame.with_columns(pl.col(c).cast(pl.String) for c in ("old_total", "new_total"))
            if revisions
            else frame
        )
        (frame.write_parquet if report.suffix == ".parquet" else frame.write_csv)(report)
    changed = sum(r.changed for r in revisions)
    verb = "would revise" if dry_run else "revised"
    print(f"{len(tenants)} tenant(s), {len(revisions)} invoice(s) checked, {verb} {changed}")
    return revisions


def _day(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rebill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--from", dest="since", type=_day, required=True, help="finished at or after (ISO date)"
    )
    parser.add_argument(
        "--to", dest="until", type=_day, required=True, help="finished before (ISO date)"
    )
    parser.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    parser.add_argument("--tariff", type=int, help="only invoices priced with this tariff id")
    parser.add_argument("--what-if", help="price with this tariff (name or id) instead")
    parser.add_argument("--dry-run", action="store_true", help="change nothing; see --report")
    parser.add_argument("--report", type=Path, help="old vs new per invoice (.csv or .parquet)")
    parser.add_argument("--address", default="auto", help="Ray cluster address")
    args = parser.parse_args(argv)
    if args.until <= args.since:
        parser.error("--to must be after --from")
    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=True)
    scope = RebillScope(
        args.since, args.until, tuple(args.tenant) if args.tenant else None, args.tariff
    )
    rebill(Settings(), scope, what_if=args.what_if, dry_run=args.dry_run, report=args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
