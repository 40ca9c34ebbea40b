"""The ``faas`` command line against the running platform, including its error exits."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from typer.testing import CliRunner

from app.cli.main import app
from tests.e2e.conftest import ADMIN_TOKEN, Platform

runner = CliRunner()


def faas(platform: Platform, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "--url", str(platform.http.base_url).rstrip("/")])
    return result.exit_code, result.output


def test_run_follow_status_logs_and_stop(platform: Platform) -> None:
    email = f"cli-{uuid.uuid4().hex[:6]}@example.com"
    code, output = faas(platform, "run", "localhost/faas-crash", "--email", email, "-e", "EXIT_CODE=0",
                        "--follow", "--json")  # fmt: skip
    assert code == 0, output
    finished = json.loads(output)
    assert finished["status"] == "succeeded" and finished["exit_code"] == 0

    code, output = faas(platform, "run", "localhost/faas-crash", "--email", email, "--follow")
    assert code == 3  # the function failed: the CLI says so in its exit code
    assert "exiting with code 3" in output and "failed" in output

    code, output = faas(platform, "run", "localhost/faas-echo", "--email", email, "--json")
    assert code == 0 and json.loads(output)["status"] == "pending"
    run_id = json.loads(output)["id"]
    deadline = time.monotonic() + 30
    while (status := json.loads(faas(platform, "status", run_id, "--json")[1])["status"]) in (
        "pending",
        "deployed",
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == "running"
    code, output = faas(platform, "stop", run_id, "--json")
    assert code == 0 and json.loads(output)["status"] == "stopped"
    code, output = faas(platform, "logs", run_id)
    assert code == 0 and "faas-echo" in output


def test_errors_exit_non_zero_with_a_message(platform: Platform) -> None:
    code, output = faas(platform, "status", "no-such-run")
    assert code == 1 and "404" in output and "not found" in output
    code, output = faas(platform, "run", "NOT VALID", "--email", "a@example.com")
    assert code == 1 and "image_name" in output
    code, output = faas(
        platform, "run", "localhost/faas-echo", "--email", "a@example.com", "-e", "novalue"
    )
    assert code == 2 and "NAME=VALUE" in output
    result = runner.invoke(app, ["status", "x", "--url", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and "cannot reach" in result.output


def test_bills_and_tariffs(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_ADMIN_TOKEN", "wrong")
    code, output = faas(platform, "tariffs", "list")
    assert code == 2 and "403" in output
    monkeypatch.setenv("FAAS_ADMIN_TOKEN", ADMIN_TOKEN)
    name = f"cli-{uuid.uuid4().hex[:6]}"
    code, output = faas(platform, "tariffs", "create", name, "--set", "currency=EUR",
                        "--set", "price_cpu_second=0.001", "--set", "price_gib_second=0",
                        "--set", "price_execution=0.5", "--json")  # fmt: skip
    assert code == 0, output
    assert json.loads(output)["price_execution"] == "0.5"
    code, output = faas(
        platform, "tariffs", "update", name, "--set", "price_execution=0.25", "--json"
    )
    assert code == 0 and json.loads(output)["price_execution"] == "0.25"
    code, output = faas(platform, "tariffs", "list", "--json")
    assert code == 0 and name in [t["name"] for t in json.loads(output)]
    code, output = faas(platform, "tariffs", "list")
    assert code == 0 and "currency" in output  # the table
    code, output = faas(platform, "tariffs", "create", name, "--set", "currency=EUR")
    assert code == 1 and "422" in output  # missing prices named
    email = f"cli-bills-{uuid.uuid4().hex[:6]}@example.com"
    code, _ = faas(
        platform, "run", "localhost/faas-crash", "--email", email, "--tariff", name, "--follow"
    )
    assert code == 3
    for _ in range(60):
        code, output = faas(platform, "bills", email, "--json")
        if json.loads(output)["count"] == 1:
            break
        time.sleep(0.5)
    billing = json.loads(output)
    assert billing["totals"][0]["currency"] == "EUR" and billing["totals"][0]["total"] == "0.25"
    code, output = faas(platform, "bills", email)
    assert code == 0 and "0.25 EUR" in output
    code, output = faas(platform, "tariffs", "delete", name)
    assert code == 0 and "deleted" in output
    code, output = faas(platform, "bills", "not-an-email")
    assert code == 1 and "422" in output


def test_rebill_refuses_an_empty_period() -> None:
    result = runner.invoke(app, ["rebill", "--from", "2026-11-02", "--to", "2026-11-01"])
    assert result.exit_code == 2  # the job's argument check, as its exit code
