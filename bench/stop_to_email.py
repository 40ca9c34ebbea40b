"""Stop → email latency against a running platform (``make run``): N short metered runs,
then, per run, the time from the runtime's finish to the ``.eml`` landing in the sink, and
that time split into stages (``bench.stop_stages``; reads ``faas.deployments`` on ``--kafka``).

    python -m bench.stop_to_email --runs 20
"""

from __future__ import annotations

import argparse
import asyncio
import email
import json
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx

from bench.concurrent_runs import percentile
from bench.stop_stages import stages, stopped_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--mail-dir", type=Path, default=Path(".faas/mail"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--deployments-topic", default="faas.deployments")
    args = parser.parse_args()
    http = httpx.Client(base_url=args.url, timeout=30)
    tenant = f"latency-{uuid.uuid4().hex[:6]}@example.com"
    ids = []
    for _ in range(args.runs):  # one after the other: each run is measured alone
        body = {
            "image_name": "localhost/faas-cpu",
            "email": tenant,
            "cpu": 0.5,
            "env": {"DURATION_S": "1"},
        }
        ids.append(http.post("/v1/functions/run", json=body).json()["id"])
        time.sleep(1.5)
    deadline = time.monotonic() + 120
    arrived: dict[str, datetime] = {}
    while len(arrived) < len(ids) and time.monotonic() < deadline:
        for path in args.mail_dir.glob("*.eml"):
            message = email.message_from_bytes(path.read_bytes())
            if message["To"] == tenant:
                run_id = str(message["X-Faas-Invoice"]).split(";")[0]
                stamp = datetime.strptime(path.name.split("-")[0], "%Y%m%dT%H%M%S.%fZ").replace(
                    tzinfo=UTC
                )
                arrived[run_id] = stamp
        time.sleep(0.5)
    latencies, finished = [], {}
    for run_id in ids:
        run = http.get(f"/v1/functions/{run_id}").json()
        finished[run_id] = datetime.fromisoformat(run["finished_at"])
        latencies.append((arrived[run_id] - finished[run_id]).total_seconds())
    latencies.sort()
    invoices = http.get(f"/billing/{tenant}", params={"limit": 1000}).json()["invoices"]
    invoiced = {i["run_id"]: datetime.fromisoformat(i["created_at"]) for i in invoices}
    stopped = asyncio.run(stopped_events(args.kafka, args.deployments_topic, {tenant}))
    print(json.dumps({
        "runs": len(latencies),
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        "max_s": latencies[-1],
    } | stages(percentile, finished, stopped, invoiced, arrived), indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
