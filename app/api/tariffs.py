"""``/v1/tariffs``: admin-only tariff management (mounted under that route prefix)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

from app.api.auth import admin_guard
from app.api.common import (
    JsonBodyRoute,
    PrefixRootAsSlash,
    field_error,
    plain_error,
    readiness_gate,
)
from app.api.input_guard import InputGuard
from app.tariffs.repository import TariffConflict, TariffNotFound, TariffRepository
from app.tariffs.schemas import TariffFields, TariffPatch, TariffView

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no bearer token"},
    403: {"description": "wrong token"},
}
_MISSING: dict[int | str, dict[str, Any]] = {**_ERRORS, 404: {"description": "no such tariff"}}
_REF = "tariff id (digits) or its unique name"


def tariffs_router(tariffs: TariffRepository, admin_token: str) -> APIRouter:
    router = APIRouter(
        tags=["tariffs"],
        route_class=JsonBodyRoute,
        dependencies=[Depends(admin_guard(admin_token))],
    )

    @router.post("/", status_code=201, response_model=TariffView, responses=_ERRORS)
    async def create_tariff(body: TariffFields) -> TariffView:
        """Create a tariff. ``is_default: true`` makes it the default (the old one stops being)."""
        return await asyncio.to_thread(tariffs.create, body)

    @router.get("/", response_model=list[TariffView], responses=_ERRORS)
    async def list_tariffs(
        include_deleted: Annotated[bool, Query()] = False,
    ) -> list[TariffView]:
        return await asyncio.to_thread(tariffs.list, include_deleted)

    @router.get("/{ref}", response_model=TariffView, responses=_MISSING, description=_REF)
    async def get_tariff(ref: str) -> TariffView:
        """By id (deleted tariffs too, so old invoices stay explainable) or by live name."""
        return await asyncio.to_thread(tariffs.get, ref)

    @router.put("/{ref}", response_model=TariffView, responses=_MISSING, description=_REF)
    async def replace_tariff(ref: str, body: TariffFields) -> TariffView:
        return await asyncio.to_thread(tariffs.update, ref, body.model_dump())

    @router.patch("/{ref}", response_model=TariffView, responses=_MISSING, description=_REF)
    async def patch_tariff(ref: str, body: TariffPatch) -> TariffView:
        return await asyncio.to_thread(tariffs.update, ref, body.model_dump(exclude_unset=True))

    @router.delete("/{ref}", status_code=204, responses=_MISSING, description=_REF)
    async def delete_tariff(ref: str) -> Response:
        """Soft delete; the default tariff cannot be deleted."""
        await asyncio.to_thread(tariffs.delete, ref)
        return Response(status_code=204)

    return router


def create_pricing_api(
    tariffs: TariffRepository,
    admin_token: str,
    *,
    max_body_bytes: int,
    ready: Awaitable[None] | None = None,
) -> FastAPI:
    api = FastAPI(
        title="FaaS on Ray — tariffs",
        version="0.1.0",
        description="Admin-only price management. Send `Authorization: Bearer <admin token>`.",
    )
    api.include_router(tariffs_router(tariffs, admin_token))
    api.add_middleware(PrefixRootAsSlash)

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return plain_error(str(exc), 404)

    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TariffConflict)
        return field_error(exc.field, exc.message, 409)

    api.add_exception_handler(TariffNotFound, not_found)
    api.add_exception_handler(TariffConflict, conflict)
    if ready is not None:
        readiness_gate(api, ready, "pricing")
    api.add_middleware(InputGuard, max_bytes=max_body_bytes)  # added last: runs first
    return api
