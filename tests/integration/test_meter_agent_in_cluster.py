"""The meter agent's Kubernetes discovery as its DaemonSet runs it: with the ServiceAccount and
Role of ``kuberay/meter-agent-rbac.yaml`` (nothing more), in-cluster credentials and the env
``kuberay/meter-agent.yaml`` gives it, it sees the function pods of its node in
``faas-functions`` and can do nothing else."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.utils import create_from_dict

from app.runtime.base import ContainerSpec
from app.runtime.kube_spec import JobOptions
from app.runtime.kubernetes import KubernetesRuntime, in_cluster_api_client
from app.settings import Settings
from infra.kube import NODE_NAME, KubeCluster
from meter.kube_discovery import KubeDiscovery
from meter.sources import sources

_spec = importlib.util.spec_from_file_location(
    "kuberay_tools", Path(__file__).resolve().parents[2] / "kuberay" / "tools.py"
)
assert _spec is not None and _spec.loader is not None
tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tools)

AGENT = "faas-meter-agent"


def _create(admin: client.ApiClient, doc: dict[str, Any]) -> None:
    try:
        create_from_dict(admin, doc)
    except Exception as error:  # FailToCreateError wraps the ApiExceptions
        if [e.status for e in getattr(error, "api_exceptions", [])] != [409]:
            raise


@pytest.fixture
def rendered() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(tools.render()) if doc]


@pytest.fixture
def agent_env(
    kube_cluster: KubeCluster, rendered: list[dict[str, Any]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[client.ApiClient, client.ApiClient]]:  # fmt: skip
    """The agent's RBAC applied; the pod's env, token and CA as the kubelet would give them.
    Yields the admin client and one with the agent's credentials."""
    admin = config.new_client_from_config(config_file=kube_cluster.kubeconfig)
    ours = [d for d in rendered if d["metadata"]["name"] == AGENT and d["kind"] != "DaemonSet"]
    assert {d["kind"] for d in ours} == {"ServiceAccount", "Role", "RoleBinding"}
    for doc in [d for d in rendered if d["kind"] == "Namespace"] + ours:
        _create(admin, doc)
    token = client.CoreV1Api(admin).create_namespaced_service_account_token(
        AGENT, "faas", {"spec": {"expirationSeconds": 3600}}
    )
    (tmp_path / "token").write_text(token.status.token)
    host, port = kube_cluster.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    # The files a pod finds under /var/run/secrets/kubernetes.io/serviceaccount/, here.
    credentials = functools.partial(
        in_cluster_api_client, str(tmp_path / "token"), admin.configuration.ssl_ca_cert
    )
    monkeypatch.setattr("meter.kube_discovery.in_cluster_api_client", credentials)
    (daemonset,) = [d for d in rendered if d["kind"] == "DaemonSet"]
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    for entry in container["env"]:
        value = NODE_NAME if "valueFrom" in entry else entry["value"]  # spec.nodeName
        monkeypatch.setenv(entry["name"], value)
    (settings_map,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    monkeypatch.setenv("FAAS_RUNTIME_NAMESPACE", settings_map["data"]["FAAS_RUNTIME_NAMESPACE"])
    yield admin, credentials()
    rbac, core = client.RbacAuthorizationV1Api(admin), client.CoreV1Api(admin)
    rbac.delete_namespaced_role_binding(AGENT, "faas-functions")  # the dry-run test creates
    rbac.delete_namespaced_role(AGENT, "faas-functions")  # them afresh
    core.delete_namespaced_service_account(AGENT, "faas")
    admin.close()


def _forbidden(call: Any) -> bool:
    try:
        call()
    except ApiException as error:
        return error.status == 403
    return False


async def test_the_agent_sees_its_nodes_function_pods_with_only_its_role(
    agent_env: tuple[client.ApiClient, client.ApiClient],
) -> None:
    admin, agent_api = agent_env
    runtime = KubernetesRuntime(
        admin, JobOptions("faas-functions", ttl_after_finished_s=60, env_inline_max_bytes=64)
    )
    run = ContainerSpec(
        run_id=uuid.uuid4().hex, tenant="t@example.com", image="localhost/faas-cpu", cpu=0.25,
        memory_mb=64, env={}, timeout_s=60,
    )  # fmt: skip
    settings = Settings()  # from the DaemonSet's env, in-cluster credentials
    assert settings.meter.discovery == "kubernetes" and settings.meter.kubeconfig is None
    discovery, _ = sources(settings)
    assert isinstance(discovery, KubeDiscovery)
    name = await runtime.create(run)
    try:
        deadline = time.monotonic() + 30
        while [c.run_id for c in discovery.running()] != [run.run_id]:
            assert time.monotonic() < deadline, f"not listed: {discovery.running()}"
            await asyncio.sleep(0.2)
        # ... and the role stops there: no get, no writes, no Secrets, no other namespace.
        core = client.CoreV1Api(agent_api)
        pod = discovery.pods.values()[0]["metadata"]["name"]
        assert _forbidden(lambda: core.read_namespaced_pod(pod, "faas-functions"))
        assert _forbidden(lambda: core.read_namespaced_pod_log(pod, "faas-functions"))
        assert _forbidden(lambda: core.delete_namespaced_pod(pod, "faas-functions"))
        assert _forbidden(lambda: core.list_namespaced_secret("faas-functions"))
        assert _forbidden(lambda: core.list_namespaced_pod("faas"))
        assert _forbidden(lambda: core.list_pod_for_all_namespaces())
        assert _forbidden(lambda: client.BatchV1Api(core.api_client).list_namespaced_job(
            "faas-functions"
        ))  # fmt: skip
    finally:
        discovery.close()
        await runtime.stop(name, grace_s=0)
        await runtime.close()
        agent_api.close()
