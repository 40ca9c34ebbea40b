"""The local Kubernetes control plane is real: the API server answers, kwok's node is Ready
and a bare Pod is scheduled onto it and reaches Running."""

from __future__ import annotations

import time
import uuid

from kubernetes import client, config

from infra.kube import NODE_NAME, KubeCluster


def _core(cluster: KubeCluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))


def _wait(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s}s")


def test_api_server_answers_with_its_version(kube_cluster: KubeCluster) -> None:
    api = config.new_client_from_config(config_file=kube_cluster.kubeconfig)
    version = client.VersionApi(api).get_code()
    assert version.git_version == "v1.34.4"
    assert kube_cluster.server.startswith("https://127.0.0.1:")


def test_kwok_node_is_ready(kube_cluster: KubeCluster) -> None:
    core = _core(kube_cluster)

    def ready() -> bool:
        conditions = core.read_node(NODE_NAME).status.conditions or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    _wait(ready, 30, f"node {NODE_NAME} Ready")


def test_bare_pod_is_scheduled_and_runs(kube_cluster: KubeCluster) -> None:
    core = _core(kube_cluster)
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="main", image="localhost/faas-echo")],
            restart_policy="Never",
        ),
    )
    core.create_namespaced_pod("default", pod)
    try:
        running = _wait(
            lambda: (
                (p := core.read_namespaced_pod(name, "default")).status.phase == "Running" and p
            ),
            30,
            f"pod {name} Running",
        )
        assert running.spec.node_name == NODE_NAME
        assert running.status.container_statuses[0].state.running.started_at is not None
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
