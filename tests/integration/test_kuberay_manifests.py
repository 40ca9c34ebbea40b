"""Every object `kustomize build kuberay/` renders is accepted by a real API server
(server-side dry run, strict field validation) once the KubeRay and Strimzi CRDs are in."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from infra.kube import KubeCluster

# kuberay/tools.py (kustomize and the CRDs, cached) is a script, not a package: load it by path.
_spec = importlib.util.spec_from_file_location(
    "kuberay_tools", Path(__file__).resolve().parents[2] / "kuberay" / "tools.py"
)
assert _spec is not None and _spec.loader is not None
tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tools)


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(tools.render()) if doc]


def _api(cluster: KubeCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=cluster.kubeconfig)


def _install_crds(api: client.ApiClient, timeout_s: float = 60.0) -> list[str]:
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in [*tools.kuberay_crds(), *tools.strimzi_crds()]:
        crd = yaml.safe_load(path.read_text())
        names.append(crd["metadata"]["name"])
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as error:
            if error.status != 409:  # already installed by an earlier run of this session
                raise
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            conditions = ext.read_custom_resource_definition(name).status.conditions or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                pending.discard(name)
        time.sleep(0.2)
    assert not pending, f"CRDs not Established within {timeout_s}s: {sorted(pending)}"
    return names


def _create_namespaces(api: client.ApiClient, docs: list[dict[str, Any]]) -> None:
    core = client.CoreV1Api(api)
    for doc in docs:
        if doc["kind"] == "Namespace":
            try:
                core.create_namespace(doc)
            except ApiException as error:
                if error.status != 409:
                    raise


def _dry_run_create(api: client.ApiClient, path: str, body: dict[str, Any]) -> None:
    api.call_api(
        path,
        "POST",
        query_params=[("dryRun", "All"), ("fieldValidation", "Strict")],
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )


def test_the_tree_renders_every_part(rendered: list[dict[str, Any]]) -> None:
    kinds = {doc["kind"] for doc in rendered}
    assert {
        "Namespace", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding",
        "RayService", "Deployment", "Service", "DaemonSet", "Kafka", "KafkaNodePool", "KafkaTopic",
    } <= kinds  # fmt: skip
    topics = {doc["metadata"]["name"] for doc in rendered if doc["kind"] == "KafkaTopic"}
    assert topics == {"faas.deployments", "faas.metrics", "faas.invoices", "faas.node-events"}


def test_every_rendered_object_passes_a_server_side_dry_run(
    kube_cluster: KubeCluster, rendered: list[dict[str, Any]]
) -> None:
    api = _api(kube_cluster)
    crds = _install_crds(api)
    assert "rayservices.ray.io" in crds and "kafkas.kafka.strimzi.io" in crds
    _create_namespaces(api, rendered)
    dynamic = DynamicClient(api)
    dynamic.resources.invalidate_cache()  # discovery must see the CRDs just installed
    rejected = {}
    for doc in rendered:
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        namespace = doc["metadata"].get("namespace") if resource.namespaced else None
        try:
            _dry_run_create(api, resource.path(namespace=namespace), doc)
        except ApiException as error:
            if error.status == 409 and doc["kind"] == "Namespace":
                continue  # created for real above: its spec was accepted then
            rejected[f"{doc['kind']}/{doc['metadata']['name']}"] = f"{error.status} {error.body}"
    assert not rejected, rejected
    assert len(rendered) >= 17
    # The check has teeth: a misspelt field in a custom resource is refused by its schema.
    (rayservice,) = [doc for doc in rendered if doc["kind"] == "RayService"]
    typo = {**rayservice, "spec": {**rayservice["spec"], "serveConfigV3": "x"}}
    with pytest.raises(ApiException) as refused:
        _dry_run_create(api, "/apis/ray.io/v1/namespaces/faas/rayservices", typo)
    assert refused.value.status in (400, 422) and "serveConfigV3" in str(refused.value.body)
