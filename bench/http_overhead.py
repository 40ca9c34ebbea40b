"""Ray Serve's HTTP overhead on our two hottest routes, next to the same FastAPI apps on a
bare uvicorn in the same run:

- ``POST /v1/functions/run`` (accept only: the 202 comes once the run is queued in the
  store; the starter creates and starts the containers meanwhile, so podman is busy beside
  the requests; the image ``localhost/faas-crash`` with ``EXIT_CODE=0`` exits at once, so
  the reconciler removes containers as fast as they come and the load does not pile up
  running functions that would slow later requests),
- ``GET /billing/{email}`` with 1,000,000 invoices (1,000 tenants x 1,000) in the embedded
  ClickHouse engine; the bare app reads its own copy of the data (one process per path),
- ``GET /healthz`` (the control plane's; answers ``{"status": "ok"}`` and touches nothing):
  the proxy and the framework alone.

After each round of runs the bench waits (up to ``--cap-s``) until the starter has started
what that round queued, so one target's containers are not started during the other's
round; the wait is reported as ``drain_s``.

Both sides use the same control plane, Kafka, podman service and store code; Serve is
measured with its default proxy and with ``RAY_SERVE_ENABLE_HA_PROXY=1`` (``--proxies``);
the bare app and Serve alternate round by round. Load: an asyncio httpx client on 127.0.0.1
with fixed concurrency, bounded in count and time. The load average is recorded at the
start and the end.

    python -m bench.http_overhead --invoices 1000000
    python -m bench.http_overhead --proxies default --routes run,billing,healthz
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from bench.concurrent_runs import percentile
from infra import devstack

TENANTS = 1000
ROUTES = ("run", "billing", "healthz")
PROXIES = ("default", "haproxy")
RUN_BODY = {"image_name": "localhost/faas-crash", "email": "overhead@example.com", "cpu": 0.1,
            "memory_mb": 32, "env": {"EXIT_CODE": "0"}}  # fmt: skip


# -- data -------------------------------------------------------------------------------------


def _seed(url: str, count: int) -> None:
    """Writes ``count`` current invoices for TENANTS tenants (runs in its own process)."""
    import pyarrow as pa

    from analytics.clickhouse import DirectClickHouse
    from analytics.invoice_store import _COLUMNS, _row  # the store's own row layout
    from analytics.schema import migrate
    from app.invoices import Invoice, InvoiceLineView

    clickhouse = DirectClickHouse(url, "faas")
    asyncio.run(migrate(clickhouse))
    line = InvoiceLineView(kind="cpu", quantity=Decimal("1.2"), billable_quantity=Decimal("1.2"),
                           unit="cpu_second", unit_price=Decimal("0.000024"),
                           amount=Decimal("0.0000288"))  # fmt: skip
    lines = [line] + [
        line.model_copy(update={"kind": kind, "unit": unit})
        for kind, unit in (
            ("memory", "gib_second"),
            ("execution", "execution"),
            ("duration", "second"),
        )
    ]
    base = datetime(2026, 10, 1, tzinfo=UTC)
    prototype = _row(Invoice(invoice_id="r", run_id="r", tenant="t", image_name="localhost/faas-cpu",
                             tariff="standard", tariff_id=1, version=1, started_at=base,
                             finished_at=base, currency="USD", total=Decimal("0.0001152"),
                             lines=lines, created_at=base))  # fmt: skip
    batch = 100_000
    for start in range(0, count, batch):
        n = min(batch, count - start)
        columns: dict[str, Any] = {name: [prototype[name]] * n for name in _COLUMNS.names}
        ids = [f"run-{i:08d}" for i in range(start, start + n)]
        finished = [base + timedelta(seconds=i) for i in range(start, start + n)]
        columns |= {"invoice_id": ids, "run_id": ids, "finished_at": finished,
                    "started_at": [f - timedelta(seconds=1) for f in finished],
                    "tenant": [f"t{i % TENANTS}@example.com" for i in range(start, start + n)]}  # fmt: skip
        clickhouse.insert_arrow_sync("invoices", pa.table(columns, schema=_COLUMNS))


def seeded_copies(home: Path, count: int) -> tuple[str, str]:
    """Two chdb data paths holding the same ``count`` invoices: Serve's and the bare app's.
    Each is written by its own process (a copied data directory does not open: the engine
    refuses it at start)."""
    urls = [f"chdb://{home / 'clickhouse-serve'}", f"chdb://{home / 'clickhouse-bare'}"]
    seeders = [subprocess.Popen([sys.executable, "-m", "bench.http_overhead", "seed", url, str(count)])
               for url in urls]  # fmt: skip
    if any(seeder.wait() != 0 for seeder in seeders):
        raise RuntimeError("seeding the invoices failed")
    return urls[0], urls[1]


# -- the two servers --------------------------------------------------------------------------


def _settings(home: Path, clickhouse_url: str, kafka: str, podman: str) -> Any:
    from app.settings import Settings

    return Settings(home=home, kafka={"bootstrap": kafka}, clickhouse={"url": clickhouse_url},
                    runtime={"docker_url": podman, "stop_grace_s": 1})  # fmt: skip


async def _serve_bare(home: Path, port: int, clickhouse_url: str, kafka: str, podman: str) -> None:
    """The same two FastAPI apps Serve runs, on one plain uvicorn (no Ray)."""
    import uvicorn
    from fastapi import FastAPI

    from analytics.clickhouse import DirectClickHouse
    from analytics.invoice_store import InvoiceStore
    from app.api.auth import authenticator_for
    from app.api.billing import create_billing_api
    from app.api.functions import create_functions_api
    from app.control.platform import ControlPlaneApp
    from app.store.api_keys import ApiKeyRepository

    settings = _settings(home, clickhouse_url, kafka, podman)
    platform = ControlPlaneApp.from_settings(settings)
    started = asyncio.create_task(platform.start())
    keys = ApiKeyRepository(platform.engine)
    auth = authenticator_for(settings, keys)
    limit = settings.http.max_body_bytes
    store = InvoiceStore(DirectClickHouse(clickhouse_url, settings.clickhouse.database))
    root = FastAPI()
    root.mount("/billing", create_billing_api(store, auth, max_body_bytes=limit))
    root.mount("/", create_functions_api(platform.control, auth, keys, max_body_bytes=limit,
               admin_token=settings.admin_token.get_secret_value(), ready=started))  # fmt: skip
    config = uvicorn.Config(root, host="127.0.0.1", port=port, log_level="warning")
    try:
        await uvicorn.Server(config).serve()
    finally:
        await platform.close()


def _deploy_serve(home: Path, port: int, clickhouse_url: str, kafka: str, podman: str) -> None:
    from ray import serve

    from deployments import control_plane
    from deployments.analytics import BillingDeployment
    from deployments.clickhouse import ClickHouseOwner

    settings = _settings(home, clickhouse_url, kafka, podman)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(control_plane.build(settings), name="faas", route_prefix="/")
    billing = BillingDeployment.bind(settings, ClickHouseOwner.bind(settings), [])
    serve.run(billing, name="analytics", route_prefix="/billing")


def _wait_ready(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ok = httpx.get(f"{url}/billing/t1@example.com?limit=1", timeout=30).status_code == 200
            if ok and httpx.get(f"{url}/healthz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


# -- load -------------------------------------------------------------------------------------


async def hammer(
    url: str, route: str, count: int, concurrency: int, cap_s: float, per_tenant: int
) -> dict[str, float]:
    """``count`` requests (or as many as fit in ``cap_s``) from ``concurrency`` workers."""
    latencies: list[float] = []
    errors = 0
    remaining = count
    deadline = time.monotonic() + cap_s
    body = json.dumps(RUN_BODY)

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            t0 = time.perf_counter()
            if route == "run":
                response = await http.post("/v1/functions/run", content=body)
                ok = response.status_code == 202
            elif route == "healthz":
                response = await http.get("/healthz")
                ok = response.status_code == 200
            else:
                tenant = f"t{random.randrange(TENANTS)}@example.com"
                response = await http.get(f"/billing/{tenant}")
                ok = response.status_code == 200 and response.json()["count"] == per_tenant
            latencies.append(time.perf_counter() - t0)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": errors, "req_per_s": len(latencies) / wall,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)}  # fmt: skip


def _drain(url: str, cap_s: float) -> float:
    """Waits until none of the bench's runs at ``url`` is still queued (the starter has
    started, or given up, all of them); returns the time it took (at most ``cap_s``)."""
    t0 = time.monotonic()
    query: dict[str, str | int] = {"email": str(RUN_BODY["email"]), "limit": 1000}
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() - t0 < cap_s:
            runs = http.get("/v1/functions", params=query).json()
            if not any(run["status"] in ("pending", "deployed") for run in runs):
                break
            time.sleep(0.2)
    return time.monotonic() - t0


def _alternate(targets: dict[str, str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Rounds alternate between the targets so machine noise hits them alike."""
    plan = {"run": (args.run_requests, args.run_concurrency),
            "billing": (args.billing_requests, args.billing_concurrency),
            "healthz": (args.healthz_requests, args.healthz_concurrency)}  # fmt: skip
    per_tenant = args.invoices // TENANTS
    rounds: dict[str, list[dict[str, float]]] = {}
    for route in args.routes:
        count, concurrency = plan[route]
        for url in targets.values():  # warm-up
            asyncio.run(hammer(url, route, 2 * concurrency, concurrency, 60, per_tenant))
            if route == "run":
                _drain(url, args.cap_s)
        for _ in range(args.rounds):
            for name, url in targets.items():
                figures = asyncio.run(
                    hammer(url, route, count, concurrency, args.cap_s, per_tenant)
                )
                if route == "run":
                    figures["drain_s"] = _drain(url, args.cap_s)
                rounds.setdefault(f"{route}/{name}", []).append(figures)
    return {key: _merge(values) for key, values in rounds.items()}


