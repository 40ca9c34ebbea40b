"""The meter agent's DaemonSet runs in Kubernetes mode with its own, read-only rights: pods of
faas-functions (list, watch) and the node's cgroup tree mounted read-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KUBERAY = Path(__file__).resolve().parents[2] / "kuberay"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def test_the_agents_role_reads_pods_of_the_functions_namespace_only() -> None:
    rbac = docs("meter-agent-rbac.yaml")
    assert {d["kind"] for d in rbac} == {"ServiceAccount", "Role", "RoleBinding"}
    (role,) = [d for d in rbac if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "faas-functions"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    (binding,) = [d for d in rbac if d["kind"] == "RoleBinding"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "faas-meter-agent", "namespace": "faas"}
    ]


def test_the_daemonset_runs_kubernetes_discovery_on_a_read_only_cgroup_tree() -> None:
    (daemonset,) = docs("meter-agent.yaml")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "faas-meter-agent"
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["FAAS_METER_DISCOVERY"]["value"] == "kubernetes"
    assert env["FAAS_METER_NODE"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    (mount,) = container["volumeMounts"]
    assert mount["readOnly"] is True
    assert env["FAAS_METER_CGROUP_ROOT"]["value"] == mount["mountPath"]
    (volume,) = pod["volumes"]
    assert volume["hostPath"]["path"] == "/sys/fs/cgroup"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert (
        "meter-agent-rbac.yaml"
        in yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())["resources"]
    )
