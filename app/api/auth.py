"""Who is calling: the admin token, a tenant's API key, or (local mode only) the trusted
loopback caller without credentials. Shared by every Serve app (docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="The admin token (FAAS_ADMIN_TOKEN)")
_caller_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKeyOrAdminToken",
    description="A tenant API key (faas_…) or the admin token; optional in local mode",
)


def admin_guard(token: str) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency: 401 without a bearer token, 403 with a wrong one."""
    if not token:
        raise ValueError("an admin token is required")
    expected = token.encode()

    async def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Constant time: the comparison must not reveal how much of the token matched.
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid token")

    return require_admin


@dataclass(frozen=True)
class Caller:
    role: Literal["admin", "tenant", "local"]
    email: str | None = None  # the tenant a key belongs to

    def may_act_for(self, email: str) -> bool:
        """The admin and the trusted local caller act for anyone; a tenant for itself only."""
        return self.role != "tenant" or self.email == email


class KeyLookup(Protocol):
    def tenant_of(self, secret: str) -> str | None:
        """The email of a live key, or None."""
        ...


def _unauthorized(message: str, error: str | None = None) -> HTTPException:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, {"WWW-Authenticate": challenge})


def forbidden(location: str, field: str, message: str) -> HTTPException:
    """403 naming the field, in the shape FastAPI uses for validation errors."""
    detail = [{"loc": [location, field], "msg": message, "type": "forbidden"}]
    return HTTPException(status.HTTP_403_FORBIDDEN, detail)


class Authenticator:
    def __init__(self, admin_token: str, keys: KeyLookup, *, trust_anonymous: bool) -> None:
        if not admin_token or keys is None:
            raise ValueError("an admin token and a key lookup are required")
        self._admin = admin_token.encode()
        self._keys = keys
        self._trust_anonymous = trust_anonymous

    async def identify(self, authorization: str | None) -> Caller:
        """A presented credential is always checked, even where anonymous calls are trusted."""
        if not authorization:
            if self._trust_anonymous:
                return Caller("local")
            raise _unauthorized("missing bearer token: send an API key or the admin token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("expected `Authorization: Bearer <key>`", "invalid_request")
        # Constant time: the comparison must not reveal how much of the token matched.
        if hmac.compare_digest(token.encode(), self._admin):
            return Caller("admin")
        email = await asyncio.to_thread(self._keys.tenant_of, token)
        if email is None:
            raise _unauthorized("unknown or revoked API key", "invalid_token")
        return Caller("tenant", email)

    def install(self, api: FastAPI) -> None:
        """Make this the authenticator of ``api``'s ``CallerDep`` routes."""
        api.state.authenticator = self


async def _current_caller(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_caller_bearer)],
) -> Caller:
    authenticator: Authenticator = request.app.state.authenticator
    return await authenticator.identify(request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(_current_caller)]


def authenticator_for(settings: Settings, keys: KeyLookup) -> Authenticator:
    """Local mode trusts the loopback caller without credentials; production does not."""
    return Authenticator(
        settings.admin_token.get_secret_value(), keys, trust_anonymous=settings.mode == "local"
    )
