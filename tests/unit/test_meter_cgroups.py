"""cgroup v1 and v2 readings from fake cgroup trees; vanished or empty cgroups read as None."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meter.cgroups import CgroupReader, Reading

CID = "ab" * 32


def v1_tree(root: Path, *, usage: int, inactive: int, cpu: int, procs: str = "123\n") -> None:
    memory = root / "memory" / "libpod_parent" / f"libpod-{CID}"
    cpuacct = root / "cpuacct" / "libpod_parent" / f"libpod-{CID}"
    memory.mkdir(parents=True)
    cpuacct.mkdir(parents=True)
    (memory / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (memory / "memory.stat").write_text(
        f"cache 4096\nrss 1000\ninactive_file 1\ntotal_rss 1000\ntotal_inactive_file {inactive}\n"
    )
    (memory / "cgroup.procs").write_text(procs)
    (cpuacct / "cpuacct.usage").write_text(f"{cpu}\n")


def v2_tree(group: Path, *, usage: int, inactive: int, usage_usec: int, procs: str = "9\n") -> None:
    group.mkdir(parents=True)
    (group / "cpu.stat").write_text(f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n")
    (group / "memory.current").write_text(f"{usage}\n")
    (group / "memory.stat").write_text(f"anon 5\nfile 6\ninactive_file {inactive}\n")
    (group / "cgroup.procs").write_text(procs)


def test_v1_memory_is_usage_minus_inactive_file(tmp_path: Path) -> None:
    v1_tree(tmp_path, usage=70_000_000, inactive=3_000_000, cpu=123_456_789)
    reader = CgroupReader(tmp_path)
    assert not reader.v2
    assert reader.read(CID) == Reading(cpu_ns=123_456_789, memory_bytes=67_000_000)


def test_v1_memory_floors_at_zero(tmp_path: Path) -> None:
    v1_tree(tmp_path, usage=1000, inactive=5000, cpu=1)
    assert CgroupReader(tmp_path).read(CID) == Reading(1, 0)


def test_v1_gone_or_empty_cgroup_is_none(tmp_path: Path) -> None:
    reader = CgroupReader(tmp_path)
    assert reader.read(CID) is None  # never existed
    v1_tree(tmp_path, usage=1000, inactive=0, cpu=1, procs="")
    assert reader.read(CID) is None  # exited: podman has not removed the cgroup yet


def test_v1_files_vanishing_mid_read_is_none(tmp_path: Path) -> None:
    v1_tree(tmp_path, usage=1000, inactive=0, cpu=1)
    (tmp_path / "memory" / "libpod_parent" / f"libpod-{CID}" / "memory.stat").unlink()
    assert CgroupReader(tmp_path).read(CID) is None
    shutil.rmtree(tmp_path / "memory")
    assert CgroupReader(tmp_path).read(CID) is None


def test_v1_garbage_is_none(tmp_path: Path) -> None:
    v1_tree(tmp_path, usage=1000, inactive=0, cpu=1)
    (tmp_path / "cpuacct" / "libpod_parent" / f"libpod-{CID}" / "cpuacct.usage").write_text("")
    assert CgroupReader(tmp_path).read(CID) is None


@pytest.mark.parametrize(
    "relative", ["libpod_parent/libpod-{id}", "machine.slice/libpod-{id}.scope"]
)
def test_v2_reads_cpu_stat_and_memory_current(tmp_path: Path, relative: str) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    v2_tree(tmp_path / relative.format(id=CID), usage=9_000, inactive=1_000, usage_usec=2_500)
    reader = CgroupReader(tmp_path)
    assert reader.v2
    assert reader.read(CID) == Reading(cpu_ns=2_500_000, memory_bytes=8_000)


def test_v2_gone_or_empty_is_none(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    reader = CgroupReader(tmp_path)
    assert reader.read(CID) is None
    v2_tree(
        tmp_path / "libpod_parent" / f"libpod-{CID}", usage=1, inactive=0, usage_usec=1, procs=""
    )
    assert reader.read(CID) is None


def test_present_lists_container_cgroups_only(tmp_path: Path) -> None:
    reader = CgroupReader(tmp_path)
    assert reader.present() == set()  # no container has run yet: no parent directory
    v1_tree(tmp_path, usage=1, inactive=0, cpu=1)
    parent = tmp_path / "memory" / "libpod_parent"
    (parent / "conmon").mkdir()
    (parent / "libpod-short").mkdir()
    (parent / f"libpod-{'cd' * 32}").write_text("")  # a file, not a cgroup
    assert reader.present() == {CID}


def test_v2_present_covers_both_layouts_but_not_conmon_scopes(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    other = "ef" * 32
    (tmp_path / "libpod_parent" / f"libpod-{CID}").mkdir(parents=True)
    (tmp_path / "machine.slice" / f"libpod-{other}.scope").mkdir(parents=True)
    (tmp_path / "machine.slice" / f"libpod-conmon-{other}.scope").mkdir()
    assert CgroupReader(tmp_path).present() == {CID, other}


def test_constructor_rejects_none() -> None:
    with pytest.raises(ValueError):
        CgroupReader(None)  # type: ignore[arg-type]
