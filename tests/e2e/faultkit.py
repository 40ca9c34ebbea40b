"""What the fault tests share: start small runs, kill Serve replicas, wait with bounds, and
check that every run was invoiced once, emailed once and billed from its distinct samples."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from tests.e2e.conftest import Platform
from tests.e2e.test_metered_invoices import independent_usage, stored_samples

T = TypeVar("T")
PRICES = {
    "currency": "EUR", "price_cpu_second": "0.0001", "price_gib_second": "0.00002",
    "price_execution": "0.00001", "price_second": "0.000001",
}  # fmt: skip


def wait_until(
    check: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.3
) -> T:
    """``check()`` until it returns something other than None/False; fails naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        time.sleep(every_s)


def new_tenant(platform: Platform, label: str) -> tuple[str, str]:
    """A fresh tenant email and a tariff without free allowance (so totals are non-zero)."""
    tariff = f"fault-{label}-{uuid.uuid4().hex[:6]}"
    created = platform.http.post(
        "/v1/tariffs", json={"name": tariff, **PRICES}, headers=platform.admin
    )
    assert created.status_code == 201, created.text
    return f"fault-{label}-{uuid.uuid4().hex[:6]}@example.com", tariff


def submit(platform: Platform, tenant: str, tariff: str, kind: str, duration_s: float) -> str:
    """A small run: ``cpu`` burns a quarter core, ``mem`` holds 16 MiB, for ``duration_s``."""
    bodies = {
        "cpu": {"image_name": "localhost/faas-cpu", "cpu": 0.25},
        "mem": {"image_name": "localhost/faas-mem", "env": {"MEM_MB": "16"}, "cpu": 0.25},
    }
    body = bodies[kind]
    env = {**body.get("env", {}), "DURATION_S": str(duration_s)}
    response = platform.http.post(
        "/v1/functions/run",
        json={**body, "env": env, "memory_mb": 64, "email": tenant, "tariff": tariff},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def run_state(platform: Platform, run_id: str) -> dict[str, Any]:
    response = platform.http.get(f"/v1/functions/{run_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_finished(platform: Platform, run_ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    def finished() -> list[dict[str, Any]] | None:
        runs = [run_state(platform, r) for r in run_ids]
        return runs if all(r["finished_at"] for r in runs) else None

    return wait_until(finished, timeout_s, f"runs {run_ids} finished")


# -- Serve replicas -----------------------------------------------------------------------------


def replica_names(app: str, deployment: str) -> set[str]:
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(prefix)
    }


def kill_replica(app: str, deployment: str) -> str:
    """Kill the deployment's one replica process (as a crash would); returns its name."""
    import ray

    names = replica_names(app, deployment)
    assert len(names) == 1, f"{app}/{deployment}: expected one replica, found {names}"
    (name,) = names
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


def wait_replaced(app: str, deployment: str, old: str, timeout_s: float = 60) -> str:
    """Serve notices the dead replica and starts another; returns the new one's name."""
    from ray import serve

    def healthy_new() -> str | None:
        fresh = replica_names(app, deployment) - {old}
        status = serve.status().applications[app].deployments[deployment].status
        return next(iter(fresh)) if fresh and status == "HEALTHY" else None

    return wait_until(healthy_new, timeout_s, f"{app}/{deployment} replaced after a kill", 0.5)


# -- the checks ---------------------------------------------------------------------------------


async def owner_query(sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
    from ray import serve

    owner = serve.get_deployment_handle("ClickHouseOwner", app_name="analytics")
    table = await owner.query_arrow.remote(sql, parameters)
    return list(table.to_pylist())


def invoices_listed(
    platform: Platform, tenant: str, run_ids: list[str], timeout_s: float
) -> dict[str, Any]:
    """The billing API's current invoice of each run, once all of them are listed."""

    def listed() -> dict[str, Any] | None:
        response = platform.http.get(f"/billing/{tenant}", params={"limit": 500})
        if response.status_code == 503:  # ClickHouse coming back: retry, as a client would
            return None
        assert response.status_code == 200, response.text
        invoices = {i["run_id"]: i for i in response.json()["invoices"]}
        return invoices if set(run_ids) <= set(invoices) else None

    invoices = wait_until(listed, timeout_s, f"{len(run_ids)} invoices of {tenant} listed", 0.5)
    assert set(invoices) == set(run_ids), (
        f"invoices of unknown runs: {set(invoices) - set(run_ids)}"
    )
    return invoices


async def assert_one_invoice_each(tenant: str, invoices: dict[str, Any]) -> None:
    """One version per run in ClickHouse; a row stored twice (a redone batch) is identical."""
    rows = await owner_query(
        "SELECT run_id, version, toString(total) AS total FROM invoices WHERE tenant = {t:String}",
        {"t": tenant},
    )
    for run_id, invoice in invoices.items():
        mine = [r for r in rows if r["run_id"] == run_id]
        assert {r["version"] for r in mine} == {1}, f"run {run_id}: versions {mine}"
        assert {Decimal(r["total"]) for r in mine} == {Decimal(invoice["total"])}, (
            f"run {run_id}: stored twice with different totals {mine}"
        )


def mails_by_run(platform: Platform, tenant: str) -> Counter[str]:
    """How many emails each run's invoice produced (the Message-ID names run and version)."""
    found: Counter[str] = Counter()
    for path in platform.mail_dir.glob("*.eml"):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if message["To"] == tenant:
            found[str(message["Message-ID"]).split(".")[1]] += 1
    return found


async def assert_one_email_each(
    platform: Platform, tenant: str, invoices: dict[str, Any], timeout_s: float
) -> None:
    wait_until(
        lambda: set(mails_by_run(platform, tenant)) >= set(invoices),
        timeout_s, f"an email for each of {len(invoices)} invoices of {tenant}", 0.5,
    )  # fmt: skip
    await asyncio.sleep(1.5)  # a duplicate would show up by now
    counts = mails_by_run(platform, tenant)
    assert counts == Counter(dict.fromkeys(invoices, 1)), f"emails per run: {counts}"


async def assert_billed_from_distinct_samples(run: dict[str, Any], invoice: dict[str, Any]) -> int:
    """Every (node, seq) stored once, and the invoice equals what those samples give:
    nothing counted twice, nothing priced from a partial set. Returns the sample count."""
    counts = await owner_query(
        "SELECT count() AS stored, uniqExact(node, seq) AS distinct_samples"
        " FROM usage_samples FINAL WHERE run_id = {r:String}",
        {"r": run["id"]},
    )
    assert counts[0]["stored"] == counts[0]["distinct_samples"], f"run {run['id']}: {counts}"
    samples = await stored_samples(run["id"])
    lines = {line["kind"]: Decimal(line["quantity"]) for line in invoice["lines"]}
    if len(samples) >= 2:
        cpu_s, gib_s, _ = independent_usage(samples, run)
        assert abs(lines["cpu"] - cpu_s) <= Decimal("0.000001"), (run["id"], lines, cpu_s)
        assert abs(lines["memory"] - gib_s) <= Decimal("0.000001"), (run["id"], lines, gib_s)
    wall = (
        datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])
    ).total_seconds()
    # Physics: a quarter core cannot burn more than a quarter of the wall time.
    assert float(lines["cpu"]) <= 0.25 * wall * 1.1 + 0.05, (run["id"], lines["cpu"], wall)
    return len(samples)


async def assert_exactly_once(platform: Platform, tenant: str, run_ids: list[str]) -> None:
    """Every run finished, invoiced once, billed from its distinct samples, emailed once."""
    runs = wait_finished(platform, run_ids, timeout_s=60)
    invoices = invoices_listed(platform, tenant, run_ids, timeout_s=90)
    await assert_one_invoice_each(tenant, invoices)
    for run in runs:
        await assert_billed_from_distinct_samples(run, invoices[run["id"]])
    await assert_one_email_each(platform, tenant, invoices, timeout_s=60)
