"""200 runs submitted at once against a running platform (``make run``): every run must be
accepted, finish, be invoiced and be emailed. Reports acceptance latency (POST → 202)
p50/p99 and the runtime's finish → ``.eml`` latency p50/p95, and names the stage that
loses runs if any does.

    python -m bench.concurrent_runs --runs 200 --tenants 20

Runs are spread round-robin over ``--tenants`` tenants: one tenant's runs are priced in
finish order (its monthly free allowance is consumed in that order), different tenants'
concurrently. The stop → email time is also split into stages (``bench.stop_stages``),
reading ``faas.deployments`` on ``--kafka``.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.stop_stages import stages, stopped_events

FINISHED = {"succeeded", "failed", "timed_out", "stopped"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")
    )


@dataclass
class Outcome:
    """What happened to each submitted run, stage by stage."""

    tenants: list[str] = field(default_factory=list)
    accept_s: list[float] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    finished: dict[str, datetime] = field(default_factory=dict)
    invoiced: set[str] = field(default_factory=set)
    invoiced_at: dict[str, datetime] = field(default_factory=dict)
    emailed: dict[str, datetime] = field(default_factory=dict)


async def _submit(http: httpx.AsyncClient, tenant: str, outcome: Outcome) -> None:
    body = {"image_name": "localhost/faas-cpu", "email": tenant, "cpu": 0.1,
            "memory_mb": 32, "env": {"DURATION_S": "1"}}  # fmt: skip
    t0 = time.perf_counter()
    try:
        response = await http.post("/v1/functions/run", content=json.dumps(body))
    except httpx.HTTPError as exc:
        outcome.rejected.append(f"{type(exc).__name__}: {exc}")
        return
    if response.status_code != 202:
        outcome.rejected.append(f"{response.status_code}: {response.text[:200]}")
        return
    outcome.accept_s.append(time.perf_counter() - t0)
    outcome.ids.append(response.json()["id"])


async def _poll_finished(http: httpx.AsyncClient, tenant: str, outcome: Outcome) -> None:
    offset = 0
    while True:
        page = (await http.get("/v1/functions", params={"email": tenant, "limit": 500,
                                                        "offset": offset})).json()  # fmt: skip
        runs = page if isinstance(page, list) else page.get("runs", page.get("items", []))
        for run in runs:
            if run["status"] in FINISHED and run.get("finished_at"):
                outcome.finished[run["id"]] = datetime.fromisoformat(run["finished_at"])
        if len(runs) < 500:
            return
        offset += 500


async def _poll_invoiced(http: httpx.AsyncClient, tenant: str, outcome: Outcome) -> None:
    page = (await http.get(f"/billing/{tenant}", params={"limit": 1000})).json()
    outcome.invoiced |= {invoice["run_id"] for invoice in page["invoices"]}
    for invoice in page["invoices"]:
        outcome.invoiced_at[invoice["run_id"]] = datetime.fromisoformat(invoice["created_at"])


def _scan_mail(mail_dir: Path, tenants: set[str], outcome: Outcome, seen: set[Path]) -> None:
    for path in mail_dir.glob("*.eml"):
        if path in seen:
            continue
        seen.add(path)
        message = email.message_from_bytes(path.read_bytes())
        if message["To"] in tenants:
            run_id = str(message["X-Faas-Invoice"]).split(";")[0]
            stamp = datetime.strptime(path.name.split("-")[0], "%Y%m%dT%H%M%S.%fZ")
            outcome.emailed.setdefault(run_id, stamp.replace(tzinfo=UTC))


async def run_load(
    url: str, mail_dir: Path, runs: int, tenants: int = 20, deadline_s: float = 600
) -> Outcome:
    """Submits ``runs`` runs at once and follows them until all are emailed or time is up."""
    prefix = f"load-{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i}@example.com" for i in range(tenants)]
    outcome = Outcome(tenants=names)
    limits = httpx.Limits(max_connections=runs, max_keepalive_connections=runs)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await asyncio.gather(*(_submit(http, names[i % tenants], outcome) for i in range(runs)))
        seen: set[Path] = set()
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for tenant in names:
                await _poll_finished(http, tenant, outcome)
            _scan_mail(mail_dir, set(names), outcome, seen)
            if len(outcome.emailed) >= len(outcome.ids) and len(outcome.finished) >= len(
                outcome.ids
            ):
                break
            await asyncio.sleep(1)
        for tenant in names:
            await _poll_invoiced(http, tenant, outcome)
    return outcome


def summarize(
    outcome: Outcome, runs: int, stopped: dict[str, datetime] | None = None
) -> dict[str, object]:
    ids = set(outcome.ids)
    to_email = [
        (outcome.emailed[i] - outcome.finished[i]).total_seconds()
        for i in ids
        if i in outcome.emailed and i in outcome.finished
    ]
    return {
        "submitted": runs,
        "accepted": len(ids),
        "finished": len(ids & outcome.finished.keys()),
        "invoiced": len(ids & outcome.invoiced),
        "emailed": len(ids & outcome.emailed.keys()),
        "rejections": outcome.rejected[:5],
        "lost_after_accept": {
            "not_finished": sorted(ids - outcome.finished.keys())[:5],
            "finished_not_invoiced": sorted((ids & outcome.finished.keys()) - outcome.invoiced)[:5],
            "invoiced_not_emailed": sorted((ids & outcome.invoiced) - outcome.emailed.keys())[:5],
        },
        "accept_p50_s": percentile(outcome.accept_s, 0.5),
        "accept_p99_s": percentile(outcome.accept_s, 0.99),
        "accept_max_s": max(outcome.accept_s, default=float("nan")),
        "stop_to_email_p50_s": percentile(to_email, 0.5),
        "stop_to_email_p95_s": percentile(to_email, 0.95),
        "stop_to_email_max_s": max(to_email, default=float("nan")),
    } | (
        stages(percentile, outcome.finished, stopped, outcome.invoiced_at, outcome.emailed)
        if stopped is not None
        else {}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--mail-dir", type=Path, default=Path(".faas/mail"))
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--deployments-topic", default="faas.deployments")
    args = parser.parse_args()
    t0 = time.monotonic()
    outcome = asyncio.run(run_load(args.url, args.mail_dir, args.runs, args.tenants))
    wall_s = time.monotonic() - t0
    stopped = asyncio.run(stopped_events(args.kafka, args.deployments_topic, set(outcome.tenants)))
    report = summarize(outcome, args.runs, stopped) | {"wall_s": wall_s}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
