"""Runs on the Kubernetes runtime take the same path as on podman: accepted ``pending``,
started by the starter (a Job), closed by the reconciler with the pod's exit code; and a
Job created by an attempt whose answer was lost is found again instead of duplicated."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from app.runtime.kube_spec import secret_name
from app.schemas import RunRequest, RunStatus, StopReason
from tests.integration.control_kit import (
    close_control,
    make_control,
    run_until_final,
    start_queued,
)
from tests.integration.test_kubernetes_runtime import finish_pod, make_runtime, spec

pytestmark = pytest.mark.integration


async def test_create_is_idempotent_per_run(api: client.ApiClient, namespace: str) -> None:
    runtime = make_runtime(api, namespace)
    try:
        run = spec(env={"BIG": "b" * 100})  # over the inline limit: a Secret too
        first = await runtime.create(run)
        assert await runtime.create(run) == first  # the answer of the first was "lost"
        jobs = client.BatchV1Api(api).list_namespaced_job(namespace).items
        assert [job.metadata.name for job in jobs] == [first]
        client.CoreV1Api(api).read_namespaced_secret(secret_name(run.run_id), namespace)
    finally:
        await runtime.close()


async def test_an_accepted_run_is_started_as_a_job_and_closed_with_its_exit_code(
    api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    control = await make_control("unix:///unused.sock", tmp_path, make_runtime(api, namespace))
    try:
        request = RunRequest(
            image_name="localhost/faas-cpu", email="kube@example.com", cpu=0.25, memory_mb=96,
            env={"DURATION_S": "1"},
        )  # fmt: skip
        accepted = await control.submit(request)
        assert accepted.status == RunStatus.PENDING
        await start_queued(control)
        running = await control.get(accepted.id)
        assert running.status == RunStatus.RUNNING and running.container_id is not None
        finish_pod(api, namespace, running.container_id, exit_code=0)
        (run,) = await run_until_final(control, [accepted.id])
        assert (run.status, run.reason, run.exit_code) == (
            RunStatus.SUCCEEDED,
            StopReason.EXITED,
            0,
        )
    finally:
        await close_control(control)
