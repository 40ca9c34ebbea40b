"""Re-billing as a Ray job against the running platform: dry run, a revision per changed
invoice, a correction email, and nothing more on a second run."""

from __future__ import annotations

import email
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl

from analytics.rebill import RebillScope
from deployments.rebill_job import rebill
from tests.e2e.conftest import Platform
from tests.e2e.test_billing_http import wait_for_invoices

TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
SCOPE_ALL = RebillScope(TODAY - timedelta(days=1), TODAY + timedelta(days=2))


def test_rebill_after_a_price_change(platform: Platform, tmp_path: Path) -> None:
    http, admin = platform.http, platform.admin
    name = f"rebill-{uuid.uuid4().hex[:6]}"
    body = {"name": name, "currency": "USD", "price_cpu_second": "0", "price_gib_second": "0",
            "price_execution": "0.10"}  # fmt: skip
    assert http.post("/v1/tariffs", json=body, headers=admin).status_code == 201
    a, b = (f"{who}-{uuid.uuid4().hex[:6]}@example.com" for who in ("a", "b"))
    for tenant in (a, a, b):
        run = {"image_name": "localhost/faas-crash", "email": tenant, "tariff": name}
        assert http.post("/v1/functions/run", json=run).status_code == 202
    wait_for_invoices(platform, a, 2)
    wait_for_invoices(platform, b, 1)
    assert (
        http.patch(
            f"/v1/tariffs/{name}", json={"price_execution": "0.25"}, headers=admin
        ).status_code
        == 200
    )

    report = tmp_path / "report.csv"
    dry = rebill(platform.settings, RebillScope(SCOPE_ALL.since, SCOPE_ALL.until, (a, b)),
                 what_if=None, dry_run=True, report=report)  # fmt: skip
    assert len(dry) == 3 and all(r.changed for r in dry)
    rows = pl.read_csv(report)
    assert rows.height == 3 and set(rows["new_total"].cast(pl.String)) == {"0.25"}
    assert {i["version"] for i in http.get(f"/billing/{a}").json()["invoices"]} == {1}

    revised = rebill(platform.settings, RebillScope(SCOPE_ALL.since, SCOPE_ALL.until, (a,)),
                     what_if=None, dry_run=False, report=None)  # fmt: skip
    assert sum(r.changed for r in revised) == 2
    billing_a = http.get(f"/billing/{a}").json()
    assert {(i["version"], Decimal(i["total"])) for i in billing_a["invoices"]} == {
        (2, Decimal("0.25"))
    }
    assert billing_a["totals"][0]["total"] == "0.5"
    assert {i["version"] for i in http.get(f"/billing/{b}").json()["invoices"]} == {1}  # untouched

    again = rebill(platform.settings, RebillScope(SCOPE_ALL.since, SCOPE_ALL.until, (a,)),
                   what_if=None, dry_run=False, report=None)  # fmt: skip
    assert not any(r.changed for r in again)

    deadline = time.monotonic() + 30
    corrections: list[str] = []
    while len(corrections) < 2 and time.monotonic() < deadline:
        parsed = (email.message_from_bytes(p.read_bytes()) for p in platform.mail_dir.glob("*.eml"))
        corrections = [
            str(m["Subject"]) for m in parsed if m["To"] == a and "Corrected" in str(m["Subject"])
        ]
        time.sleep(0.5)
    assert len(corrections) == 2 and all("0.25 USD" in s for s in corrections)
