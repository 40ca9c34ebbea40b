"""The Kubernetes runtime against a real API server, job controller and scheduler, with
kwok moving the pods: each test annotates a pod to make it succeed or fail when it wants."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from app.control.finisher import outcome_of_exit
from app.runtime.base import ContainerSpec, ContainerState
from app.runtime.kube_spec import JobOptions, secret_name
from app.runtime.kubernetes import KubernetesRuntime
from app.schemas import RunStatus, StopReason
from infra.kube import NODE_NAME, KubeCluster


@pytest.fixture
async def namespace(kube_cluster: KubeCluster) -> AsyncIterator[str]:
    name = f"fns-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(config.new_client_from_config(config_file=kube_cluster.kubeconfig))
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def api(kube_cluster: KubeCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=kube_cluster.kubeconfig)


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
    pod = pod_of(client.CoreV1Api(api), namespace, name)
    assert pod.spec.node_name == NODE_NAME and pod.status.phase == "Running"
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
