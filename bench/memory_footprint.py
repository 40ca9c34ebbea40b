"""Memory of a running platform (``make run``): RSS and PSS of every process each service of
``make run`` started (found by session: each service is spawned in its own session), by
component and summed, at idle and at the peak of the 200-run load.

    python -m bench.memory_footprint --runs 200 --tenants 20

Function containers are not counted (they are the tenants' memory, limited and billed).
podman's per-container ``conmon`` monitors detach into their own sessions; they are
counted under ``podman`` only when their command line names the state directory (in the
2026-11-28 run none matched, so they are missing from the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench import concurrent_runs

SERVICES = ("kafka", "smtp", "podman", "ray", "meter-server", "meter-agent")
MIB = 1 << 20


def _session(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])  # after comm: state ppid pgrp session


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB from smaps_rollup (PSS splits shared pages between their users)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _ray_part(cmdline: str) -> str:
    """Ray processes named by role: the Serve replicas and actors carry their names."""
    if cmdline.startswith("ray::"):
        name = cmdline.split()[0].removeprefix("ray::")
        return (
            f"ray::{name.split(':')[-1]}"
            if "ServeReplica" in name
            else f"ray::{name.split('.')[0]}"
        )
    for part in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if part in cmdline:
            return f"ray {part.removesuffix('.py')}"
    return "ray other"


def snapshot(state: Path) -> dict[str, dict[str, float]]:
    """MiB of RSS and PSS and the process count per component of the running platform."""
    leaders = {}
    for service in SERVICES:
        pid_file = state / f"{service}.pid"
        if pid_file.exists():
            leaders[int(pid_file.read_text())] = service
    usage: dict[str, dict[str, float]] = defaultdict(lambda: {"rss_mib": 0.0, "pss_mib": 0.0,
                                                              "processes": 0})  # fmt: skip
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        service = leaders.get(_session(pid) or -1)
        cmdline = _cmdline(pid)
        if service is None and "conmon" in cmdline and f"--exit-dir {state}" in cmdline:
            service = "podman"  # a run's monitor, detached into its own session
        if service is None:
            continue
        part = _ray_part(cmdline) if service == "ray" else service
        rss, pss = _memory_kib(pid)
        usage[part]["rss_mib"] += rss / 1024
        usage[part]["pss_mib"] += pss / 1024
        usage[part]["processes"] += 1
    total = {
        key: sum(v[key] for v in usage.values()) for key in ("rss_mib", "pss_mib", "processes")
    }
    return {**{k: {n: round(x, 1) for n, x in v.items()} for k, v in sorted(usage.items())},
            "TOTAL": {n: round(x, 1) for n, x in total.items()}}  # fmt: skip


async def _peak_under_load(
    state: Path, url: str, mail_dir: Path, runs: int, tenants: int
) -> tuple[dict[str, dict[str, float]], dict[str, object]]:
    load = asyncio.create_task(concurrent_runs.run_load(url, mail_dir, runs, tenants))
    peak: dict[str, dict[str, float]] = {"TOTAL": {"pss_mib": 0.0}}
    while not load.done():
        current = await asyncio.to_thread(snapshot, state)
        if current["TOTAL"]["pss_mib"] > peak["TOTAL"]["pss_mib"]:
            peak = current
        await asyncio.sleep(0.5)
    return peak, concurrent_runs.summarize(load.result(), runs)


def platform_running(state: Path, url: str) -> bool:
    """Whether ``make run``'s platform is up (its Ray pid file and the API's health)."""
    if not (state / "ray.pid").exists():
        return False
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def measure(state: Path, url: str, runs: int = 200, tenants: int = 20) -> dict[str, object]:
    """Idle footprint, then the peak under ``runs`` concurrent runs with their outcome."""
    state = state.resolve()
    idle = snapshot(state)
    t0 = time.monotonic()
    peak, load = asyncio.run(_peak_under_load(state, url, state / "mail", runs, tenants))
    return {"idle": idle, "peak_under_load": peak, "load": load,
            "load_wall_s": round(time.monotonic() - t0, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, default=Path(".faas"))
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(measure(args.state, args.url, args.runs, args.tenants), indent=1))


if __name__ == "__main__":
    main()
