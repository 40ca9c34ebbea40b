"""Fault tests at the platform's edges: the container runtime (podman's API service) dies
under a running function, and the SMTP server is down while invoices are emailed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from infra import devstack
from tests.e2e.conftest import Platform
from tests.e2e.faultkit import (
    assert_one_email_each,
    assert_one_invoice_each,
    invoices_listed,
    mails_by_run,
    new_tenant,
    run_state,
    submit,
    wait_finished,
    wait_until,
)
from tests.e2e.test_metered_invoices import stored_samples

pytestmark = [pytest.mark.fault, pytest.mark.parametrize("platform", ["sqlite"], indirect=True)]
LOST_AFTER_S = 3.0
SMTP_DOWN_S = 15.0


@pytest.fixture(scope="module")
def runtime_overrides() -> dict[str, Any]:
    return {"lost_after_s": LOST_AFTER_S}


def containers_of(run_id: str) -> list[str]:
    listed = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=faas.run_id={run_id}"],
        capture_output=True, text=True, env={**os.environ, **devstack.podman_env()}, check=True,
    )  # fmt: skip
    return listed.stdout.split()


def timed_get(platform: Platform, path: str) -> tuple[int, float]:
    started = time.monotonic()
    status = platform.http.get(path).status_code
    return status, time.monotonic() - started


async def test_runtime_dies_under_a_running_function(platform: Platform, stack_dir: Path) -> None:
    tenant, tariff = new_tenant(platform, "runtime")
    run_id = submit(platform, tenant, tariff, "cpu", 30)
    await asyncio.sleep(2.0)  # metered for a while
    state, socket_path = stack_dir / "podman", stack_dir / "podman" / "podman.sock"
    service = int((state / "podman.pid").read_text())
    os.kill(service, signal.SIGKILL)  # the API service only: the container keeps running
    died_at = time.monotonic()
    try:
        # Nothing hangs while the runtime is away: reads answer, a run is accepted (it waits
        # for the runtime), and once the runtime counts as lost new runs are told to retry.
        assert timed_get(platform, f"/v1/functions/{run_id}")[0] == 200
        status, took = timed_get(platform, f"/v1/functions/{run_id}/logs")
        assert status in (200, 503) and took < 5, (status, took)
        body = {"image_name": "localhost/faas-cpu", "email": tenant, "tariff": tariff}
        queued = platform.http.post("/v1/functions/run", json=body)
        assert queued.status_code == 202 and queued.json()["status"] == "pending", queued.text
        run = wait_until(
            lambda: (r := run_state(platform, run_id))["finished_at"] and r,
            LOST_AFTER_S + 15, "the run given up after the runtime was lost",
        )  # fmt: skip
        print(f"run failed {time.monotonic() - died_at:.1f}s after the runtime died: {run}")
        assert run["status"] == "failed" and run["message"].startswith("runtime_lost"), run
        never = wait_until(
            lambda: (r := run_state(platform, queued.json()["id"]))["finished_at"] and r,
            15, "the queued run given up with the running one",
        )  # fmt: skip
        assert never["status"] == "failed" and never["started_at"] is None, never
        assert never["message"].startswith("runtime_lost") and "never started" in never["message"]
        refused = platform.http.post("/v1/functions/run", json=body)
        assert refused.status_code == 503, refused.text
    finally:
        devstack.start_podman_service(state, socket_path)
    # Back: the leftover container (still running under conmon) is removed.
    wait_until(lambda: not containers_of(run_id), 30, f"the leftover container of {run_id} removed")
    assert not containers_of(queued.json()["id"])
    # Only the run that ran is invoiced (invoices_listed checks there is no other).
    invoices = invoices_listed(platform, tenant, [run_id], timeout_s=60)
    await assert_one_invoice_each(tenant, invoices)
    lines = {x["kind"]: Decimal(x["quantity"]) for x in invoices[run_id]["lines"]}
    samples = await stored_samples(run_id)
    last_cpu_s = Decimal(samples[-1]["cpu_ns"]) / 10**9
    print(f"billed {lines['cpu']} CPU-s; the samples stored in the end reach {last_cpu_s}")
    # Billed for what it used while the platform could see it: more than nothing, no more
    # than its samples (which went on until the container was removed).
    assert Decimal(0) < lines["cpu"] <= last_cpu_s * Decimal("1.01") + Decimal("0.01")
    await assert_one_email_each(platform, tenant, invoices, timeout_s=60)


async def test_smtp_down_for_a_while(platform: Platform) -> None:
    tenant, tariff = new_tenant(platform, "smtp")
    platform.smtp.stop()
    stopped_at = time.monotonic()
    try:
        runs = [submit(platform, tenant, tariff, kind, 1) for kind in ("cpu", "mem", "cpu")]
        wait_finished(platform, runs, timeout_s=30)
        invoices = invoices_listed(platform, tenant, runs, timeout_s=60)
        # Longer than a few quick retries: the notifier must keep trying, not give up.
        await asyncio.sleep(max(0.0, SMTP_DOWN_S - (time.monotonic() - stopped_at)))
        assert not mails_by_run(platform, tenant), "mail while the server was down?"
    finally:
        platform.smtp.start()
    print(f"SMTP down for {time.monotonic() - stopped_at:.1f}s")
    await assert_one_invoice_each(tenant, invoices)
    await assert_one_email_each(platform, tenant, invoices, timeout_s=90)
