"""Invoices in ClickHouse: one row per (run, version); the highest version is current."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa

from analytics.clickhouse import ClickHouse
from app.invoices import Invoice, InvoiceLineView, MemoryPoint

_COLUMNS = pa.schema(
    [
        ("invoice_id", pa.string()),
        ("run_id", pa.string()),
        ("tenant", pa.string()),
        ("image_name", pa.string()),
        ("tariff", pa.string()),
        ("tariff_id", pa.uint32()),
        ("version", pa.uint32()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("currency", pa.string()),
        ("total", pa.decimal128(38, 18)),
        ("cpu_seconds", pa.decimal128(38, 9)),
        ("gib_seconds", pa.decimal128(38, 9)),
        ("wall_seconds", pa.decimal128(38, 9)),
        ("executions", pa.uint32()),
        ("lines", pa.string()),
        ("memory_series", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
# Current version of each run's invoice, correct before background merges.
_CURRENT = (
    "SELECT * FROM invoices FINAL WHERE {where} ORDER BY run_id, version DESC LIMIT 1 BY run_id"
)


def _quantity(invoice: Invoice, kind: str) -> Decimal:
    return next(line.quantity for line in invoice.lines if line.kind == kind)


def _row(invoice: Invoice) -> dict[str, Any]:
    return {
        **invoice.model_dump(exclude={"lines", "memory_series"}),
        "cpu_seconds": _quantity(invoice, "cpu"),
        "gib_seconds": _quantity(invoice, "memory"),
        "wall_seconds": _quantity(invoice, "duration"),
        "executions": int(_quantity(invoice, "execution")),
        "lines": json.dumps([line.model_dump(mode="json") for line in invoice.lines]),
        "memory_series": json.dumps([p.model_dump() for p in invoice.memory_series]),
    }


def _invoice(row: dict[str, Any]) -> Invoice:
    return Invoice(
        **{
            k: v
            for k, v in row.items()
            if k in Invoice.model_fields and k not in ("lines", "memory_series")
        },
        lines=[InvoiceLineView.model_validate(x) for x in json.loads(row["lines"])],
        memory_series=[MemoryPoint.model_validate(x) for x in json.loads(row["memory_series"])],
    )


class InvoiceStore:
    def __init__(self, clickhouse: ClickHouse) -> None:
        if clickhouse is None:
            raise ValueError("clickhouse is required")
        self._clickhouse = clickhouse

    async def save(self, invoices: Sequence[Invoice]) -> None:
        rows = [_row(invoice) for invoice in invoices]
        table = pa.Table.from_pylist(rows, schema=_COLUMNS)
        await self._clickhouse.insert_arrow("invoices", table)

    async def _select(self, where: str, parameters: dict[str, Any]) -> list[Invoice]:
        table = await self._clickhouse.query_arrow(_CURRENT.format(where=where), parameters)
        return [_invoice(row) for row in table.to_pylist()]

    async def current(self, run_id: str) -> Invoice | None:
        found = await self._select("run_id = {run:String}", {"run": run_id})
        return found[0] if found else None

    async def current_many(self, run_ids: Sequence[str]) -> dict[str, Invoice]:
        found = await self._select("run_id IN {runs:Array(String)}", {"runs": list(run_ids)})
        return {invoice.run_id: invoice for invoice in found}

    @staticmethod
    def _tenant_filter(
        tenant: str, since: datetime | None, until: datetime | None
    ) -> tuple[str, dict[str, Any]]:
        where = "tenant = {tenant:String}"
        parameters: dict[str, Any] = {"tenant": tenant}
        if since is not None:
            where += " AND finished_at >= {since:DateTime64(6, 'UTC')}"
            parameters["since"] = since
        if until is not None:
            where += " AND finished_at < {until:DateTime64(6, 'UTC')}"
            parameters["until"] = until
        return where, parameters

    async def for_tenant(
        self,
        tenant: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Invoice], int, list[tuple[str, Decimal, int]]]:
        """One page of the tenant's current invoices (newest first), how many match in all,
        and the totals per currency over all of them."""
        where, parameters = self._tenant_filter(tenant, since, until)
        current = _CURRENT.format(where=where)
        page = await self._clickhouse.query_arrow(
            f"SELECT * FROM ({current}) ORDER BY finished_at DESC, run_id DESC"  # noqa: S608
            " LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
            {**parameters, "limit": limit, "offset": offset},
        )
        sums = await self._clickhouse.query_arrow(
            f"SELECT currency, sum(total) AS total, count() AS n FROM ({current})"  # noqa: S608
            " GROUP BY currency ORDER BY currency",
            parameters,
        )
        totals = [(r["currency"], Decimal(str(r["total"])), int(r["n"])) for r in sums.to_pylist()]
        return [_invoice(r) for r in page.to_pylist()], sum(n for _, _, n in totals), totals

    async def tenants(self, since: datetime, until: datetime) -> list[str]:
        """Tenants with an invoice finished in [since, until)."""
        table = await self._clickhouse.query_arrow(
            "SELECT DISTINCT tenant FROM invoices WHERE finished_at >= {since:DateTime64(6, 'UTC')}"
            " AND finished_at < {until:DateTime64(6, 'UTC')} ORDER BY tenant",
            {"since": since, "until": until},
        )
        return [str(t) for t in table.column("tenant").to_pylist()] if table.num_rows else []

    async def month_usage(
        self, tenant: str, tariff_id: int, month_start: datetime, before: datetime, exclude_run: str
    ) -> tuple[Decimal, Decimal, Decimal]:
        """CPU-s, GiB-s and executions already invoiced to the tenant under this tariff this
        month, before ``before`` (allowance is consumed in the order runs finished)."""
        # Constant fragments only; every value is a bound server-side parameter.
        sql = (
            "SELECT sum(cpu_seconds) AS cpu, sum(gib_seconds) AS gib, sum(executions) AS n FROM ("  # noqa: S608
            + _CURRENT.format(
                where="tenant = {tenant:String} AND tariff_id = {tariff:UInt32}"
                " AND finished_at >= {start:DateTime64(6, 'UTC')}"
                " AND finished_at < {before:DateTime64(6, 'UTC')} AND run_id != {run:String}"
            )
            + ")"
        )
        table = await self._clickhouse.query_arrow(
            sql,
            {
                "tenant": tenant,
                "tariff": tariff_id,
                "start": month_start,
                "before": before,
                "run": exclude_run,
            },
        )
        row = table.to_pylist()[0] if table.num_rows else {}
        return (
            Decimal(str(row.get("cpu") or 0)),
            Decimal(str(row.get("gib") or 0)),
            Decimal(str(row.get("n") or 0)),
        )
