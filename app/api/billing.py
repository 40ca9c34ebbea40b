"""``/billing``: a tenant's invoices (mounted under that route prefix)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, EmailStr

from app.api.auth import Authenticator, Caller, CallerDep, forbidden
from app.api.common import PrefixRootAsSlash, plain_error, readiness_gate
from app.api.input_guard import InputGuard
from app.invoices import Invoice, Money


class InvoicesUnavailable(Exception):
    """The invoice store cannot answer right now (answered with 503, retry later)."""


class InvoiceReader(Protocol):
    async def for_tenant(
        self,
        tenant: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[Invoice], int, list[tuple[str, Decimal, int]]]: ...

    async def current(self, run_id: str) -> Invoice | None: ...


class CurrencyTotal(BaseModel):
    currency: str
    total: Money
    invoices: int


class TenantBilling(BaseModel):
    tenant: str
    count: int  # invoices matching the filter, all pages
    limit: int
    offset: int
    totals: list[CurrencyTotal]  # over every invoice matching the filter
    invoices: list[Invoice]


Email = Annotated[EmailStr, Path(description="the tenant's email")]
# What ClickHouse's DateTime64 can hold; outside it a filter is a client error, not a 5xx.
_EARLIEST, _LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(2299, 12, 31, tzinfo=UTC)


def _within_range(name: str, value: datetime | None) -> None:
    if value is None:
        return
    if not _EARLIEST <= (value if value.tzinfo else value.replace(tzinfo=UTC)) <= _LATEST:
        message = "must be between 1900-01-01 and 2299-12-31"
        raise HTTPException(422, [{"loc": ["query", name], "msg": message, "type": "value_error"}])


_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing (production mode), unknown or revoked credentials"},
    403: {"description": "a tenant key reads only its own invoices"},
}


def billing_router(invoices: InvoiceReader) -> APIRouter:
    """Routes whose caller is identified by the app's ``Authenticator`` (``auth.install``)."""
    router = APIRouter(tags=["billing"])

    def own(caller: Caller, email: str) -> None:
        if not caller.may_act_for(email):
            raise forbidden("path", "email", "a tenant key reads only its own invoices")

    @router.get("/{email}", response_model=TenantBilling, responses=_AUTH)
    async def tenant_billing(
        email: Email,
        caller: CallerDep,
        since: Annotated[
            datetime | None, Query(alias="from", description="finished at or after")
        ] = None,
        until: Annotated[datetime | None, Query(alias="to", description="finished before")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> TenantBilling:
        """The tenant's current invoices, newest first, with totals per currency."""
        own(caller, str(email))
        _within_range("from", since)
        _within_range("to", until)
        page, count, totals = await invoices.for_tenant(
            str(email), since=since, until=until, limit=limit, offset=offset
        )
        return TenantBilling(
            tenant=str(email),
            count=count,
            limit=limit,
            offset=offset,
            totals=[CurrencyTotal(currency=c, total=t, invoices=n) for c, t, n in totals],
            invoices=page,
        )

    @router.get(
        "/{email}/invoices/{run_id}",
        response_model=Invoice,
        responses={**_AUTH, 404: {"description": "no invoice for this run and tenant"}},
    )
    async def tenant_invoice(
        email: Email,
        run_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9-]+$")],
        caller: CallerDep,
    ) -> Invoice:
        own(caller, str(email))
        invoice = await invoices.current(run_id)
        if invoice is None or invoice.tenant != str(email):
            raise HTTPException(404, f"no invoice for run {run_id}")
        return invoice

    return router


def create_billing_api(
    invoices: InvoiceReader,
    auth: Authenticator,
    *,
    max_body_bytes: int,
    ready: Awaitable[None] | None = None,
) -> FastAPI:
    api = FastAPI(title="FaaS on Ray — billing", version="0.1.0")
    auth.install(api)
    api.include_router(billing_router(invoices))
    api.add_middleware(PrefixRootAsSlash)

    @api.exception_handler(InvoicesUnavailable)
    async def unavailable(request: Request, exc: InvoicesUnavailable) -> JSONResponse:
        return plain_error(f"invoices unavailable, try again later ({exc})", 503)

    @api.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if ready is not None:
        readiness_gate(api, ready, "billing")
    api.add_middleware(InputGuard, max_bytes=max_body_bytes)  # added last: runs first
    return api
