"""Fault tests: the platform's processes killed mid-stream and brought back — the meter
server (SIGKILL, started again on its port), the ingestor, invoicer and notifier replicas
and the control-plane replica (killed; Serve starts new ones). After each, every run has
exactly one invoice and one email, billed from its samples with none counted twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from infra import devstack
from tests.e2e.conftest import Platform
from tests.e2e.faultkit import (
    assert_exactly_once,
    kill_replica,
    new_tenant,
    submit,
    wait_finished,
    wait_replaced,
)

pytestmark = [pytest.mark.fault, pytest.mark.parametrize("platform", ["sqlite"], indirect=True)]


async def test_meter_server_killed_and_restarted(platform: Platform) -> None:
    tenant, tariff = new_tenant(platform, "meter")
    runs = [submit(platform, tenant, tariff, kind, 3) for kind in ("cpu", "mem")]
    await asyncio.sleep(1.5)  # samples are flowing
    state = platform.settings.home / "meter"
    pid = int((state / "meter-server.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    await asyncio.sleep(1.0)  # datagrams sent meanwhile are lost; the counters are cumulative
    devstack.start_meter("server", state, platform.meter_env)
    print(f"meter server down for {time.monotonic() - started:.1f}s")
    runs.append(submit(platform, tenant, tariff, "cpu", 2))
    await assert_exactly_once(platform, tenant, runs)


@pytest.mark.parametrize("deployment", ["Ingestor", "Invoicer", "Notifier"])
async def test_analytics_worker_killed_mid_stream(platform: Platform, deployment: str) -> None:
    tenant, tariff = new_tenant(platform, deployment.lower())
    runs = [submit(platform, tenant, tariff, "cpu", 2)]
    await asyncio.sleep(1.0)
    runs.append(submit(platform, tenant, tariff, "mem", 2))
    # The first run's stop, invoice and email are under way when the replica dies.
    wait_finished(platform, runs[:1], timeout_s=30)
    await asyncio.sleep(0.5)
    killed = kill_replica("analytics", deployment)
    started = time.monotonic()
    runs.append(submit(platform, tenant, tariff, "cpu", 2))
    wait_replaced("analytics", deployment, killed)
    print(f"{deployment} replaced after {time.monotonic() - started:.1f}s")
    await assert_exactly_once(platform, tenant, runs)


async def test_control_plane_killed_mid_runs(platform: Platform) -> None:
    tenant, tariff = new_tenant(platform, "control")
    runs = [submit(platform, tenant, tariff, kind, 3) for kind in ("cpu", "mem")]
    await asyncio.sleep(1.0)
    killed = kill_replica("faas", "ControlPlane")
    started = time.monotonic()
    wait_replaced("faas", "ControlPlane", killed)
    print(f"control plane replaced after {time.monotonic() - started:.1f}s")
    runs.append(submit(platform, tenant, tariff, "cpu", 2))
    await assert_exactly_once(platform, tenant, runs)


HOLD_ENGINE = """
import sys, time, clickhouse_connect
while True:  # the killed owner's process may still be letting go of the path
    try:
        client = clickhouse_connect.get_client(dsn=sys.argv[1])
        break
    except Exception:
        time.sleep(0.05)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
client.close()
"""


async def test_clickhouse_engine_unavailable_for_a_while(platform: Platform) -> None:
    """The owner of the embedded engine dies and another process holds its data path for
    ``hold_s``: the restarted owner cannot open it, the ingestor cannot write and must not
    commit; Kafka keeps the samples, and after the release everything is ingested once."""
    hold_s = 20.0
    tenant, tariff = new_tenant(platform, "clickhouse")
    runs = [submit(platform, tenant, tariff, kind, 4) for kind in ("cpu", "mem")]
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_ENGINE, str(platform.settings.clickhouse.url), str(hold_s),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.sleep(1.0)
        killed = kill_replica("analytics", "ClickHouseOwner")
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line.strip() == b"held", "the holder did not get the engine's data path"
        held_at = time.monotonic()
        wait_replaced("analytics", "ClickHouseOwner", killed)  # up, but cannot open the path
        billing = platform.http.get(f"/billing/{tenant}")
        print(f"billing {time.monotonic() - held_at:.1f}s into the outage: {billing.status_code}")
        assert billing.status_code == 503, billing.text  # told to retry: no 500, no hang
        runs.append(submit(platform, tenant, tariff, "cpu", 2))
        assert await asyncio.wait_for(holder.wait(), hold_s + 10) == 0
    finally:
        if holder.returncode is None:
            holder.kill()
    print(f"engine held for {time.monotonic() - held_at:.1f}s")
    await assert_exactly_once(platform, tenant, runs)
