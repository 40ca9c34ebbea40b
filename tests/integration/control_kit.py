"""The control plane on real podman and SQLite, driven pass by pass from a test: the
starter's and reconciler's loops are not running, the test calls them when it wants."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from app.control import ControlPlane
from app.control.reconciler import Reconciler
from app.runtime import Runtime
from app.runtime.isolation import Isolation
from app.runtime.podman import DockerApiRuntime
from app.schemas import RunRequest
from app.settings import RuntimeSettings
from app.store.db import make_engine, migrate
from app.store.runs import RunRecord, RunRepository
from app.tariffs.repository import TariffRepository

TOPIC = "faas.deployments"


async def make_control(
    podman_url: str, home: Path, runtime: Runtime | None = None, **limits: Any
) -> ControlPlane:
    """A control plane over ``home/faas.db`` (a second one over the same home is the first
    after a restart)."""
    engine = make_engine(f"sqlite:///{home / 'faas.db'}")
    await asyncio.to_thread(migrate, engine)
    settings = RuntimeSettings(docker_url=podman_url, owner=str(home), stop_grace_s=1, **limits)
    if runtime is None:
        runtime = DockerApiRuntime(
            podman_url, isolation=Isolation.from_settings(settings), owner=settings.owner
        )
    return ControlPlane(RunRepository(engine), runtime, TariffRepository(engine), settings, TOPIC)


async def close_control(control: ControlPlane) -> None:
    """Remove what the test left running and release the runtime client."""
    await control.starter.close()
    for run in await asyncio.to_thread(control.runs.active):
        if run.container_id is not None:
            await control.runtime.remove(run.container_id)
    await control.runtime.close()


async def start_queued(control: ControlPlane, passes: int = 100) -> None:
    """Run the starter until nothing is left queued (or ``passes`` are used up)."""
    for _ in range(passes):
        tasks = await control.starter.start_pending()
        if not tasks:
            return
        await asyncio.gather(*tasks)


async def run_until_final(
    control: ControlPlane, run_ids: list[str], timeout_s: float = 60
) -> list[RunRecord]:
    """Starter and reconciler passes until every run is final."""
    reconciler = Reconciler(control)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        await start_queued(control)
        await reconciler.reconcile_once()
        runs = [await control.get(run_id) for run_id in run_ids]
        if all(run.status.is_final for run in runs):
            return runs
        await asyncio.sleep(0.2)
    raise AssertionError(f"not final after {timeout_s}s: {[(r.id, r.status) for r in runs]}")


def events_of(control: ControlPlane, run_id: str) -> list[dict[str, Any]]:
    """The run's lifecycle events in the outbox, in commit order."""
    return [
        json.loads(event.payload)
        for _, event in control.runs.unpublished(10_000)
        if event.key == run_id
    ]


def crash(exit_code: int = 0, **fields: Any) -> RunRequest:
    """``faas-crash`` exits at once with ``exit_code``."""
    return RunRequest(
        image_name="localhost/faas-crash", email="starter@example.com",
        env={"EXIT_CODE": str(exit_code)}, cpu=0.25, memory_mb=32, **fields,
    )  # fmt: skip
