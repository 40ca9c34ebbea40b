"""Invoices over HTTP: a stopped run is invoiced once, with the tariff it ran under."""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from app.pricing import TariffPrices, Usage, price_run
from tests.e2e.conftest import Platform


def wait_for_invoices(
    platform: Platform, email: str, count: int, timeout_s: float = 45
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = platform.http.get(f"/billing/{email}")
        assert response.status_code == 200, response.text
        body = response.json()
        # count and page come from two queries: wait until both show the invoices
        if body["count"] >= count and len(body["invoices"]) >= min(count, body["limit"]):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{email}: {body.get('count')} invoices, wanted {count}")


def test_a_stopped_run_is_invoiced_by_the_formula(platform: Platform) -> None:
    email = f"billed-{platform.database}@example.com"
    run = platform.http.post(
        "/v1/functions/run", json={"image_name": "localhost/faas-crash", "email": email}
    ).json()
    billing = wait_for_invoices(platform, email, 1)
    assert billing["tenant"] == email and billing["count"] == 1
    invoice = billing["invoices"][0]
    stored_run = platform.http.get(f"/v1/functions/{run['id']}").json()
    assert invoice["run_id"] == run["id"] and invoice["version"] == 1
    assert invoice["tariff"] == "standard" and invoice["currency"] == "USD"
    lines = {line["kind"]: line for line in invoice["lines"]}
    assert set(lines) == {"cpu", "memory", "execution", "duration"}
    assert Decimal(lines["execution"]["quantity"]) == 1
    wall = datetime.fromisoformat(stored_run["finished_at"]) - datetime.fromisoformat(
        stored_run["started_at"]
    )
    assert Decimal(lines["duration"]["quantity"]) == pytest.approx(
        Decimal(str(wall.total_seconds())), abs=Decimal("0.000001")
    )
    tariff = platform.http.get("/v1/tariffs/standard", headers=platform.admin).json()
    prices = TariffPrices(
        currency=tariff["currency"],
        **{k: Decimal(tariff[k]) for k in (
            "price_cpu_second", "price_gib_second", "price_execution", "price_second",
            "free_cpu_seconds", "free_gib_seconds", "free_executions")},
    )  # fmt: skip
    usage = Usage(
        Decimal(lines["cpu"]["quantity"]), Decimal(lines["memory"]["quantity"]),
        Decimal(1), Decimal(lines["duration"]["quantity"]),
    )  # fmt: skip
    assert Decimal(invoice["total"]) == price_run(usage, prices).total
    assert billing["totals"] == [{"currency": "USD", "total": invoice["total"], "invoices": 1}]
    one = platform.http.get(f"/billing/{email}/invoices/{run['id']}")
    assert one.status_code == 200 and one.json()["total"] == invoice["total"]
    assert platform.http.get(f"/billing/other@example.com/invoices/{run['id']}").status_code == 404


def test_unknown_tenant_has_no_invoices(platform: Platform) -> None:
    body = platform.http.get("/billing/nobody-at-all@example.com").json()
    assert body["count"] == 0 and body["invoices"] == [] and body["totals"] == []


@pytest.mark.parametrize(
    "email",
    [
        "not-an-email",
        "a@b",
        "x' OR '1'='1",
        "a@example.com' OR 1=1 --",
        "a@example.com;DROP TABLE invoices",
    ],
)
def test_malformed_or_hostile_email_is_422(platform: Platform, email: str) -> None:
    response = platform.http.get(f"/billing/{email}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == "email"


def test_hostile_strings_reach_the_database_only_as_parameters(platform: Platform) -> None:
    # A syntactically valid address full of SQL: parameterised, so simply no invoices.
    response = platform.http.get('/billing/"x\';DROP TABLE invoices;--"@example.com')
    assert response.status_code in (200, 422)
    if response.status_code == 200:
        assert response.json()["invoices"] == []
    bad_run = platform.http.get("/billing/a@example.com/invoices/1' OR '1'='1")
    assert bad_run.status_code == 422