def _merge(rounds: list[dict[str, float]]) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "req_per_s": round(sum(r["req_per_s"] for r in rounds) / len(rounds), 1),
        "p50_ms": round(sorted(r["p50_ms"] for r in rounds)[len(rounds) // 2], 1),
        "p99_ms": round(max(r["p99_ms"] for r in rounds), 1),
        "requests": sum(int(r["requests"]) for r in rounds),
        "errors": sum(int(r["errors"]) for r in rounds),
    }
    if "drain_s" in rounds[0]:
        merged["drain_s"] = [round(r["drain_s"], 1) for r in rounds]
    return merged


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    home = Path(tempfile.mkdtemp(prefix="faas-overhead-"))
    kafka = f"127.0.0.1:{devstack.free_port()}"
    podman = f"unix://{home / 'podman.sock'}"
    bare: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {"invoices": args.invoices, "tenants": TENANTS,
                               "load_avg_start": os.getloadavg()}  # fmt: skip
    try:
        t0 = time.monotonic()
        serve_ch, bare_ch = seeded_copies(home, args.invoices)
        results["seed_s"] = round(time.monotonic() - t0, 1)
        devstack.start_kafka(home / "kafka", int(kafka.rsplit(":", 1)[1]))
        devstack.start_podman_service(home / "podman", home / "podman.sock")
        bare_port = devstack.free_port()
        bare = subprocess.Popen([sys.executable, "-m", "bench.http_overhead", "bare", str(home / "bare"),
                                 str(bare_port), bare_ch, kafka, podman])  # fmt: skip
        bare_url = f"http://127.0.0.1:{bare_port}"
        _wait_ready(bare_url)
        for proxy in args.proxies:
            if proxy == "haproxy":
                os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
            serve_home, port = home / f"serve-{proxy}", devstack.free_port()
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            try:
                _deploy_serve(serve_home, port, serve_ch, kafka, podman)
                serve_url = f"http://127.0.0.1:{port}"
                _wait_ready(serve_url)
                results[proxy] = _alternate({"serve": serve_url, "bare": bare_url}, args)
            except Exception as exc:  # one proxy failing must not hide the other's figures
                results[proxy] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            finally:
                serve.shutdown()
                ray.shutdown()
                os.environ.pop("RAY_SERVE_ENABLE_HA_PROXY", None)
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(30)
        devstack.stop_functions(str(home))
        devstack.stop("podman", home / "podman")
        devstack.stop("kafka", home / "kafka")
        shutil.rmtree(home, ignore_errors=True)
        results["load_avg_end"] = os.getloadavg()
    return results


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        chosen = [item for item in text.split(",") if item]
        if not chosen or any(item not in allowed for item in chosen):
            raise argparse.ArgumentTypeError(f"comma-separated, from {', '.join(allowed)}")
        return chosen

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--invoices", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--run-requests", type=int, default=60)
    parser.add_argument("--run-concurrency", type=int, default=4)
    parser.add_argument("--billing-requests", type=int, default=300)
    parser.add_argument("--billing-concurrency", type=int, default=8)
    parser.add_argument("--healthz-requests", type=int, default=2000)
    parser.add_argument("--healthz-concurrency", type=int, default=8)
    parser.add_argument("--cap-s", type=float, default=60, help="time cap per round and target")
    parser.add_argument(
        "--routes",
        type=_choices(ROUTES),
        default=list(ROUTES),
        help="comma-separated, from run, billing, healthz (default: all)",
    )
    parser.add_argument(
        "--proxies",
        type=_choices(PROXIES),
        default=list(PROXIES),
        help="comma-separated, from default, haproxy (default: both)",
    )
    return parser.parse_args(argv)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "seed":
        _seed(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "bare":
        home, port, clickhouse_url, kafka, podman = sys.argv[2:7]
        asyncio.run(_serve_bare(Path(home), int(port), clickhouse_url, kafka, podman))
        return
    print(json.dumps(measure(parse_args()), indent=1))


if __name__ == "__main__":
    main()
