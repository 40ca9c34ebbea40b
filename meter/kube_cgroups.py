"""Reads a Kubernetes pod's container from the node's cgroup tree (the agent's DaemonSet
mounts it read-only).

The kubelet puts a container's cgroup under its pod's, which is under its QoS class's
(``status.qosClass``; Guaranteed pods sit directly under ``kubepods``):

- cgroupfs driver: ``kubepods[/burstable|/besteffort]/pod<uid>/<container id>``
- systemd driver: ``kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with
  _ for ->.slice/<runtime>-<container id>.scope``, runtime ``cri-containerd``, ``crio`` or
  ``docker`` (cri-dockerd)

on cgroup v2 (one tree) and v1 (the same path under ``cpuacct/`` and ``memory/``). The files
read and their meaning are those of :mod:`meter.cgroups`. This assumes the kubelet's
default ``--cgroup-root=/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meter.cgroups import Reading, read_v1, read_v2

SCOPE_PREFIXES = ("cri-containerd", "crio", "docker")


@dataclass(frozen=True, slots=True)
class PodCgroup:
    """What places a container's cgroup: its pod's UID and QoS class."""

    uid: str
    qos: str  # Guaranteed | Burstable | BestEffort


def container_paths(pod: PodCgroup, container_id: str) -> list[str]:
    """Where each cgroup driver puts the container, relative to the hierarchy's root."""
    qos = pod.qos.lower()
    tier = [] if qos == "guaranteed" else [qos]
    cgroupfs = "/".join(["kubepods", *tier, f"pod{pod.uid}", container_id])
    uid = pod.uid.replace("-", "_")
    prefix = "-".join(["kubepods", *tier])
    qos_slice = [f"{prefix}.slice"] if tier else []
    slices = ["kubepods.slice", *qos_slice, f"{prefix}-pod{uid}.slice"]
    systemd = ["/".join([*slices, f"{runtime}-{container_id}.scope"]) for runtime in SCOPE_PREFIXES]
    return [cgroupfs, *systemd]


class KubeCgroupReader:
    """:class:`meter.cgroups.Reader` for pod containers. ``locate`` (the discovery's pod
    cache) tells a container's pod; the directory found is remembered while it reads."""

    def __init__(self, root: Path | str, locate: Callable[[str], PodCgroup | None]) -> None:
        if root is None or locate is None:
            raise ValueError("root and locate are required")
        self._root = Path(root)
        self._locate = locate
        self.v2 = (self._root / "cgroup.controllers").exists()
        self._found: dict[str, str] = {}  # container id -> its directory, relative

    def read(self, container_id: str) -> Reading | None:
        """None when the pod or its cgroup is unknown, gone or empty (it exited)."""
        relative = self._found.get(container_id) or self._find(container_id)
        if relative is None:
            return None
        if self.v2:
            reading = read_v2(self._root / relative)
        else:
            reading = read_v1(self._root / "cpuacct" / relative, self._root / "memory" / relative)
        if reading is None:
            self._found.pop(container_id, None)
        return reading

    def present(self) -> set[str] | None:
        """None: the agent learns of new containers from the discovery's pod cache, which a
        watch keeps current (a listing that never waits on the API server), not from the
        tree, where a container's directory does not say which pod's container it is."""
        return None

    def _find(self, container_id: str) -> str | None:
        pod = self._locate(container_id)
        if pod is None:
            return None
        base = self._root if self.v2 else self._root / "memory"
        for relative in container_paths(pod, container_id):
            if (base / relative).is_dir():
                self._found[container_id] = relative
                return relative
        return None
