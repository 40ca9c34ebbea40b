"""Tenancy in production mode, through the real Serve apps: tenant API keys issued by the
admin; one tenant cannot see or touch another's runs, logs or invoices."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import Platform

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.hostile,
    pytest.mark.parametrize("platform", ["sqlite-production"], indirect=True),
]
A, B = "tenant-a@example.com", "tenant-b@example.com"


def issue_key(platform: Platform, email: str, name: str = "") -> dict[str, Any]:
    response = platform.http.post(
        f"/v1/tenants/{email}/keys", json={"name": name}, headers=platform.admin
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def bearer(key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {key['key']}"}


def run(platform: Platform, key: dict[str, Any], body: dict[str, Any]) -> str:
    response = platform.http.post("/v1/functions/run", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_production_mode_needs_credentials(platform: Platform) -> None:
    http = platform.http
    for method, path in [
        ("GET", f"/v1/functions?email={A}"),
        ("GET", "/v1/functions/00000000-0000-0000-0000-000000000000"),
        ("GET", f"/billing/{A}"),
        ("GET", f"/v1/tenants/{A}/keys"),
        ("GET", "/v1/tariffs"),
    ]:
        response = http.request(method, path)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), path
    body = {"image_name": "localhost/faas-echo", "email": A}
    assert http.post("/v1/functions/run", json=body).status_code == 401
    for open_path in ("/healthz", "/openapi.json", "/billing/openapi.json"):
        assert http.get(open_path).status_code == 200, open_path  # no tenant data there
    forged = {"Authorization": "Bearer faas_forged-key-that-was-never-issued"}
    response = http.get(f"/v1/functions?email={A}", headers=forged)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert http.get(f"/billing/{A}", headers={"Authorization": "Basic YTpi"}).status_code == 401


def test_a_tenant_cannot_see_or_touch_another_tenants_runs_logs_or_invoices(
    platform: Platform,
) -> None:
    http, key_a, key_b = platform.http, issue_key(platform, A), issue_key(platform, B)
    # B: one finished run (so an invoice exists) and one still running.
    done = run(
        platform,
        key_b,
        {"image_name": "localhost/faas-crash", "email": B, "env": {"EXIT_CODE": "0"}},
    )
    live = run(platform, key_b, {"image_name": "localhost/faas-echo", "email": B, "timeout_s": 60})
    deadline = time.monotonic() + 30  # running, so that its stop is billed
    while http.get(f"/v1/functions/{live}", headers=bearer(key_b)).json()["status"] != "running":
        assert time.monotonic() < deadline, f"run {live} did not start"
        time.sleep(0.2)
    for run_id in (done, live):
        assert http.get(f"/v1/functions/{run_id}", headers=bearer(key_a)).status_code == 404
        assert http.get(f"/v1/functions/{run_id}/logs", headers=bearer(key_a)).status_code == 404
        assert http.post(f"/v1/functions/{run_id}/stop", headers=bearer(key_a)).status_code == 404
    unknown = http.get("/v1/functions/00000000-0000-0000-0000-000000000000", headers=bearer(key_a))
    assert unknown.status_code == 404  # the same answer: ids do not leak
    assert http.get(f"/v1/functions/{live}", headers=bearer(key_b)).json()["status"] == "running"
    listing = http.get(f"/v1/functions?email={B}", headers=bearer(key_a))
    assert listing.status_code == 403 and listing.json()["detail"][0]["loc"] == ["query", "email"]
    assert http.get(f"/v1/functions?email={A}", headers=bearer(key_a)).json() == []
    as_b = http.post(
        "/v1/functions/run",
        json={"image_name": "localhost/faas-echo", "email": B},
        headers=bearer(key_a),
    )
    assert as_b.status_code == 403 and as_b.json()["detail"][0]["loc"] == ["body", "email"]
    # B sees its own; so does the admin.
    mine = http.get(f"/v1/functions?email={B}", headers=bearer(key_b)).json()
    assert {r["id"] for r in mine} == {done, live}
    assert http.get(f"/v1/functions/{done}/logs", headers=bearer(key_b)).status_code == 200
    assert http.get(f"/v1/functions/{live}", headers=platform.admin).status_code == 200
    stopped = http.post(f"/v1/functions/{live}/stop", headers=bearer(key_b))
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    # Invoices: B's exist and B reads them; A cannot, not even knowing the run id.
    invoices = wait_for_invoices(platform, key_b, B, 2)
    assert {i["run_id"] for i in invoices} == {done, live}
    assert http.get(f"/billing/{B}", headers=bearer(key_a)).status_code == 403
    assert http.get(f"/billing/{B}/invoices/{done}", headers=bearer(key_a)).status_code == 403
    assert http.get(f"/billing/{A}/invoices/{done}", headers=bearer(key_a)).status_code == 404
    assert http.get(f"/billing/{B}/invoices/{done}", headers=bearer(key_b)).status_code == 200
    assert http.get(f"/billing/{B}", headers=platform.admin).json()["count"] == 2


def wait_for_invoices(
    platform: Platform, key: dict[str, Any], email: str, count: int
) -> list[dict[str, Any]]:
    deadline, invoices = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        response = platform.http.get(f"/billing/{email}", headers=bearer(key))
        assert response.status_code == 200, response.text
        invoices = response.json()["invoices"]
        if len(invoices) >= count:
            return list(invoices)
        time.sleep(0.5)
    raise AssertionError(f"{len(invoices)} invoice(s) for {email} after 60 s, wanted {count}")


def test_keys_are_admin_only_listed_without_secrets_and_revocable(platform: Platform) -> None:
    http, email = platform.http, "tenant-c@example.com"
    key = issue_key(platform, email, "ci")
    assert key["prefix"] and key["key"].startswith(key["prefix"]) and key["name"] == "ci"
    assert http.get(f"/v1/functions?email={email}", headers=bearer(key)).status_code == 200
    # A tenant key is not the admin: it can neither manage keys nor tariffs.
    assert http.get(f"/v1/tenants/{email}/keys", headers=bearer(key)).status_code == 403
    assert http.post(f"/v1/tenants/{email}/keys", headers=bearer(key)).status_code == 403
    assert http.get("/v1/tariffs", headers=bearer(key)).status_code == 403
    listed = http.get(f"/v1/tenants/{email}/keys", headers=platform.admin).json()
    assert [k["id"] for k in listed] == [key["id"]]
    assert key["key"] not in str(listed) and "key" not in listed[0]
    revoked = http.delete(f"/v1/tenants/{email}/keys/{key['id']}", headers=platform.admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    after = http.get(f"/v1/functions?email={email}", headers=bearer(key))
    assert after.status_code == 401 and 'error="invalid_token"' in after.headers["www-authenticate"]
    assert http.get(f"/billing/{email}", headers=bearer(key)).status_code == 401
    other = http.delete(f"/v1/tenants/{A}/keys/{key['id']}", headers=platform.admin)
    assert other.status_code == 404  # a key is revoked through its own tenant only


def test_cli_issues_uses_and_revokes_a_key(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli.main import app
    from tests.e2e.conftest import ADMIN_TOKEN

    url, email = str(platform.http.base_url).rstrip("/"), "tenant-cli@example.com"
    runner = CliRunner()
    monkeypatch.setenv("FAAS_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.delenv("FAAS_API_KEY", raising=False)
    issued = runner.invoke(app, ["keys", "issue", email, "--name", "cli", "--json", "--url", url])
    assert issued.exit_code == 0, issued.output
    key = json.loads(issued.output)
    no_key = runner.invoke(app, ["bills", email, "--json", "--url", url])
    assert no_key.exit_code == 2 and "401" in no_key.output  # production mode
    with_key = runner.invoke(app, ["bills", email, "--json", "--url", url, "--api-key", key["key"]])
    assert with_key.exit_code == 0 and json.loads(with_key.output)["tenant"] == email
    monkeypatch.setenv("FAAS_API_KEY", key["key"])
    assert runner.invoke(app, ["bills", email, "--url", url]).exit_code == 0
    foreign = runner.invoke(app, ["bills", A, "--url", url])
    assert foreign.exit_code == 2 and "403" in foreign.output
    listed = runner.invoke(app, ["keys", "list", email, "--json", "--url", url])
    assert listed.exit_code == 0 and key["key"] not in listed.output
    assert [k["id"] for k in json.loads(listed.output)] == [key["id"]]
    assert runner.invoke(app, ["keys", "revoke", email, key["id"], "--url", url]).exit_code == 0
    revoked = runner.invoke(app, ["bills", email, "--url", url])
    assert revoked.exit_code == 2 and "401" in revoked.output
