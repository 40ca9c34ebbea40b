"""Where the agent finds containers and reads them, by ``FAAS_METER_DISCOVERY``:

- ``docker``: the Docker Engine API (podman, ``make run``) and libpod cgroups;
- ``kubernetes``: this node's function pods from the API server and their pod cgroups
  (the agent as a DaemonSet, ``kuberay/meter-agent.yaml``).
"""

from __future__ import annotations

from typing import Protocol

from app.settings import Settings
from meter.cgroups import CgroupReader, Reader
from meter.discovery import Discovery, DockerDiscovery


class ClosingDiscovery(Discovery, Protocol):
    def close(self) -> None: ...


def sources(settings: Settings) -> tuple[ClosingDiscovery, Reader]:
    """The discovery (close it when done) and the cgroup reader the settings name."""
    root = settings.meter.cgroup_root
    if settings.meter.discovery == "kubernetes":
        # Imported here: the Kubernetes client adds ~40 MB to a podman node's agent.
        from meter.kube_cgroups import KubeCgroupReader
        from meter.kube_discovery import KubeDiscovery

        pods = KubeDiscovery.from_settings(settings)
        return pods, KubeCgroupReader(root, pods.pod_cgroup)
    if settings.runtime.docker_url is None:
        raise ValueError("settings.runtime.docker_url is required")
    return DockerDiscovery(settings.runtime.docker_url), CgroupReader(root)
