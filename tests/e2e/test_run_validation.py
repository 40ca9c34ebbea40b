"""Bad input gets a 4xx naming the field; what only the runtime can refuse (an image it
does not have) is accepted and ends ``failed`` naming the cause, unbilled; a runtime gone
for good gets a 503."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Platform
from tests.e2e.test_billing_http import wait_for_invoices
from tests.e2e.test_functions_http import wait_for_status

GOOD = {"image_name": "localhost/faas-echo", "email": "v@example.com"}


def post_run(http: httpx.Client, body: Any, path: str = "/v1/functions/run") -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=raw)


def named_fields(response: httpx.Response) -> set[str]:
    return {str(error["loc"][-1]) for error in response.json()["detail"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"image_name": "Not An Image!"}, "image_name"),
        ({"image_name": "localhost/UPPER"}, "image_name"),
        ({"image_name": ""}, "image_name"),
        ({"email": "not-an-email"}, "email"),
        ({"email": "a@b"}, "email"),
        ({"cpu": 64}, "cpu"),
        ({"cpu": 0}, "cpu"),
        ({"cpu": "lots"}, "cpu"),
        ({"memory_mb": 1_000_000}, "memory_mb"),
        ({"memory_mb": -5}, "memory_mb"),
        ({"timeout_s": 999_999}, "timeout_s"),
        ({"timeout_s": "soon"}, "timeout_s"),
        ({"env": {"BIG": "x" * 40_000}}, "env"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": ["A=B"]}, "env"),
        ({"command": "echo hi"}, "command"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_bad_field_is_422_naming_it(platform: Platform, change: dict[str, Any], field: str) -> None:
    response = post_run(platform.http, {**GOOD, **change})
    assert response.status_code == 422, response.text
    assert field in named_fields(response)


@pytest.mark.parametrize("field", ["image_name", "email"])
def test_missing_required_field_is_named(platform: Platform, field: str) -> None:
    body = {k: v for k, v in GOOD.items() if k != field}
    response = post_run(platform.http, body)
    assert response.status_code == 422
    assert field in named_fields(response)


def test_body_that_is_not_json_is_422(platform: Platform) -> None:
    response = post_run(platform.http, b"image_name=x&email=y")
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_missing_image_ends_failed_naming_it_and_is_not_billed(platform: Platform) -> None:
    email = f"missing-image-{platform.database}-{uuid.uuid4().hex[:6]}@example.com"
    response = post_run(platform.http, {"image_name": "localhost/not-built-here:1", "email": email})
    assert response.status_code == 202, response.text
    refused = wait_for_status(platform, response.json()["id"], {"failed", "succeeded"})
    assert (refused["status"], refused["reason"]) == ("failed", "failed")
    assert refused["message"].startswith("image not available to the runtime")
    assert "localhost/not-built-here" in refused["message"]
    assert refused["started_at"] is None
    # A run of the same tenant that ran is invoiced; the refused one never is.
    ran = post_run(platform.http, {"image_name": "localhost/faas-crash", "email": email})
    wait_for_status(platform, ran.json()["id"], {"failed"})
    wait_for_invoices(platform, email, 1)
    time.sleep(2)  # the refused run's event came first: an invoice of it would be here
    billing = platform.http.get(f"/billing/{email}").json()
    assert [i["run_id"] for i in billing["invoices"]] == [ran.json()["id"]]


def test_bad_email_query_is_422(platform: Platform) -> None:
    response = platform.http.get("/v1/functions", params={"email": "nope"})
    assert response.status_code == 422
    assert "email" in named_fields(response)


LOST_AFTER_S = 2.0


@pytest.fixture
def broken_runtime(tmp_path: Path, serve_port: int, kafka_bootstrap: str) -> Iterator[httpx.Client]:
    """The control plane pointed at a podman socket that does not exist."""
    from ray import serve

    from app.settings import Settings
    from deployments.control_plane import build

    settings = Settings(
        home=tmp_path,
        kafka={"bootstrap": kafka_bootstrap},
        runtime={"docker_url": f"unix://{tmp_path / 'absent.sock'}", "lost_after_s": LOST_AFTER_S,
                 "reconcile_interval_s": 0.3},
    )  # fmt: skip
    serve.run(build(settings), name="broken", route_prefix="/broken")
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}/broken", timeout=30) as client:
        yield client
    serve.delete("broken")


def test_runtime_gone_fails_queued_runs_then_refuses_with_503(
    broken_runtime: httpx.Client,
) -> None:
    first = post_run(broken_runtime, GOOD)
    assert first.status_code == 202, first.text  # accepted without asking the runtime
    run_id = first.json()["id"]
    deadline = time.monotonic() + LOST_AFTER_S + 15
    while (run := broken_runtime.get(f"/v1/functions/{run_id}").json())["status"] == "pending":
        assert time.monotonic() < deadline, "the queued run was not given up"
        time.sleep(0.3)
    assert (run["status"], run["started_at"]) == ("failed", None)
    assert run["message"].startswith("runtime_lost") and "never started" in run["message"]
    response = post_run(broken_runtime, GOOD)
    assert response.status_code == 503
    assert "runtime unavailable" in response.json()["detail"]
    listed = broken_runtime.get("/v1/functions", params={"email": GOOD["email"]})
    assert [r["id"] for r in listed.json()] == [run_id]
