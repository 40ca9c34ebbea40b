"""The control plane's Kubernetes runtime as it runs in the cluster: with the service account
and Role of ``kuberay/rbac.yaml`` (nothing more), in-cluster credentials, and Jobs in the
``faas-functions`` namespace whose Pod Security level is ``restricted``."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator
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
from infra.kube import POD_LOG, KubeCluster

_spec = importlib.util.spec_from_file_location(
    "kuberay_tools", Path(__file__).resolve().parents[2] / "kuberay" / "tools.py"
)
assert _spec is not None and _spec.loader is not None
tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tools)

RBAC_KINDS = ("Namespace", "ServiceAccount", "Role", "RoleBinding")


def _apply(admin: client.ApiClient, doc: dict[str, Any]) -> None:
    try:
        create_from_dict(admin, doc)
    except Exception as error:  # FailToCreateError wraps the ApiExceptions
        statuses = [e.status for e in getattr(error, "api_exceptions", [])]
        if statuses != [409]:  # already there from an earlier test of this session
            raise


@pytest.fixture
async def control_plane_api(
    kube_cluster: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[client.ApiClient]:
    """An API client exactly as the control plane gets one inside its Ray pod."""
    admin = config.new_client_from_config(config_file=kube_cluster.kubeconfig)
    rendered = [doc for doc in yaml.safe_load_all(tools.render()) if doc]
    for doc in rendered:
        if doc["kind"] in RBAC_KINDS:
            _apply(admin, doc)
    (account,) = [
        doc for doc in rendered
        if doc["kind"] == "ServiceAccount" and doc["metadata"]["name"] == "faas-control-plane"
    ]  # fmt: skip
    request = {"spec": {"expirationSeconds": 3600}}
    token = client.CoreV1Api(admin).create_namespaced_service_account_token(
        account["metadata"]["name"], account["metadata"]["namespace"], request
    )
    (tmp_path / "token").write_text(token.status.token)
    ca = admin.configuration.ssl_ca_cert
    host, port = kube_cluster.server.removeprefix("https://").rsplit(":", 1)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    api = in_cluster_api_client(str(tmp_path / "token"), ca)
    yield api
    api.close()
    _delete_rbac(admin, rendered)  # the dry-run test must create them afresh
    admin.close()


def _delete_rbac(admin: client.ApiClient, rendered: list[dict[str, Any]]) -> None:
    rbac, core = client.RbacAuthorizationV1Api(admin), client.CoreV1Api(admin)
    delete = {
        "ServiceAccount": core.delete_namespaced_service_account,
        "Role": rbac.delete_namespaced_role,
        "RoleBinding": rbac.delete_namespaced_role_binding,
    }
    for doc in rendered:
        if doc["kind"] in delete:
            delete[doc["kind"]](doc["metadata"]["name"], doc["metadata"]["namespace"])


async def _until_running(core: client.CoreV1Api, job: str) -> None:
    for _ in range(100):
        pods = core.list_namespaced_pod("faas-functions", label_selector=f"job-name={job}").items
        if pods and pods[0].status.phase == "Running":
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the pod of {job} did not run")


def _forbidden(call: Any) -> bool:
    try:
        call()
    except ApiException as error:
        return error.status == 403
    return False


async def test_the_control_plane_runs_a_function_with_only_its_role(
    control_plane_api: client.ApiClient, kube_cluster: KubeCluster
) -> None:
    options = JobOptions(
        namespace="faas-functions", ttl_after_finished_s=60, env_inline_max_bytes=8
    )
    runtime = KubernetesRuntime(control_plane_api, options)
    run = ContainerSpec(
        run_id=uuid.uuid4().hex, tenant="t@example.com", image="localhost/faas-cpu", cpu=0.25,
        memory_mb=64, env={"SECRETISH": "s" * 64}, timeout_s=60,
    )  # fmt: skip
    try:
        name = await runtime.create(run)
        await runtime.start(name)
        admin = client.CoreV1Api(config.new_client_from_config(kube_cluster.kubeconfig))
        # The restricted Pod Security level admits the Job's pod (else it never appears).
        deadline = asyncio.get_running_loop().time() + 30
        while not admin.list_namespaced_pod(
            "faas-functions", label_selector=f"job-name={name}"
        ).items:
            assert asyncio.get_running_loop().time() < deadline, "the Job's pod was not admitted"
            await asyncio.sleep(0.2)
        state = await runtime.inspect(name)
        assert state is not None and state.run_id == run.run_id
        await _until_running(admin, name)
        assert await runtime.logs(name, 1024) == "".join(f"{line}\n" for line in POD_LOG)
        await runtime.stop(name, grace_s=0)
        assert await runtime.inspect(name) is None
    finally:
        await runtime.close()
    # ... and the role stops there: no pods of its own, no other Secrets, no other namespace.
    core, batch = client.CoreV1Api(control_plane_api), client.BatchV1Api(control_plane_api)
    pod = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}}
    assert _forbidden(lambda: core.create_namespaced_pod("faas-functions", pod))
    assert _forbidden(lambda: core.list_namespaced_secret("faas-functions"))
    assert _forbidden(lambda: batch.list_namespaced_job("default"))
    assert _forbidden(lambda: core.list_namespaced_config_map("faas"))
