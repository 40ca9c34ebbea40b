"""The whole chain on real components: run → meter agent → UDP → meter server → Kafka →
ingestor → ClickHouse → invoicer → invoice over HTTP, checked against the samples."""

from __future__ import annotations

import asyncio
import email
import time
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from app.pricing import TariffPrices, Usage, price_run
from tests.e2e.conftest import Platform
from tests.e2e.test_billing_http import wait_for_invoices
from tests.e2e.test_functions_http import wait_for_status

PRICES = {
    "currency": "EUR", "price_cpu_second": "0.0001", "price_gib_second": "0.00002",
    "price_execution": "0.00001", "price_second": "0.000001",
}  # fmt: skip


async def stored_samples(run_id: str) -> list[dict[str, Any]]:
    """Reads the run's samples straight from ClickHouse, through the engine's owner."""
    from ray import serve

    owner = serve.get_deployment_handle("ClickHouseOwner", app_name="analytics")
    table = await owner.query_arrow.remote(
        "SELECT node, seq, sample_time, cpu_ns, memory_bytes, memory_byte_ms, final"
        " FROM usage_samples FINAL WHERE run_id = {run:String} ORDER BY node, seq",
        {"run": run_id},
    )
    return list(table.to_pylist())


def mails_to(platform: Platform, address: str) -> list[email.message.Message]:
    parsed = (email.message_from_bytes(p.read_bytes()) for p in platform.mail_dir.glob("*.eml"))
    return [m for m in parsed if m["To"] == address]


def independent_usage(
    samples: list[dict[str, Any]], run: dict[str, Any]
) -> tuple[Decimal, Decimal, Decimal]:
    """The DESIGN formula written out again: last counters plus the tail to the finish."""
    last, prev = samples[-1], samples[-2]
    finished = datetime.fromisoformat(run["finished_at"])
    started = datetime.fromisoformat(run["started_at"])
    tail = Decimal(str(max(0.0, (finished - last["sample_time"]).total_seconds())))
    span = Decimal(str((last["sample_time"] - prev["sample_time"]).total_seconds()))
    rate = Decimal(last["cpu_ns"] - prev["cpu_ns"]) / span if span else Decimal(0)
    cpu_s = (Decimal(last["cpu_ns"]) + rate * tail) / Decimal(10**9)
    gib_s = (
        Decimal(last["memory_byte_ms"]) / 1000 + Decimal(last["memory_bytes"]) * tail
    ) / Decimal(2**30)
    wall_s = Decimal(str((finished - started).total_seconds()))
    return cpu_s, gib_s, wall_s


async def test_metered_runs_are_invoiced_from_their_samples(platform: Platform) -> None:
    http = platform.http
    tariff_name = f"metered-{uuid.uuid4().hex[:6]}"
    created = http.post("/v1/tariffs", json={"name": tariff_name, **PRICES}, headers=platform.admin)
    assert created.status_code == 201, created.text
    email_address = f"metered-{platform.database}-{uuid.uuid4().hex[:6]}@example.com"
    bodies = [
        {
            "image_name": "localhost/faas-mem",
            "env": {"MEM_MB": "64", "DURATION_S": "5"},
            "memory_mb": 128,
        },
        {"image_name": "localhost/faas-cpu", "env": {"DURATION_S": "4"}, "cpu": 0.5},
    ]
    runs = []
    for body in bodies:  # one after the other: on 2 cores a concurrent run would steal CPU
        response = http.post(
            "/v1/functions/run", json={**body, "email": email_address, "tariff": tariff_name}
        )
        assert response.status_code == 202, response.text
        runs.append(
            wait_for_status(platform, response.json()["id"], {"succeeded", "failed"}, timeout_s=40)
        )
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    stopped_at = time.monotonic()
    billing = wait_for_invoices(platform, email_address, 2, timeout_s=30)
    print(f"stop -> both invoices listed: {time.monotonic() - stopped_at:.1f}s")
    invoices = {i["run_id"]: i for i in billing["invoices"]}
    prices = TariffPrices(**{k: Decimal(v) if k != "currency" else v for k, v in PRICES.items()},
                          free_cpu_seconds=Decimal(0), free_gib_seconds=Decimal(0), free_executions=Decimal(0))  # fmt: skip
    for run in runs:
        invoice = invoices[run["id"]]
        samples = await stored_samples(run["id"])
        assert len(samples) >= 10 and samples[-1]["final"]
        cpu_s, gib_s, wall_s = independent_usage(samples, run)
        lines = {line["kind"]: line for line in invoice["lines"]}
        assert Decimal(lines["cpu"]["quantity"]) == pytest.approx(cpu_s, abs=Decimal("0.000001"))
        assert Decimal(lines["memory"]["quantity"]) == pytest.approx(gib_s, abs=Decimal("0.000001"))
        assert Decimal(lines["duration"]["quantity"]) == pytest.approx(
            wall_s, abs=Decimal("0.000001")
        )
        usage = Usage(
            *(Decimal(lines[k]["quantity"]) for k in ("cpu", "memory", "execution", "duration"))
        )
        assert Decimal(invoice["total"]) == price_run(usage, prices).total
        assert invoice["currency"] == "EUR" and invoice["tariff"] == tariff_name
    mem_invoice, cpu_invoice = invoices[runs[0]["id"]], invoices[runs[1]["id"]]
    mem_gib_s = Decimal(next(x for x in mem_invoice["lines"] if x["kind"] == "memory")["quantity"])
    cpu_s = Decimal(next(x for x in cpu_invoice["lines"] if x["kind"] == "cpu")["quantity"])
    print(
        f"faas-mem: {mem_gib_s} GiB-s (expected ~0.3125); faas-cpu: {cpu_s} CPU-s (expected ~2.0)"
    )
    assert float(mem_gib_s) == pytest.approx(0.3125, rel=0.05)
    assert float(cpu_s) == pytest.approx(2.0, rel=0.05)
    # Exactly one email per invoice, each with its total.
    received: list[email.message.Message] = []
    for _ in range(60):
        received = mails_to(platform, email_address)
        if len(received) >= 2:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # a duplicate would show up now
    received = mails_to(platform, email_address)
    assert len(received) == 2
    # "Invoice for run 1a2b3c4d — 0.00123 EUR": the emailed totals are the invoiced ones.
    emailed = sorted(Decimal(str(m["Subject"]).rsplit(" ", 2)[-2]) for m in received)
    assert emailed == sorted(Decimal(i["total"]) for i in invoices.values())
