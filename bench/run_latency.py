"""Time from ``POST /v1/functions/run`` to a running container, next to bare podman.

Three paths start the same image (``localhost/faas-echo``) N times each, interleaved so
machine noise hits all of them alike:
- ours: HTTP POST through Ray Serve, then ``GET /v1/functions/{id}`` every ``poll_s``
  (10 ms) until the run is ``running`` (the 202 itself comes once the run is queued:
  reported as ``accept``); split by the run's own record into ``queued_to_started`` (its
  ``created_at`` to the container's start time, as podman reports it: the starter's pick-up,
  create, start) and ``started_to_seen`` (from there until the client saw ``running``),
- api: the raw Docker-API create+start on the same podman service (our path's floor);
  ``api_isolated`` the same with the platform's isolation options (no capabilities,
  read-only root, tmpfs /tmp, pids limit, non-root user),
- cli: ``podman run -d`` (what an operator would type).

    python -m bench.run_latency --runs 20 [--poll-ms 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import uuid
from datetime import datetime

import docker
import httpx

from app.runtime.isolation import Isolation
from bench.stack import BenchStack
from infra import devstack


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def measure(stack: BenchStack, runs: int = 20, poll_s: float = 0.01) -> dict[str, dict[str, float]]:
    http = httpx.Client(base_url=stack.url, timeout=60)
    client = docker.DockerClient(base_url=stack.podman_url, version="1.41")
    env = {**os.environ, **devstack.podman_env()}
    isolation = Isolation().docker_options(None)
    names = ["ours", "accept", "queued_to_started", "started_to_seen", "api", "api_isolated", "cli"]
    timings: dict[str, list[float]] = {name: [] for name in names}
    started_ids: list[str] = []
    for _ in range(runs):
        wall0, t0 = time.time(), time.perf_counter()
        response = http.post(
            "/v1/functions/run",
            content=json.dumps({"image_name": "localhost/faas-echo", "email": "bench@example.com"}),
        )
        timings["accept"].append(time.perf_counter() - t0)
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]
        while (run := http.get(f"/v1/functions/{run_id}").json())["status"] != "running":
            assert run["status"] in ("pending", "deployed"), f"run {run_id} ended {run['status']}"
            time.sleep(poll_s)
        seen = time.perf_counter() - t0
        timings["ours"].append(seen)
        started_at = _epoch(run["started_at"])
        timings["queued_to_started"].append(started_at - _epoch(run["created_at"]))
        timings["started_to_seen"].append(wall0 + seen - started_at)
        started_ids.append(run_id)

        for name, options in (("api", {}), ("api_isolated", isolation)):
            t0 = time.perf_counter()
            container = client.containers.create("localhost/faas-echo", name=f"bench-{uuid.uuid4().hex[:8]}",
                                                  nano_cpus=10**9, mem_limit="256m", **options)  # fmt: skip
            container.start()
            timings[name].append(time.perf_counter() - t0)
            container.remove(force=True)

        t0 = time.perf_counter()
        cid = subprocess.run(
            ["podman", "run", "-d", "--cpus", "1", "--memory", "256m", "localhost/faas-echo"],
            check=True, capture_output=True, text=True, env=env,
        ).stdout.strip()  # fmt: skip
        timings["cli"].append(time.perf_counter() - t0)
        subprocess.run(["podman", "rm", "-f", "-t", "0", cid], capture_output=True, env=env)
    for run_id in started_ids:
        http.post(f"/v1/functions/{run_id}/stop")
    return {
        name: {"p50_ms": 1000 * statistics.median(v), "p95_ms": 1000 * _percentile(v, 0.95)}
        for name, v in timings.items()
    }


def main() -> None:
    from bench.stack import platform_stack

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--poll-ms", type=float, default=10, help="GET interval until running")
    args = parser.parse_args()
    report: dict[str, object] = {"load_avg_start": os.getloadavg()}
    with platform_stack() as stack:
        report |= measure(stack, args.runs, args.poll_ms / 1000)
    report["load_avg_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
