"""``/v1/tenants/{email}/keys``: the admin issues, lists and revokes tenant API keys."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, EmailStr, Field

from app.api.auth import admin_guard
from app.api.common import JsonBodyRoute
from app.store.api_keys import ApiKeyNotFound, ApiKeyRepository, ApiKeyView, IssuedKey

_ADMIN: dict[int | str, dict[str, Any]] = {
    401: {"description": "no bearer token"},
    403: {"description": "not the admin token"},
}
Email = Annotated[EmailStr, Path(description="the tenant's email")]


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=64, description="a label, e.g. where it is used")


def keys_router(keys: ApiKeyRepository, admin_token: str) -> APIRouter:
    router = APIRouter(
        prefix="/v1/tenants/{email}/keys",
        tags=["api keys"],
        route_class=JsonBodyRoute,
        dependencies=[Depends(admin_guard(admin_token))],
    )

    @router.post("", status_code=201, response_model=IssuedKey, responses=_ADMIN)
    async def issue_key(email: Email, body: KeyRequest | None = None) -> IssuedKey:
        """A new key for the tenant. The secret (`key`) is shown only in this answer."""
        name = body.name if body is not None else ""
        return await asyncio.to_thread(keys.issue, str(email), name)

    @router.get("", response_model=list[ApiKeyView], responses=_ADMIN)
    async def list_keys(email: Email) -> list[ApiKeyView]:
        """The tenant's keys, newest first, revoked ones included; never the secrets."""
        return await asyncio.to_thread(keys.list, str(email))

    @router.delete(
        "/{key_id}",
        response_model=ApiKeyView,
        responses={**_ADMIN, 404: {"description": "no such key for this tenant"}},
    )
    async def revoke_key(email: Email, key_id: Annotated[str, Path(max_length=36)]) -> ApiKeyView:
        """Revoke at once: the next request with this key gets 401."""
        try:
            return await asyncio.to_thread(keys.revoke, str(email), key_id)
        except ApiKeyNotFound as exc:
            raise HTTPException(404, str(exc)) from exc

    return router
