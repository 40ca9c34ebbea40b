"""The Kubernetes runtime against a real API server, job controller and scheduler, with
kwok moving the pods: each test annotates a pod to make it succeed or fail when it wants."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from app.control.finisher import outcome_of_exit
from app.runtime.base import ContainerSpec, ContainerState
from app.runtime.kube_spec import JobOptions, secret_name
from app.runtime.kubernetes import KubernetesRuntime
from app.schemas import RunStatus, StopReason
from infra.kube import NODE_NAME, POD_LOG, KubeCluster


def make_runtime(api: client.ApiClient, namespace: str, **kw: float) -> KubernetesRuntime:
    options = JobOptions(namespace=namespace, ttl_after_finished_s=600, env_inline_max_bytes=64)
    return KubernetesRuntime(api, options, **kw)


@pytest.fixture
async def runtime(api: client.ApiClient, namespace: str) -> AsyncIterator[KubernetesRuntime]:
    rt = make_runtime(api, namespace)
    yield rt
    await rt.close()


def spec(**overrides: object) -> ContainerSpec:
    fields: dict[str, object] = {
        "run_id": uuid.uuid4().hex, "tenant": "a@example.com", "image": "localhost/faas-cpu",
        "cpu": 0.25, "memory_mb": 96, "env": {"DURATION_S": "1"}, "timeout_s": 120,
    }  # fmt: skip
    fields.update(overrides)
    return ContainerSpec(**fields)  # type: ignore[arg-type]


async def eventually(
    rt: KubernetesRuntime, job: str, check: Callable[[ContainerState | None], bool], what: str
) -> ContainerState | None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = await rt.inspect(job)
        if check(state):
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: last state {state}")


def pod_of(core: client.CoreV1Api, namespace: str, job: str) -> client.V1Pod:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        if pods:
            return pods[0]
        time.sleep(0.1)
    raise AssertionError(f"no pod for job {job}")


def running_pod(core: client.CoreV1Api, namespace: str, job: str) -> client.V1Pod:
    """The job's pod once kwok has moved it to Running (its watch makes that near-instant)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pod = pod_of(core, namespace, job)
        if pod.status.phase == "Running":
            return pod
        time.sleep(0.1)
    raise AssertionError(f"pod of {job} still {pod.status.phase}")


def finish_pod(api: client.ApiClient, namespace: str, job: str, exit_code: int) -> None:
    """kwok's stages (infra/kube/stages.yaml) end the pod when it carries this annotation."""
    core = client.CoreV1Api(api)
    outcome = "succeeded" if exit_code == 0 else "failed"
    annotations = {"faas.test/outcome": outcome, "faas.test/exit-code": str(exit_code)}
    name = pod_of(core, namespace, job).metadata.name
    core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})


async def test_run_creates_the_job_with_the_exact_spec(
    runtime: KubernetesRuntime, api: client.ApiClient, namespace: str
) -> None:
    run = spec(env={"SMALL": "1", "BIG": "b" * 100}, command=["/burn"], timeout_s=45)
    name = await runtime.create(run)
    state = await runtime.start(name)
    assert state.running and state.run_id == run.run_id and state.started_at is not None

    job = client.BatchV1Api(api).read_namespaced_job(name, namespace)
    assert job.metadata.labels["faas.run_id"] == run.run_id
    assert job.metadata.labels["faas.tenant"].startswith("a_example.com-")
    assert job.metadata.annotations["faas.tenant"] == "a@example.com"
    assert (job.spec.backoff_limit, job.spec.active_deadline_seconds) == (0, 45)
    assert job.spec.ttl_seconds_after_finished == 600
    pod_spec = job.spec.template.spec
    assert pod_spec.restart_policy == "Never"
    assert pod_spec.automount_service_account_token is False
    assert pod_spec.security_context.run_as_non_root is True
    assert pod_spec.security_context.run_as_user == 65534
    (container,) = pod_spec.containers
    assert container.args == ["/burn"]
    assert container.resources.limits == {"cpu": "250m", "memory": "96Mi"}
    assert container.resources.requests == {"cpu": "250m", "memory": "96Mi"}
    assert container.security_context.allow_privilege_escalation is False
    env = {e.name: e for e in container.env}
    assert env["SMALL"].value == "1"
    ref = env["BIG"].value_from.secret_key_ref
    assert ref.name == secret_name(run.run_id)
    secret = client.CoreV1Api(api).read_namespaced_secret(ref.name, namespace)
    assert secret.metadata.owner_references[0].uid == job.metadata.uid
    assert base64.b64decode(secret.data[ref.key]).decode() == "b" * 100
    pod = running_pod(client.CoreV1Api(api), namespace, name)
    assert pod.spec.node_name == NODE_NAME
    assert [s.run_id for s in await runtime.list_runs()] == [run.run_id]


async def test_timeout_is_the_jobs_deadline(
    runtime: KubernetesRuntime, api: client.ApiClient, namespace: str
) -> None:
    name = await runtime.create(spec(timeout_s=2))
    await runtime.start(name)
    state = await eventually(runtime, name, lambda s: s is not None and not s.running, "deadline")
    assert state is not None and state.deadline_exceeded
    assert outcome_of_exit(state, 96) == (RunStatus.TIMED_OUT, StopReason.TIMEOUT, None)
    job = client.BatchV1Api(api).read_namespaced_job(name, namespace)
    # FailureTarget comes first (1.31+), Failed once the pod is gone: both say why.
    decided = [c for c in job.status.conditions if c.type in ("FailureTarget", "Failed")]
    assert decided and {c.reason for c in decided} == {"DeadlineExceeded"}


