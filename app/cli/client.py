"""HTTP access for the CLI: one place that turns API errors into readable messages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """The platform refused or could not be reached; the message is for a person."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(detail, list):
        return "; ".join(f"{e.get('loc', ['?'])[-1]}: {e.get('msg', '')}" for e in detail)
    return str(detail)


def admin_token() -> str | None:
    """``FAAS_ADMIN_TOKEN``, or the token ``make run`` wrote into ``$FAAS_HOME/admin_token``."""
    token = os.environ.get("FAAS_ADMIN_TOKEN")
    if token:
        return token
    path = Path(os.environ.get("FAAS_HOME", ".faas")) / "admin_token"
    return path.read_text().strip() if path.exists() else None


class Api:
    """``admin``: send the admin token; otherwise the tenant's ``api_key`` if given (local
    mode needs none, production mode does)."""

    def __init__(
        self, url: str, *, admin: bool = False, api_key: str | None = None, timeout_s: float = 30
    ) -> None:
        headers = {}
        if admin:
            token = admin_token()
            if not token:
                raise ApiError("no admin token: set FAAS_ADMIN_TOKEN (or run `make run` locally)")
            headers["Authorization"] = f"Bearer {token}"
        elif api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the platform at {self._http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise ApiError(f"{response.status_code}: {_detail(response)}", response.status_code)
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text
