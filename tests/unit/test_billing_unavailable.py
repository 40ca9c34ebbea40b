"""The billing API answers 503 (retry later), not 500, when its invoice store is away."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.api.auth import Authenticator
from app.api.billing import InvoicesUnavailable, create_billing_api


class NoKeys:
    def tenant_of(self, secret: str) -> str | None:
        return None


class StoreAway:
    async def for_tenant(self, tenant: str, **kwargs: Any) -> Any:
        raise InvoicesUnavailable("ClickHouseUnavailable: the engine cannot be opened")

    async def current(self, run_id: str) -> Any:
        raise InvoicesUnavailable("ClickHouseUnavailable: the engine cannot be opened")


def test_store_away_is_503_with_the_reason() -> None:
    open_auth = Authenticator("admin-token", NoKeys(), trust_anonymous=True)  # local mode
    client = TestClient(create_billing_api(StoreAway(), open_auth, max_body_bytes=1024))
    listed = client.get("/a@example.com")
    one = client.get("/a@example.com/invoices/run-1")
    assert listed.status_code == 503 and one.status_code == 503
    assert "engine cannot be opened" in listed.json()["detail"]