async def test_stop_deletes_job_and_pod(
    runtime: KubernetesRuntime, api: client.ApiClient, namespace: str
) -> None:
    name = await runtime.create(spec(env={"BIG": "x" * 100}))
    await runtime.start(name)
    await runtime.stop(name, grace_s=0)
    assert await runtime.inspect(name) is None
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
        secrets = core.list_namespaced_secret(namespace, label_selector="faas.run_id").items
        try:
            batch.read_namespaced_job(name, namespace)
            job_gone = False
        except ApiException as exc:
            job_gone = exc.status == 404
        if job_gone and not pods and not secrets:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"left behind: job gone={job_gone}, pods={len(pods)}, secrets={len(secrets)}"
    )


@pytest.mark.parametrize(
    ("exit_code", "outcome"),
    [
        (0, (RunStatus.SUCCEEDED, StopReason.EXITED, None)),
        (3, (RunStatus.FAILED, StopReason.EXITED, "exited with code 3")),
    ],
)
async def test_pod_phases_move_the_run_to_its_end(
    runtime: KubernetesRuntime,
    api: client.ApiClient,
    namespace: str,
    exit_code: int,
    outcome: tuple[RunStatus, StopReason, str | None],
) -> None:
    name = await runtime.create(spec())
    started = await runtime.start(name)
    assert started.running
    running_pod(client.CoreV1Api(api), namespace, name)
    assert (await runtime.inspect(name)).running  # type: ignore[union-attr]
    finish_pod(api, namespace, name, exit_code)
    state = await eventually(runtime, name, lambda s: s is not None and not s.running, "end")
    assert state is not None and state.exit_code == exit_code and state.finished_at is not None
    assert outcome_of_exit(state, 96) == outcome


async def test_a_dropped_watch_resumes_without_missing_a_transition(
    api: client.ApiClient, namespace: str
) -> None:
    # Reconnecting only after 3 s leaves a window in which the pod ends unseen.
    runtime = make_runtime(api, namespace, reconnect_delay_s=3.0)
    try:
        name = await runtime.create(spec())
        await runtime.start(name)
        running_pod(client.CoreV1Api(api), namespace, name)
        await eventually(runtime, name, lambda s: s is not None and s.running, "running")
        runtime.pods.drop()
        runtime.jobs.drop()
        finish_pod(api, namespace, name, 0)
        await asyncio.sleep(1.0)
        assert not runtime.pods.connected, "the watch should still be down"
        state = await eventually(runtime, name, lambda s: s is not None and not s.running, "end")
        assert state is not None and state.exit_code == 0
        # Resumed from the last resourceVersion: the server replayed the missed events.
        assert runtime.pods.relists == 0 and runtime.jobs.relists == 0
    finally:
        await runtime.close()


async def test_a_version_the_server_forgot_means_a_fresh_list(
    api: client.ApiClient, namespace: str, kube_cluster: KubeCluster
) -> None:
    runtime = make_runtime(api, namespace, reconnect_delay_s=3.0)
    try:
        name = await runtime.create(spec())
        await runtime.start(name)
        running_pod(client.CoreV1Api(api), namespace, name)
        await eventually(runtime, name, lambda s: s is not None and s.running, "running")
        last_seen = int(runtime.pods.resource_version)
        runtime.pods.drop()
        finish_pod(api, namespace, name, 0)
        # etcd forgets every version up to now: resuming at last_seen answers 410 Gone, and
        # the cache must list again instead of looping on the dead version.
        assert kube_cluster.compact_etcd() > last_seen
        pods = runtime.pods

        def relisted_and_ended() -> bool:
            phases = [(p.get("status") or {}).get("phase") for p in pods.values()]
            return pods.relists >= 1 and phases == ["Succeeded"]

        assert await asyncio.to_thread(pods.wait_for, relisted_and_ended, 20), pods.values()
        assert pods.relists == 1 and int(pods.resource_version) > last_seen
        state = await runtime.inspect(name)
        assert state is not None and not state.running and state.exit_code == 0
    finally:
        await runtime.close()


async def test_logs_come_from_the_pod_while_it_runs_and_after_stop(
    runtime: KubernetesRuntime, api: client.ApiClient, namespace: str
) -> None:
    # kwok serves every pod's log (infra/kube.py POD_LOG) as the node's kubelet endpoint; the
    # API server proxies /log to it, as it would to a real kubelet.
    whole = "".join(f"{line}\n" for line in POD_LOG)
    name = await runtime.create(spec())
    await runtime.start(name)
    running_pod(client.CoreV1Api(api), namespace, name)
    assert await runtime.logs(name, 1024) == whole
    assert await runtime.logs(name, 5) == whole[-5:]  # the tail, not the head
    await runtime.stop(name, grace_s=0)
    assert await runtime.logs(name, 1024) == whole  # read just before the pod was deleted
    assert await runtime.logs("no-such-job", 1024) is None
