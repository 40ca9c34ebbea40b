"""Hostile HTTP input against the served platform (local mode): schemathesis over each
app's OpenAPI document with and without the admin token, oversized bodies, and what a
presented tenant key means in local mode."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.e2e.conftest import Platform

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.hostile,
    pytest.mark.parametrize("platform", ["sqlite"], indirect=True),
]
APPS = ["", "/v1/tariffs", "/billing"]  # route prefixes of the faas, pricing and analytics apps
EXAMPLES_PER_OPERATION = 40


def fuzz_operations(base_url: str, headers: dict[str, str]) -> tuple[dict[str, int], list[str]]:
    """Every operation of the document at ``base_url``: requests sent per operation, failures."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    calls: dict[str, int] = {}
    failures: list[str] = []
    started: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(case=strategy)
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            if case.operation.path == "/v1/functions/run" and response.status_code == 202:
                started.append(response.json()["id"])  # real containers: stopped below
            case.validate_response(
                response,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
            )

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    for run_id in started:
        httpx.post(f"{base_url}/v1/functions/{run_id}/stop", headers=headers, timeout=30)
    return calls, failures


@pytest.mark.parametrize("with_admin_token", [False, True], ids=["anonymous", "admin"])
def test_every_route_survives_schemathesis(platform: Platform, with_admin_token: bool) -> None:
    root = str(platform.http.base_url).rstrip("/")
    headers = platform.admin if with_admin_token else {}
    calls: dict[str, int] = {}
    failures: list[str] = []
    for prefix in APPS:
        app_calls, app_failures = fuzz_operations(f"{root}{prefix}", headers)
        calls |= {f"{prefix} {label}": n for label, n in app_calls.items()}
        failures += app_failures
    assert not failures, "\n\n".join(failures)
    # Every route of the three documents was really exercised (/healthz has one input).
    assert len(calls) >= 17, calls
    assert all(n >= 10 for label, n in calls.items() if "healthz" not in label), calls


def raw_request(platform: Platform, head: str, chunks: Iterable[bytes] = ()) -> str:
    """Sends a request head (and body chunks) over a plain socket; the answer, read until
    the server closes the connection (a 413 says ``connection: close``)."""
    url = httpx.URL(str(platform.http.base_url))
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished: the point of the test
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer.decode(errors="replace")


@pytest.mark.parametrize("path", ["/v1/functions/run", "/v1/tariffs", "/billing/a@example.com"])
def test_a_huge_declared_body_is_refused_before_it_is_sent(platform: Platform, path: str) -> None:
    limit = platform.settings.http.max_body_bytes
    answer = raw_request(
        platform,
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {50 * limit}\r\n"
        "Authorization: Bearer e2e-admin-token\r\n\r\n",  # and not one byte of the body
    )
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert f"larger than {limit} bytes (FAAS_HTTP_MAX_BODY_BYTES)" in answer


def test_a_chunked_body_over_the_limit_is_refused_while_streaming(platform: Platform) -> None:
    limit = platform.settings.http.max_body_bytes
    piece = b"x" * 65536
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(4 * limit // len(piece)))
    answer = raw_request(
        platform,
        "POST /v1/functions/run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        [*chunks, b"0\r\n\r\n"],
    )
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert f"larger than {limit} bytes" in answer
    # A body just under the limit still reaches the route (and is judged on its content).
    near = {"image_name": "localhost/faas-echo", "email": "a@example.com", "tariff": "t" * 100}
    padded = json.dumps(near).encode().ljust(limit - 10, b" ")
    response = platform.http.post("/v1/functions/run", content=padded)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "tariff"


def test_local_mode_trusts_the_anonymous_caller_but_checks_a_presented_key(
    platform: Platform,
) -> None:
    http, email = platform.http, "local-tenant@example.com"
    assert http.get(f"/v1/functions?email={email}").status_code == 200  # the original curl
    assert http.get(f"/billing/{email}").status_code == 200
    key = http.post(f"/v1/tenants/{email}/keys", headers=platform.admin).json()
    own = {"Authorization": f"Bearer {key['key']}"}
    assert http.get(f"/v1/functions?email={email}", headers=own).status_code == 200
    assert http.get("/v1/functions?email=other@example.com", headers=own).status_code == 403
    assert http.get("/billing/other@example.com", headers=own).status_code == 403
    forged = {"Authorization": "Bearer faas_not-a-key"}
    assert http.get(f"/v1/functions?email={email}", headers=forged).status_code == 401
    assert http.get(f"/v1/tenants/{email}/keys").status_code == 401  # admin routes stay admin


def test_nul_characters_and_overflowing_ids_are_client_errors(platform: Platform) -> None:
    http, admin = platform.http, platform.admin
    body = {"image_name": "localhost/faas-echo", "email": "a@example.com", "env": {"K": "v\x00"}}
    response = http.post("/v1/functions/run", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == [
        "body",
        "env",
        "K",
    ]
    assert http.get("/v1/functions/%00").status_code == 422
    assert http.get("/v1/functions", params={"email": "a\x00@example.com"}).status_code == 422
    named = http.post("/v1/tariffs", json={"name": "n\x00", "currency": "EUR"}, headers=admin)
    assert named.status_code == 422 and named.json()["detail"][0]["loc"] == ["body", "name"]
    for ref in ("2147483648", "9" * 40, "%C2%B2"):  # beyond the id column; a superscript digit
        assert http.get(f"/v1/tariffs/{ref}", headers=admin).status_code == 404, ref
    overflowing = {
        "image_name": "localhost/faas-echo",
        "email": "a@example.com",
        "tariff": "9" * 30,
    }
    response = http.post("/v1/functions/run", json=overflowing)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "tariff"]
