"""The meter agent in Kubernetes mode end to end, except the kubelet: a function Job made by
the Kubernetes runtime runs on kwok's node; the agent (built from the settings as
``python -m meter agent`` builds it) finds it through the real API server, reads its
container from a cgroup tree laid out as the systemd driver with containerd does, whose
counters the test advances, and sends signed datagrams to a UDP socket. The run's cumulative
CPU and memory integral come out exactly; its exit code follows in the EXITED message."""

from __future__ import annotations

import hashlib
import itertools
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from app.runtime.base import ContainerSpec
from app.runtime.kube_spec import JobOptions
from app.runtime.kube_state import parse_time
from app.runtime.kubernetes import KubernetesRuntime
from app.settings import Settings
from infra.kube import NODE_NAME, KubeCluster
from meter.agent import MeterAgent, UdpSender
from meter.batch_protocol import decode_datagram
from meter.protocol import MessageKind, MeterMessage
from meter.sources import sources

SECRET = "kube-agent-secret"
MIB = 1024 * 1024
INTERVAL_NS = 250_000_000


@pytest.fixture
async def runtime(api: client.ApiClient, namespace: str) -> AsyncIterator[KubernetesRuntime]:
    options = JobOptions(namespace=namespace, ttl_after_finished_s=600, env_inline_max_bytes=64)
    rt = KubernetesRuntime(api, options)
    yield rt
    await rt.close()


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


class Container:
    """The container's cgroup (v2, systemd driver, containerd) as the test drives it."""

    def __init__(self, root: Path, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        cid = hashlib.sha256(f"{uid}/function".encode()).hexdigest()  # what kwok reports
        (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        slice_ = f"kubepods-pod{uid.replace('-', '_')}.slice"
        self.group = root / "kubepods.slice" / slice_ / f"cri-containerd-{cid}.scope"
        self.group.mkdir(parents=True)
        (self.group / "memory.stat").write_text("anon 1\nfile 0\ninactive_file 4096\n")
        (self.group / "cgroup.procs").write_text("4242\n")

    def set(self, cpu_usec: int, memory: int) -> None:
        (self.group / "cpu.stat").write_text(f"usage_usec {cpu_usec}\nuser_usec 0\n")
        (self.group / "memory.current").write_text(f"{memory + 4096}\n")  # + inactive file

    def exit(self) -> None:
        (self.group / "cgroup.procs").write_text("")


def running_pod(core: client.CoreV1Api, namespace: str, run_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(namespace, label_selector=f"faas.run_id={run_id}").items
        if pods and pods[0].status.phase == "Running":
            pod: dict[str, Any] = core.api_client.sanitize_for_serialization(pods[0])
            return pod
        time.sleep(0.1)
    raise AssertionError("the function's pod did not run")


def drain(sock: socket.socket, run_id: str, into: list[MeterMessage]) -> None:
    """Every datagram waiting on the socket, decoded (a forged or garbled one would raise)."""
    sock.settimeout(0.2)
    try:
        while True:
            for message in decode_datagram(sock.recv(2048), SECRET.encode()):
                if message.run_id == run_id:
                    into.append(message)
    except TimeoutError:
        return


async def test_agent_meters_a_kubernetes_run_from_its_pod_cgroup(
    api: client.ApiClient, namespace: str, runtime: KubernetesRuntime, udp: socket.socket,
    kube_cluster: KubeCluster, tmp_path: Path,
) -> None:  # fmt: skip
    run = ContainerSpec(
        run_id=uuid.uuid4().hex, tenant="alice@example.com", image="localhost/faas-cpu",
        cpu=0.5, memory_mb=128, env={}, timeout_s=120,
    )  # fmt: skip
    await runtime.start(await runtime.create(run))
    core = client.CoreV1Api(api)
    pod = running_pod(core, namespace, run.run_id)
    container = Container(tmp_path, pod)
    started = parse_time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    assert started is not None
    started_ns = int(started.timestamp()) * 1_000_000_000

    settings = Settings(
        meter={
            "secret": SECRET, "node": NODE_NAME, "interval_ms": 250, "discovery": "kubernetes",
            "kubeconfig": kube_cluster.kubeconfig, "namespace": namespace,
            "cgroup_root": str(tmp_path), "port": udp.getsockname()[1],
        }  # type: ignore[arg-type]
    )  # fmt: skip
    discovery, reader = sources(settings)
    now = [started_ns + 120_000_000]  # the first reading comes 120 ms after the start
    sender = UdpSender("127.0.0.1", settings.meter.port)
    agent = MeterAgent(settings, discovery, reader, sender, lambda: now[0])
    readings: list[tuple[int, int, int]] = []  # (time ns, cpu ns, memory bytes)
    try:
        for step in range(8):  # 0.5 CPU for 2 s; memory climbing to 64 MiB, then held
            cpu_usec, memory = 125_000 * (step + 1), min(64, 16 * (step + 1)) * MIB
            container.set(cpu_usec, memory)
            await agent.discover()
            agent.tick()
            readings.append((now[0], cpu_usec * 1000, memory))
            now[0] += INTERVAL_NS
        container.exit()
        pod_name = pod["metadata"]["name"]
        annotations = {"faas.test/outcome": "failed", "faas.test/exit-code": "3"}
        core.patch_namespaced_pod(pod_name, namespace, {"metadata": {"annotations": annotations}})
        agent.tick()  # the cgroup is empty: the run's last reading goes out as FINAL
        deadline = time.monotonic() + 20
        messages: list[MeterMessage] = []
        while not any(m.kind is MessageKind.EXITED for m in messages):
            assert time.monotonic() < deadline, "no EXITED: the exit code never came"
            await agent.discover()  # the exit code arrives through the watch
            drain(udp, run.run_id, messages)
    finally:
        discovery.close()
        sender.close()

    kinds = [m.kind for m in messages]
    assert kinds[0] is MessageKind.STARTED and kinds[-1] is MessageKind.EXITED
    assert kinds.count(MessageKind.SAMPLE) == 8 + 1  # 8 readings, then the FINAL
    assert all(m.node == NODE_NAME and m.tenant == "alice@example.com" for m in messages)
    final = [m for m in messages if m.kind is MessageKind.SAMPLE][-1]
    exited = messages[-1]
    assert final.final and exited.final and exited.exit_code == 3
    # Cumulative CPU: the cgroup's own counter. Memory: the first level carried back to the
    # container's StartedAt, then trapezoids between readings, in byte·ms.
    doubled = 2 * readings[0][2] * (readings[0][0] - started_ns)
    for (t0, _, m0), (t1, _, m1) in itertools.pairwise(readings):
        doubled += (m0 + m1) * (t1 - t0)
    assert (final.cpu_ns, final.memory_bytes) == (1_000_000_000, 64 * MIB)
    assert final.memory_byte_ms == doubled // 2_000_000
    assert final.time_unix_ns == readings[-1][0]
    # In MiB·s: 16 MiB for the 0.12 s before the first reading, 24+40+56 while climbing, 4 x 64.
    mib_seconds = Fraction(final.memory_byte_ms, 1000 * MIB)
    assert mib_seconds == Fraction(16 * 12, 100) + Fraction(24 + 40 + 56 + 64 * 4, 4)
    assert (exited.cpu_ns, exited.memory_byte_ms) == (final.cpu_ns, final.memory_byte_ms)
