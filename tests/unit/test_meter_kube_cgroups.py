"""Pod containers read from node cgroup trees laid out as each kubelet cgroup driver (cgroupfs,
systemd) and runtime (containerd, CRI-O) does on cgroup v2 and v1, with the files' real
shapes; the paths here are written out, not computed by the code under test."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter.cgroups import Reading
from meter.kube_cgroups import KubeCgroupReader, PodCgroup, container_paths

UID = "0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
UID_ = UID.replace("-", "_")
CID = "3b" * 32
PAUSE = "9a" * 32  # the pod's sandbox container, beside ours in the pod's cgroup

V2_CPU_STAT = (
    "usage_usec {usec}\nuser_usec 1200000\nsystem_usec 300000\ncore_sched.force_idle_usec 0\n"
    "nr_periods 40\nnr_throttled 3\nthrottled_usec 52000\nnr_bursts 0\nburst_usec 0\n"
)
V2_MEMORY_STAT = (
    "anon 60000000\nfile 9000000\nkernel 700000\nkernel_stack 49152\npagetables 180224\n"
    "shmem 0\nactive_anon 59000000\ninactive_anon 1000000\nactive_file 5000000\n"
    "inactive_file {inactive}\nunevictable 0\npgfault 21093\npgmajfault 0\n"
)
V1_MEMORY_STAT = (
    "cache 9000000\nrss 60000000\nmapped_file 0\ninactive_file 17\nactive_file 4\n"
    "hierarchical_memory_limit 100663296\ntotal_cache 9000000\ntotal_rss 60000000\n"
    "total_inactive_anon 0\ntotal_active_anon 60000000\ntotal_inactive_file {inactive}\n"
    "total_active_file 5000000\ntotal_unevictable 0\n"
)


def v2_container(
    group: Path, *, usec: int, current: int, inactive: int, procs: str = "1\n"
) -> None:
    group.mkdir(parents=True)
    (group / "cpu.stat").write_text(V2_CPU_STAT.format(usec=usec))
    (group / "memory.current").write_text(f"{current}\n")
    (group / "memory.stat").write_text(V2_MEMORY_STAT.format(inactive=inactive))
    (group / "cgroup.procs").write_text(procs)


def v1_container(root: Path, relative: str, *, ns: int, usage: int, inactive: int) -> None:
    """v1 as mounted on most nodes: ``cpuacct`` is a link to the joint ``cpu,cpuacct``."""
    cpuacct, memory = root / "cpu,cpuacct" / relative, root / "memory" / relative
    cpuacct.mkdir(parents=True)
    memory.mkdir(parents=True)
    (root / "cpuacct").symlink_to("cpu,cpuacct")
    (cpuacct / "cpuacct.usage").write_text(f"{ns}\n")
    (cpuacct / "cgroup.procs").write_text("7\n")
    (memory / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (memory / "memory.stat").write_text(V1_MEMORY_STAT.format(inactive=inactive))
    (memory / "cgroup.procs").write_text("7\n")


def v2_root(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    return root


def reader_for(root: Path, qos: str) -> KubeCgroupReader:
    pods = {CID: PodCgroup(UID, qos), PAUSE: None}
    return KubeCgroupReader(root, lambda cid: pods.get(cid))


V2_LAYOUTS = [
    ("Guaranteed", f"kubepods/pod{UID}/{CID}"),  # cgroupfs
    ("Burstable", f"kubepods/burstable/pod{UID}/{CID}"),
    ("BestEffort", f"kubepods/besteffort/pod{UID}/{CID}"),
    ("Guaranteed", f"kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
    (
        "Burstable",
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
    ),
    (
        "BestEffort",
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-{CID}.scope",
    ),
]


@pytest.mark.parametrize(("qos", "relative"), V2_LAYOUTS)
def test_v2_reads_the_pods_container_under_each_driver(
    tmp_path: Path, qos: str, relative: str
) -> None:
    root = v2_root(tmp_path / "cgroup")
    v2_container(root / relative, usec=1_500_000, current=69_000_000, inactive=4_000_000)
    sandbox = (root / relative).parent / Path(relative).name.replace(CID, PAUSE)
    v2_container(sandbox, usec=9, current=9, inactive=0)  # the pause container: not ours
    reader = reader_for(root, qos)
    assert reader.v2 and reader.present() is None
    assert reader.read(CID) == Reading(cpu_ns=1_500_000_000, memory_bytes=65_000_000)
    assert reader.read(PAUSE) is None  # no pod of ours says it is its container


@pytest.mark.parametrize(
    ("qos", "relative"),
    [
        ("Burstable", f"kubepods/burstable/pod{UID}/{CID}"),
        ("Guaranteed", f"kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
    ],
)
def test_v1_reads_cpuacct_and_memory_of_the_pods_container(
    tmp_path: Path, qos: str, relative: str
) -> None:
    v1_container(tmp_path, relative, ns=2_750_000_001, usage=70_000_000, inactive=6_000_000)
    reader = reader_for(tmp_path, qos)
    assert not reader.v2
    assert reader.read(CID) == Reading(cpu_ns=2_750_000_001, memory_bytes=64_000_000)


def test_counters_are_followed_and_an_exit_reads_none(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    group = root / f"kubepods/pod{UID}/{CID}"
    v2_container(group, usec=10, current=1000, inactive=0)
    reader = reader_for(root, "Guaranteed")
    assert reader.read(CID) == Reading(10_000, 1000)
    (group / "cpu.stat").write_text(V2_CPU_STAT.format(usec=250_000))
    (group / "memory.current").write_text("5000\n")
    assert reader.read(CID) == Reading(250_000_000, 5000)
    (group / "cgroup.procs").write_text("")  # the container exited; the kubelet removes it soon
    assert reader.read(CID) is None


def test_the_qos_class_decides_where_to_look(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    v2_container(root / f"kubepods/besteffort/pod{UID}/{CID}", usec=1, current=1, inactive=0)
    assert reader_for(root, "Burstable").read(CID) is None
    assert reader_for(root, "BestEffort").read(CID) == Reading(1000, 1)


def test_unknown_pod_or_missing_cgroup_is_none(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    assert KubeCgroupReader(root, lambda cid: None).read(CID) is None
    assert reader_for(root, "Guaranteed").read(CID) is None  # pod known, cgroup not yet


def test_paths_cover_both_drivers_and_every_runtime() -> None:
    paths = container_paths(PodCgroup(UID, "Burstable"), CID)
    assert paths == [
        f"kubepods/burstable/pod{UID}/{CID}",
        *(
            f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"{runtime}-{CID}.scope"
            for runtime in ("cri-containerd", "crio", "docker")
        ),
    ]


def test_constructor_rejects_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        KubeCgroupReader(tmp_path, None)  # type: ignore[arg-type]
