"""The kuberay/ tree is complete: every kustomize resource and everything the Containerfile
copies exists, and the Role stays inside the functions namespace."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "kuberay"


def test_every_kustomization_resource_exists() -> None:
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    assert kustomization["resources"]
    for resource in kustomization["resources"]:
        assert (KUBERAY / resource).is_file(), resource


def test_every_path_the_containerfile_copies_exists() -> None:
    copies = re.findall(
        r"^COPY (?:--\S+ )*(.+) \S+$", (KUBERAY / "Containerfile").read_text(), re.M
    )
    sources = [source for line in copies for source in line.split()]
    assert {"pyproject.toml", "app", "deployments", "meter", "analytics"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source


def test_control_plane_rights_are_namespaced_to_functions_only() -> None:
    docs = [d for d in yaml.safe_load_all((KUBERAY / "rbac.yaml").read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding"}  # no ClusterRole
    (role,) = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "faas-functions"
    rights = {(r, tuple(rule["verbs"])) for rule in role["rules"] for r in rule["resources"]}
    assert rights == {
        ("jobs", ("create", "get", "list", "watch", "delete")),
        ("pods", ("get", "list", "watch")),
        ("pods/log", ("get",)),
        ("secrets", ("create", "get", "delete")),
    }
