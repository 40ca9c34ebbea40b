"""Admin authentication: ``Authorization: Bearer <FAAS_ADMIN_TOKEN>``."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="The admin token (FAAS_ADMIN_TOKEN)")


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
