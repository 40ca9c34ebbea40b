"""The run path end to end: HTTP on Ray Serve -> podman -> Kafka lifecycle events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer

from tests.e2e.conftest import Platform

EMAIL = "tenant@example.com"


def wait_for_status(
    platform: Platform, run_id: str, wanted: set[str], timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = platform.http.get(f"/v1/functions/{run_id}")
        assert response.status_code == 200, response.text
        run = response.json()
        if run["status"] in wanted:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} stayed {run.get('status')}, wanted {wanted}")


def submit(platform: Platform, body: dict[str, Any]) -> str:
    # The original system's curl sends no JSON content type: neither do we.
    response = platform.http.post(
        "/v1/functions/run",
        content=json.dumps(body).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "pending"  # accepted: the starter starts it shortly
    return str(accepted["id"])


async def lifecycle_events(platform: Platform, run_id: str, count: int = 3) -> list[dict[str, Any]]:
    """Reads the run's events back with an independent consumer, from the beginning."""
    consumer = AIOKafkaConsumer(
        platform.deployments_topic,
        bootstrap_servers=platform.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    events: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 30
        while len(events) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if record.key == run_id.encode():
                        events.append(json.loads(record.value))
    finally:
        await consumer.stop()
    return events


def assert_lifecycle(events: list[dict[str, Any]], run_id: str, status: str, reason: str) -> None:
    assert [e["type"] for e in events] == ["deployed", "started", "stopped"]
    for event in events:
        assert event["run_id"] == run_id
        assert event["tenant"] == EMAIL
        assert event["version"] == 1
        assert event["event_id"] and event["event_time"]
    assert len({e["event_id"] for e in events}) == 3
    stopped = events[-1]
    assert stopped["status"] == status
    assert stopped["reason"] == reason
    assert stopped["finished_at"] >= stopped["started_at"]


async def test_echo_runs_logs_and_stops(platform: Platform) -> None:
    run_id = submit(
        platform,
        {"image_name": "localhost/faas-echo:latest", "email": EMAIL, "env": {"GREETING": "hi"}},
    )
    run = wait_for_status(platform, run_id, {"running"})
    assert run["image_name"] == "localhost/faas-echo:latest"
    deadline = time.monotonic() + 10
    logs = ""
    while "listening on :8080" not in logs and time.monotonic() < deadline:
        logs = platform.http.get(f"/v1/functions/{run_id}/logs").text
        await asyncio.sleep(0.2)
    assert "GREETING=hi" in logs and "listening on :8080" in logs

    stopped = platform.http.post(f"/v1/functions/{run_id}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["status"] == "stopped"
    assert stopped.json()["reason"] == "stopped"
    # Logs stay readable after the container is gone.
    assert "GREETING=hi" in platform.http.get(f"/v1/functions/{run_id}/logs").text
    # Stopping again changes nothing.
    again = platform.http.post(f"/v1/functions/{run_id}/stop").json()
    assert again["finished_at"] == stopped.json()["finished_at"]

    events = await lifecycle_events(platform, run_id)
    assert_lifecycle(events, run_id, "stopped", "stopped")
    assert events[0]["image_name"] == "localhost/faas-echo:latest"
    assert events[0]["memory_mb"] == 256 and events[0]["cpu"] == 1.0


async def test_crash_ends_failed_with_exit_code(platform: Platform) -> None:
    run_id = submit(
        platform, {"image_name": "localhost/faas-crash", "email": EMAIL, "env": {"EXIT_CODE": "7"}}
    )
    run = wait_for_status(platform, run_id, {"failed", "succeeded"})
    assert run["status"] == "failed"
    assert run["exit_code"] == 7
    assert run["reason"] == "exited"
    assert "exiting with code 7" in platform.http.get(f"/v1/functions/{run_id}/logs").text
    events = await lifecycle_events(platform, run_id)
    assert_lifecycle(events, run_id, "failed", "exited")
    assert events[-1]["exit_code"] == 7


async def test_cpu_past_its_timeout_ends_timed_out(platform: Platform) -> None:
    run_id = submit(
        platform,
        {"image_name": "localhost/faas-cpu", "email": EMAIL, "timeout_s": 2,
         "cpu": 0.5, "env": {"DURATION_S": "30"}},
    )  # fmt: skip
    # The wait includes the start now (the 202 comes before it): seconds at a load of 25.
    run = wait_for_status(platform, run_id, {"timed_out", "failed", "succeeded"}, timeout_s=45)
    assert run["status"] == "timed_out"
    assert run["reason"] == "timeout"
    started = run["started_at"]
    finished = run["finished_at"]
    assert started and finished
    events = await lifecycle_events(platform, run_id)
    assert_lifecycle(events, run_id, "timed_out", "timeout")


def test_list_by_email_newest_first(platform: Platform) -> None:
    email = f"list-{platform.database}@example.com"
    first = submit(platform, {"image_name": "localhost/faas-crash", "email": email})
    second = submit(platform, {"image_name": "localhost/faas-crash", "email": email})
    listed = platform.http.get("/v1/functions", params={"email": email})
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()] == [second, first]
    assert platform.http.get("/v1/functions", params={"email": "nobody@example.com"}).json() == []


def test_unknown_run_is_404(platform: Platform) -> None:
    for path in ("/v1/functions/nope", "/v1/functions/nope/logs"):
        response = platform.http.get(path)
        assert response.status_code == 404
        assert "nope" in response.json()["detail"]
    assert platform.http.post("/v1/functions/nope/stop").status_code == 404


def test_health_and_openapi(platform: Platform) -> None:
    assert platform.http.get("/healthz").json() == {"status": "ok"}
    spec = platform.http.get("/openapi.json").json()
    assert "/v1/functions/run" in spec["paths"]
    assert platform.http.get("/docs").status_code == 200
