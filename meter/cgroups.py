"""Reads a container's CPU time and memory straight from its cgroup (cheap and exact)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Reading:
    cpu_ns: int
    memory_bytes: int


def _stat(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[name] = int(value)
    return values


class CgroupReader:
    """cgroup v1 (podman: ``<root>/{cpuacct,memory}/libpod_parent/libpod-<id>``) or v2
    (unified: ``<root>/libpod_parent/libpod-<id>`` or a systemd scope). Memory is usage
    minus inactive file cache, as ``docker stats`` reports it."""

    def __init__(self, root: Path | str = "/sys/fs/cgroup", parent: str = "libpod_parent") -> None:
        self._root = Path(root)
        self._parent = parent
        self._v2 = (self._root / "cgroup.controllers").exists()

    def read(self, container_id: str) -> Reading | None:
        """None when the cgroup is gone (the container exited) or unreadable."""
        try:
            return self._read_v2(container_id) if self._v2 else self._read_v1(container_id)
        except (OSError, ValueError, KeyError):
            return None

    def _read_v1(self, container_id: str) -> Reading:
        name = f"libpod-{container_id}"
        cpu = self._root / "cpuacct" / self._parent / name / "cpuacct.usage"
        memory = self._root / "memory" / self._parent / name
        usage = int((memory / "memory.usage_in_bytes").read_text())
        inactive = _stat(memory / "memory.stat").get("total_inactive_file", 0)
        return Reading(int(cpu.read_text()), max(0, usage - inactive))

    def _read_v2(self, container_id: str) -> Reading:
        candidates = [
            self._root / self._parent / f"libpod-{container_id}",
            self._root / "machine.slice" / f"libpod-{container_id}.scope",
        ]
        group = next(path for path in candidates if path.exists())
        cpu_us = _stat(group / "cpu.stat")["usage_usec"]
        usage = int((group / "memory.current").read_text())
        inactive = _stat(group / "memory.stat").get("inactive_file", 0)
        return Reading(cpu_us * 1000, max(0, usage - inactive))
