"""The meter agent's Kubernetes discovery against a real API server: function Jobs made by the
Kubernetes runtime on kwok's node, a pod of the same kind on another node, other pods beside
them; kwok reports each container as a kubelet on containerd does
(``containerd://<id>``, infra/kube/stages.yaml) and ends pods when a test annotates them."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client

from app.runtime.base import ContainerSpec
from app.runtime.kube_spec import JobOptions
from app.runtime.kube_state import parse_time
from app.runtime.kubernetes import KubernetesRuntime
from infra.kube import NODE_NAME
from meter.discovery import Container, Described
from meter.kube_cgroups import PodCgroup
from meter.kube_discovery import KubeDiscovery

T = TypeVar("T")


def until(probe: Callable[[], T | None], what: str, timeout_s: float = 30) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout_s}s")


@pytest.fixture
def other_node(api: client.ApiClient) -> Iterator[str]:
    """A second kwok node; unschedulable, so only pods bound to it by name land there."""
    name = f"kwok-other-{uuid.uuid4().hex[:6]}"
    node = {
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"unschedulable": True},
    }
    core = client.CoreV1Api(api)
    core.create_node(node)
    yield name
    # Without its node no kubelet (kwok) confirms a graceful delete: the namespace would hang.
    for pod in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items:
        core.delete_namespaced_pod(
            pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
        )
    core.delete_node(name)


@pytest.fixture
async def runtime(api: client.ApiClient, namespace: str) -> AsyncIterator[KubernetesRuntime]:
    options = JobOptions(namespace=namespace, ttl_after_finished_s=600, env_inline_max_bytes=64)
    rt = KubernetesRuntime(api, options)
    yield rt
    await rt.close()


def run_spec(tenant: str) -> ContainerSpec:
    return ContainerSpec(
        run_id=uuid.uuid4().hex, tenant=tenant, image="localhost/faas-cpu", cpu=0.25,
        memory_mb=96, env={}, timeout_s=120,
    )  # fmt: skip


def running_pod(core: client.CoreV1Api, namespace: str, selector: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        if pods and pods[0].status.phase == "Running":
            result: dict[str, Any] = core.api_client.sanitize_for_serialization(pods[0])
            return result
        return None

    return until(probe, f"a Running pod for {selector}")


def kubelet_id(pod: dict[str, Any]) -> str:
    """The id kwok reports (containerd://<this>), as the stages compute it."""
    return hashlib.sha256(f"{pod['metadata']['uid']}/function".encode()).hexdigest()


def finish(core: client.CoreV1Api, pod: dict[str, Any], exit_code: int) -> None:
    outcome = "succeeded" if exit_code == 0 else "failed"
    annotations = {"faas.test/outcome": outcome, "faas.test/exit-code": str(exit_code)}
    meta = pod["metadata"]
    core.patch_namespaced_pod(
        meta["name"], meta["namespace"], {"metadata": {"annotations": annotations}}
    )


def bare_pod(name: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    container = {"name": "function", "image": "localhost/faas-cpu"}
    return {
        "metadata": {"name": name, "labels": labels,
                     "annotations": {"faas.run_id": labels.get("faas.run_id", "x"),
                                     "faas.tenant": "z@example.com"}},
        "spec": {"nodeName": node, "containers": [container]},
    }  # fmt: skip


async def test_lists_this_nodes_function_containers_with_run_tenant_id_and_start(
    api: client.ApiClient, namespace: str, other_node: str, runtime: KubernetesRuntime
) -> None:
    core = client.CoreV1Api(api)
    a, b = run_spec("alice@example.com"), run_spec("bob+x@example.org")
    for run in (a, b):
        await runtime.start(await runtime.create(run))
    pod_a = running_pod(core, namespace, f"faas.run_id={a.run_id}")
    pod_b = running_pod(core, namespace, f"faas.run_id={b.run_id}")
    # Not ours: a function pod on another node, a pod without a run id on this node.
    core.create_namespaced_pod(namespace, bare_pod("elsewhere", other_node, {"faas.run_id": "e"}))
    core.create_namespaced_pod(namespace, bare_pod("unlabelled", NODE_NAME, {"app": "x"}))
    elsewhere = running_pod(core, namespace, "faas.run_id=e")
    running_pod(core, namespace, "app=x")
    assert elsewhere["spec"]["nodeName"] == other_node
    assert elsewhere["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")

    discovery = KubeDiscovery(api, namespace, NODE_NAME, reconnect_delay_s=0.1)
    try:
        id_a, id_b = kubelet_id(pod_a), kubelet_id(pod_b)
        assert sorted(discovery.running(), key=lambda c: c.run_id) == sorted(
            [Container(id_a, a.run_id, a.tenant), Container(id_b, b.run_id, b.tenant)],
            key=lambda c: c.run_id,
        )
        started = pod_a["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        assert discovery.started_at(id_a) == parse_time(started)
        assert discovery.describe(id_b) == Described(
            Container(id_b, b.run_id, b.tenant), discovery.started_at(id_b)
        )
        assert discovery.describe(kubelet_id(elsewhere)) is None
        # requests == limits: Guaranteed, the pod's cgroup directly under kubepods
        assert discovery.pod_cgroup(id_a) == PodCgroup(pod_a["metadata"]["uid"], "Guaranteed")
        assert discovery.exit_code(id_a) is None  # still running

        finish(core, pod_b, 3)
        until(lambda: discovery.exit_code(id_b) == 3, "b's exit code through the watch")
        assert [c.run_id for c in discovery.running()] == [a.run_id]
        assert discovery.started_at(id_b) == parse_time(
            pod_b["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        )  # from the terminated state now
        finish(core, pod_a, 0)
        until(lambda: discovery.exit_code(id_a) == 0, "a's exit code 0")
        assert discovery.running() == []
    finally:
        discovery.close()


def test_a_new_pod_is_seen_through_the_watch(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    discovery = KubeDiscovery(api, namespace, NODE_NAME, reconnect_delay_s=0.1)
    try:
        assert discovery.running() == []  # lists (starts the cache) with nothing there
        core.create_namespaced_pod(namespace, bare_pod("late", NODE_NAME, {"faas.run_id": "l"}))
        pod = running_pod(core, namespace, "faas.run_id=l")
        found = until(discovery.running, "the new pod in the cache")
        assert found == [Container(kubelet_id(pod), "l", "z@example.com")]
        assert discovery.pods.relists == 0  # one list, then the watch
    finally:
        discovery.close()
