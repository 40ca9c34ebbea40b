"""Time from ``POST /v1/functions/run`` to a running container, next to bare podman.

Three paths start the same image (``localhost/faas-echo``) N times each, interleaved so
machine noise hits all of them alike:
- ours: HTTP POST through Ray Serve, then ``GET /v1/functions/{id}`` every 10 ms until the
  run is ``running`` (the 202 itself comes once the run is queued: reported as ``accept``),
- api: the raw Docker-API create+start on the same podman service (our path's floor),
- cli: ``podman run -d`` (what an operator would type).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
import uuid

import docker
import httpx

from bench.stack import BenchStack
from infra import devstack


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(stack: BenchStack, runs: int = 20) -> dict[str, dict[str, float]]:
    http = httpx.Client(base_url=stack.url, timeout=60)
    client = docker.DockerClient(base_url=stack.podman_url, version="1.41")
    env = {**os.environ, **devstack.podman_env()}
    timings: dict[str, list[float]] = {"ours": [], "accept": [], "api": [], "cli": []}
    started_ids: list[str] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        response = http.post(
            "/v1/functions/run",
            content=json.dumps({"image_name": "localhost/faas-echo", "email": "bench@example.com"}),
        )
        timings["accept"].append(time.perf_counter() - t0)
        assert response.status_code == 202, response.text
        run_id = response.json()["id"]
        while (status := http.get(f"/v1/functions/{run_id}").json()["status"]) != "running":
            assert status in ("pending", "deployed"), f"run {run_id} ended {status}"
            time.sleep(0.01)
        timings["ours"].append(time.perf_counter() - t0)
        started_ids.append(run_id)

        t0 = time.perf_counter()
        container = client.containers.create("localhost/faas-echo", name=f"bench-{uuid.uuid4().hex[:8]}",
                                              nano_cpus=10**9, mem_limit="256m")  # fmt: skip
        container.start()
        timings["api"].append(time.perf_counter() - t0)
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
