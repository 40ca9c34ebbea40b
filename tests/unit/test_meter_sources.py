"""FAAS_METER_DISCOVERY picks what the agent finds containers with and reads them from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.settings import Settings
from meter.cgroups import CgroupReader
from meter.discovery import DockerDiscovery
from meter.kube_cgroups import KubeCgroupReader
from meter.kube_discovery import KubeDiscovery, container_id
from meter.sources import sources


def kubeconfig(path: Path) -> str:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }  # fmt: skip
    path.write_text(json.dumps(config))
    return str(path)


def test_docker_is_the_default(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.meter.discovery == "docker"
    discovery, reader = sources(settings)
    try:
        assert isinstance(discovery, DockerDiscovery) and isinstance(reader, CgroupReader)
    finally:
        discovery.close()


def test_kubernetes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_METER_DISCOVERY", "kubernetes")
    monkeypatch.setenv("FAAS_METER_NODE", "node-7")
    monkeypatch.setenv("FAAS_METER_KUBECONFIG", kubeconfig(tmp_path / "kubeconfig"))
    monkeypatch.setenv("FAAS_METER_CGROUP_ROOT", str(tmp_path))
    discovery, reader = sources(Settings(home=tmp_path))
    try:  # nothing asked of the API server yet: the first round lists
        assert isinstance(discovery, KubeDiscovery) and isinstance(reader, KubeCgroupReader)
        assert discovery.pod_cgroup("ab" * 32) is None and reader.read("ab" * 32) is None
    finally:
        discovery.close()


def test_kubernetes_needs_the_node_name(tmp_path: Path) -> None:
    meter = {"discovery": "kubernetes", "kubeconfig": kubeconfig(tmp_path / "k")}
    with pytest.raises(ValueError, match="FAAS_METER_NODE"):
        sources(Settings(home=tmp_path, meter=meter))  # type: ignore[arg-type]


def test_other_discovery_values_are_refused() -> None:
    with pytest.raises(ValueError):
        Settings(meter={"discovery": "kubelet"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ("containerd://" + "ab" * 32, "ab" * 32),
        ("cri-o://" + "cd" * 32, "cd" * 32),
        ("docker://" + "ef" * 32, "ef" * 32),
        ("", None),
        (None, None),
    ],
)
def test_container_id_drops_the_runtime_prefix(reported: str | None, expected: str | None) -> None:
    assert container_id({"containerID": reported}) == expected
