"""The Kubernetes objects of one run, as plain API dicts: a ``batch/v1`` Job and, for env
values over the inline size limit, a Secret the Job's container reads them from."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from app.runtime.base import OWNER_LABEL, RUN_ID_LABEL, TENANT_LABEL, ContainerSpec

CONTAINER_NAME = "function"
NOBODY = 65534
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class JobOptions:
    namespace: str
    ttl_after_finished_s: int
    env_inline_max_bytes: int  # larger values go through a Secret
    read_only_root: bool = True
    run_as_user: int = NOBODY
    run_as_group: int = NOBODY


def job_name(run_id: str) -> str:
    return f"faas-{run_id}".lower()[:63]


def secret_name(run_id: str) -> str:
    return f"{job_name(run_id)[:56]}-env"


def label_value(text: str) -> str:
    """A label value (63 chars of ``[A-Za-z0-9_.-]``, alphanumeric at both ends); an email's
    ``@`` is not allowed, so values are rewritten and, when changed, made unique by a hash.
    The exact text is kept in an annotation."""
    cleaned = _LABEL_BAD.sub("_", text).strip("_.-")
    if cleaned == text and len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{cleaned[:50].rstrip('_.-')}-{digest}".lstrip("_.-")


def labels_of(spec: ContainerSpec) -> dict[str, str]:
    labels = {RUN_ID_LABEL: label_value(spec.run_id), TENANT_LABEL: label_value(spec.tenant)}
    if spec.owner:
        labels[OWNER_LABEL] = label_value(spec.owner)
    return labels


def split_env(
    env: dict[str, str], inline_max_bytes: int
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Env entries for the container and the Secret data for values over the limit."""
    entries: list[dict[str, Any]] = []
    secret: dict[str, str] = {}
    for index, (name, value) in enumerate(env.items()):
        if len(value.encode()) <= inline_max_bytes:
            entries.append({"name": name, "value": value})
            continue
        key = f"env-{index}"  # env names may hold characters a Secret key cannot
        secret[key] = value
        entries.append({"name": name, "valueFrom": {"secretKeyRef": {"name": "", "key": key}}})
    return entries, secret


def build_job(spec: ContainerSpec, options: JobOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """The Job for ``spec`` and the Secret data it needs (empty: no Secret)."""
    labels = labels_of(spec)
    annotations = {RUN_ID_LABEL: spec.run_id, TENANT_LABEL: spec.tenant}
    env, secret = split_env(spec.env, options.env_inline_max_bytes)
    for entry in env:
        if "valueFrom" in entry:
            entry["valueFrom"]["secretKeyRef"]["name"] = secret_name(spec.run_id)
    quantity = {"cpu": f"{round(spec.cpu * 1000)}m", "memory": f"{spec.memory_mb}Mi"}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "resources": {"requests": dict(quantity), "limits": dict(quantity)},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": options.read_only_root,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 (inside the pod)
    }
    if spec.command:
        container["args"] = list(spec.command)  # Docker's CMD: the image's entrypoint stays
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": options.run_as_user,
            "runAsGroup": options.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}],
    }
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": options.ttl_after_finished_s,
        "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec},
    }
    if spec.timeout_s is not None:
        job_spec["activeDeadlineSeconds"] = spec.timeout_s
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec.run_id),
            "namespace": options.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }
    return job, secret
