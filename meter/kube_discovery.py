"""Finds this node's function containers through the Kubernetes API (the agent as a
DaemonSet): the pods with a ``faas.run_id`` label in the functions' namespace whose
``spec.nodeName`` is this node, kept by a list+watch cache, so every question the agent
asks is answered from memory and a slow or absent API server never delays a reading.

Per pod it takes the container named ``function`` (the runtime's Job spec; a sidecar a
mesh injects is not the tenant's): its id from ``status.containerStatuses[].containerID``
without the ``containerd://``/``cri-o://`` prefix, StartedAt and the exit code from its
state. Run id and tenant come from the pod's annotations (labels hold sanitized values).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from kubernetes import client, config

from app.runtime.base import RUN_ID_LABEL, TENANT_LABEL
from app.runtime.kube_spec import CONTAINER_NAME
from app.runtime.kube_state import parse_time
from app.runtime.kube_watch import WatchCache
from app.runtime.kubernetes import in_cluster_api_client
from app.settings import Settings
from meter.discovery import Container, Described
from meter.kube_cgroups import PodCgroup

Obj = dict[str, Any]


def container_id(status: Obj) -> str | None:
    """``containerd://<id>`` (or ``cri-o://``, ``docker://``) as the kubelet reports it → id."""
    value = status.get("containerID")
    if not isinstance(value, str) or not value:
        return None  # not created yet
    return value.split("://", 1)[-1]


class KubeDiscovery:
    """:class:`meter.discovery.Discovery` over the pods of ``node`` in ``namespace``. The cache
    is started (listed) by the first question, so an API server that is away at start-up
    only makes the agent's first rounds fail, not the agent."""

    def __init__(
        self, api: client.ApiClient, namespace: str, node: str, *, reconnect_delay_s: float = 1.0
    ) -> None:
        if api is None or not namespace or not node:
            raise ValueError("api, namespace and node are required")
        self._api = api
        list_pods = functools.partial(
            client.CoreV1Api(api).list_namespaced_pod, field_selector=f"spec.nodeName={node}"
        )
        self.pods = WatchCache(
            list_pods, namespace, RUN_ID_LABEL, reconnect_delay_s=reconnect_delay_s
        )
        self._lock = threading.Lock()
        self._started = False

    @classmethod
    def from_settings(cls, settings: Settings) -> KubeDiscovery:
        """``FAAS_METER_NODE`` (required: in a pod the host name is the pod's), namespace and
        kubeconfig of the meter settings, else the runtime's, else in-cluster credentials."""
        node = settings.meter.node
        if not node:
            raise ValueError("FAAS_METER_NODE (the node's name, spec.nodeName) is required")
        kubeconfig = settings.meter.kubeconfig or settings.runtime.kubeconfig
        api = (
            config.new_client_from_config(config_file=kubeconfig)
            if kubeconfig
            else in_cluster_api_client()
        )
        return cls(api, settings.meter.namespace or settings.runtime.namespace, node)

    def _containers(self) -> Iterator[tuple[str, Obj, Obj]]:
        """(container id, pod, the function container's status) of every created one."""
        with self._lock:
            if not self._started:
                self.pods.start()  # lists; raises while the API server is away
                self._started = True
        yield from self._cached()

    def _cached(self) -> Iterator[tuple[str, Obj, Obj]]:
        for pod in self.pods.values():
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                cid = container_id(status)
                if status.get("name") == CONTAINER_NAME and cid:
                    yield cid, pod, status

    def _find(self, cid: str) -> tuple[Obj, Obj] | None:
        return next(((pod, s) for found, pod, s in self._containers() if found == cid), None)

    def running(self) -> list[Container]:
        return [
            _container(cid, pod)
            for cid, pod, status in self._containers()
            if "running" in (status.get("state") or {})
        ]

    def started_at(self, container_id: str) -> datetime | None:
        found = self._find(container_id)
        return None if found is None else _started(found[1])

    def describe(self, container_id: str) -> Described | None:
        found = self._find(container_id)
        if found is None:
            return None
        pod, status = found
        return Described(_container(container_id, pod), _started(status))

    def exit_code(self, container_id: str) -> int | None:
        found = self._find(container_id)
        terminated = None if found is None else (found[1].get("state") or {}).get("terminated")
        code = (terminated or {}).get("exitCode")
        return code if isinstance(code, int) else None

    def pod_cgroup(self, container_id: str) -> PodCgroup | None:
        """Where the container's cgroup is (its pod's UID and QoS class), from the cache as
        it is: called on every reading of a new container, it never asks the API server."""
        for cid, pod, _ in self._cached():
            if cid == container_id:
                qos = (pod.get("status") or {}).get("qosClass") or "BestEffort"
                return PodCgroup(pod["metadata"]["uid"], qos)
        return None

    def close(self) -> None:
        with self._lock:
            if self._started:
                self.pods.stop()
                self._started = False
        self._api.close()


def _container(cid: str, pod: Obj) -> Container:
    meta = pod["metadata"]
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    run_id = annotations.get(RUN_ID_LABEL) or labels.get(RUN_ID_LABEL, "")
    return Container(cid, run_id, annotations.get(TENANT_LABEL, ""))


def _started(status: Obj) -> datetime | None:
    state = status.get("state") or {}
    for phase in ("running", "terminated"):
        started = (state.get(phase) or {}).get("startedAt")
        if started:
            return parse_time(started)
    return None
