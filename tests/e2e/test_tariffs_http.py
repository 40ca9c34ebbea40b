"""Tariffs over HTTP on Ray Serve, on SQLite and PostgreSQL: CRUD, auth, rules, races."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Platform

ROUTES = [
    ("POST", "/v1/tariffs"),
    ("GET", "/v1/tariffs"),
    ("GET", "/v1/tariffs/1"),
    ("PUT", "/v1/tariffs/1"),
    ("PATCH", "/v1/tariffs/1"),
    ("DELETE", "/v1/tariffs/999999"),
]


def body(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "description": "test tariff", "currency": "eur",
        "price_cpu_second": "0.000022", "price_gib_second": 0.0000023,
        "price_execution": "0.0000003", "free_cpu_seconds": "100", **extra,
    }  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_is_admin_only(platform: Platform, method: str, path: str) -> None:
    payload = body(unique("auth")) if method in ("POST", "PUT") else {}
    anonymous = platform.http.request(method, path, json=payload)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    basic = platform.http.request(
        method, path, json=payload, headers={"Authorization": "Basic eDp5"}
    )
    assert basic.status_code == 401
    wrong = platform.http.request(
        method, path, json=payload, headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 403
    # No detail leaks: neither answer mentions the real token or how close the guess was.
    assert "e2e-admin-token" not in anonymous.text + wrong.text
    right = platform.http.request(method, path, json=payload, headers=platform.admin)
    assert right.status_code not in (401, 403), right.text
    assert right.status_code < 500


def test_crud_round_trip(platform: Platform) -> None:
    http, admin = platform.http, platform.admin
    name = unique("round")
    created = http.post("/v1/tariffs", json=body(name), headers=admin)
    assert created.status_code == 201, created.text
    tariff = created.json()
    assert tariff["currency"] == "EUR"
    assert tariff["price_gib_second"] == "0.0000023"  # numbers accepted, strings returned
    assert tariff["price_cpu_second"] == "0.000022"
    assert tariff["price_second"] == "0" and tariff["free_cpu_seconds"] == "100"
    assert tariff["is_default"] is False and tariff["deleted_at"] is None
    tariff_id = tariff["id"]

    assert http.get(f"/v1/tariffs/{tariff_id}", headers=admin).json() == tariff
    assert http.get(f"/v1/tariffs/{name}", headers=admin).json() == tariff
    assert name in [t["name"] for t in http.get("/v1/tariffs", headers=admin).json()]

    replaced = http.put(
        f"/v1/tariffs/{tariff_id}",
        json=body(name, currency="JPY", price_execution="1"),
        headers=admin,
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["currency"] == "JPY" and replaced.json()["price_execution"] == "1"
    assert replaced.json()["created_at"] == tariff["created_at"]
    assert replaced.json()["updated_at"] > tariff["updated_at"]

    patched = http.patch(f"/v1/tariffs/{name}", json={"description": "patched"}, headers=admin)
    assert patched.status_code == 200
    assert patched.json()["description"] == "patched"
    assert patched.json()["currency"] == "JPY"

    assert http.delete(f"/v1/tariffs/{tariff_id}", headers=admin).status_code == 204
    kept = http.get(f"/v1/tariffs/{tariff_id}", headers=admin).json()
    assert kept["deleted_at"] is not None  # old invoices stay explainable
    assert http.get(f"/v1/tariffs/{name}", headers=admin).status_code == 404
    assert name not in [t["name"] for t in http.get("/v1/tariffs", headers=admin).json()]
    listed = http.get("/v1/tariffs", params={"include_deleted": "true"}, headers=admin).json()
    assert tariff_id in [t["id"] for t in listed]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price_cpu_second": "-1"}, "price_cpu_second"),
        ({"price_gib_second": "abc"}, "price_gib_second"),
        ({"price_execution": "NaN"}, "price_execution"),
        ({"free_executions": -3}, "free_executions"),
        ({"currency": "XYZ"}, "currency"),
        ({"currency": "dollars"}, "currency"),
        ({"name": "123"}, "name"),
        ({"name": ""}, "name"),
        ({"is_default": "sometimes"}, "is_default"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_tariff_is_422_naming_the_field(
    platform: Platform, change: dict[str, Any], field: str
) -> None:
    response = platform.http.post(
        "/v1/tariffs", json={**body(unique("bad")), **change}, headers=platform.admin
    )
    assert response.status_code == 422, response.text
    assert field in {str(e["loc"][-1]) for e in response.json()["detail"]}


def test_rule_violations_are_4xx_naming_the_problem(platform: Platform) -> None:
    http, admin = platform.http, platform.admin
    name = unique("dup")
    assert http.post("/v1/tariffs", json=body(name), headers=admin).status_code == 201
    duplicate = http.post("/v1/tariffs", json=body(name), headers=admin)
    assert duplicate.status_code == 409
    assert duplicate.json()["detail"][0]["loc"][-1] == "name"

    default = next(t for t in http.get("/v1/tariffs", headers=admin).json() if t["is_default"])
    delete_default = http.delete(f"/v1/tariffs/{default['id']}", headers=admin)
    assert delete_default.status_code == 409
    assert delete_default.json()["detail"][0]["loc"][-1] == "is_default"
    unset = http.patch(f"/v1/tariffs/{default['id']}", json={"is_default": False}, headers=admin)
    assert unset.status_code == 409
    null = http.patch(f"/v1/tariffs/{name}", json={"price_second": None}, headers=admin)
    assert null.status_code == 422 and null.json()["detail"][0]["loc"][-1] == "price_second"

    assert http.put("/v1/tariffs/999999", json=body(unique("x")), headers=admin).status_code == 404
    assert (
        http.patch("/v1/tariffs/nosuch", json={"description": "x"}, headers=admin).status_code
        == 404
    )
    assert http.get("/v1/tariffs/999999", headers=admin).status_code == 404


def test_parallel_default_switches_keep_exactly_one_default(platform: Platform) -> None:
    http, admin = platform.http, platform.admin
    names = [unique("race") for _ in range(5)]
    for name in names:
        assert http.post("/v1/tariffs", json=body(name), headers=admin).status_code == 201

    def make_default(index: int) -> int:
        with httpx.Client(base_url=str(http.base_url), timeout=60) as client:
            target = names[index % len(names)]
            return client.patch(
                f"/v1/tariffs/{target}", json={"is_default": True}, headers=admin
            ).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(make_default, range(40)))
    assert codes == [200] * 40
    defaults = [t for t in http.get("/v1/tariffs", headers=admin).json() if t["is_default"]]
    assert len(defaults) == 1 and defaults[0]["name"] in names
    # Leave the platform with its usual default for the other tests.
    assert (
        http.patch("/v1/tariffs/standard", json={"is_default": True}, headers=admin).status_code
        == 200
    )


def test_parallel_creates_of_one_name_admit_exactly_one(platform: Platform) -> None:
    name = unique("same")

    def create(_: int) -> int:
        with httpx.Client(base_url=str(platform.http.base_url), timeout=60) as client:
            return client.post("/v1/tariffs", json=body(name), headers=platform.admin).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = sorted(pool.map(create, range(10)))
    assert codes == [201] + [409] * 9


def test_runs_record_the_tariff_they_started_under(platform: Platform) -> None:
    http, admin = platform.http, platform.admin
    name = unique("runs")
    tariff = http.post("/v1/tariffs", json=body(name), headers=admin).json()
    email = f"tariffed-{platform.database}@example.com"
    chosen = http.post(
        "/v1/functions/run",
        json={"image_name": "localhost/faas-crash", "email": email, "tariff": name},
    )
    assert chosen.status_code == 202, chosen.text
    run = http.get(f"/v1/functions/{chosen.json()['id']}").json()
    assert (run["tariff"], run["tariff_id"]) == (name, tariff["id"])
    by_id = http.post(
        "/v1/functions/run",
        json={"image_name": "localhost/faas-crash", "email": email, "tariff": str(tariff["id"])},
    )
    assert http.get(f"/v1/functions/{by_id.json()['id']}").json()["tariff_id"] == tariff["id"]
    default = http.post(
        "/v1/functions/run", json={"image_name": "localhost/faas-crash", "email": email}
    )
    assert http.get(f"/v1/functions/{default.json()['id']}").json()["tariff"] == "standard"
    unknown = http.post(
        "/v1/functions/run",
        json={"image_name": "localhost/faas-crash", "email": email, "tariff": "nope"},
    )
    assert unknown.status_code == 422
    assert unknown.json()["detail"][0]["loc"][-1] == "tariff"


def test_pricing_openapi_has_examples(platform: Platform) -> None:
    spec = platform.http.get("/v1/tariffs/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["TariffFields"]["examples"][0]["currency"] == "EUR"
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert platform.http.get("/v1/tariffs/docs").status_code == 200
