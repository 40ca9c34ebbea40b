"""Reads a container's CPU time and memory straight from its cgroup (cheap and exact).

Memory is usage minus the inactive file cache, as ``docker stats`` reports it. A cgroup
whose processes have all exited is reported as gone: podman leaves it behind for a
moment with the memory already freed (~0 bytes), and billing that level would cut the
end of the run's memory integral.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Reading:
    cpu_ns: int
    """CPU time used by the container so far (the cgroup's cumulative counter)."""
    memory_bytes: int
    """Memory in use now: usage minus inactive file cache, floored at 0."""


class Reader(Protocol):
    """Where the agent gets readings from (cgroups here; a fake in unit tests)."""

    def read(self, container_id: str) -> Reading | None:
        """The container's counters now, or None once it has exited."""
        ...

    def present(self) -> set[str] | None:
        """Ids of the containers that have a cgroup now (running, or just exited), or None
        when this reader cannot list them. A directory listing: it never waits on the
        runtime, which under load can take seconds to list its containers."""
        ...


_V1_GROUP = re.compile(r"libpod-([0-9a-f]{64})")
_V2_SCOPE = re.compile(r"libpod-([0-9a-f]{64})\.scope")  # not libpod-conmon-<id>.scope


def _ids(directory: Path, pattern: re.Pattern[str]) -> set[str]:
    try:
        with os.scandir(directory) as entries:
            return {m.group(1) for e in entries if (m := pattern.fullmatch(e.name)) and e.is_dir()}
    except FileNotFoundError:  # no container has run under this parent yet
        return set()


def _stat(path: Path) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[name] = int(value)
    return values


def _populated(group: Path) -> bool:
    # Read last: non-empty here means the counters above were read while it ran.
    return bool((group / "cgroup.procs").read_text().strip())


def read_v1(cpuacct: Path, memory: Path) -> Reading | None:
    """A cgroup v1 container's counters from its ``cpuacct`` and ``memory`` directories;
    None when they are gone, empty (the container exited) or unreadable."""
    try:
        cpu_ns = int((cpuacct / "cpuacct.usage").read_text())
        usage = int((memory / "memory.usage_in_bytes").read_text())
        inactive = _stat(memory / "memory.stat").get("total_inactive_file", 0)
        if not _populated(memory):
            return None
    except (OSError, ValueError):  # files vanish when the container exits
        return None
    return Reading(cpu_ns, max(0, usage - inactive))


def read_v2(group: Path) -> Reading | None:
    """A cgroup v2 (unified) container's counters from its directory; None as ``read_v1``."""
    try:
        cpu_ns = _stat(group / "cpu.stat")["usage_usec"] * 1000
        usage = int((group / "memory.current").read_text())
        inactive = _stat(group / "memory.stat").get("inactive_file", 0)
        if not _populated(group):
            return None
    except (OSError, ValueError, KeyError):
        return None
    return Reading(cpu_ns, max(0, usage - inactive))


class CgroupReader:
    """cgroup v1 (podman: ``<root>/{cpuacct,memory}/<parent>/libpod-<id>``) or v2
    (unified: ``<root>/<parent>/libpod-<id>`` or ``<root>/machine.slice/libpod-<id>.scope``).
    The layout is detected once, from ``<root>/cgroup.controllers`` (v2 only)."""

    def __init__(self, root: Path | str = "/sys/fs/cgroup", parent: str = "libpod_parent") -> None:
        if root is None or parent is None:
            raise ValueError("root and parent are required")
        self._root = Path(root)
        self._parent = parent
        self.v2 = (self._root / "cgroup.controllers").exists()

    def read(self, container_id: str) -> Reading | None:
        """None when the cgroup is gone, empty (the container exited) or unreadable."""
        if not self.v2:
            name = f"libpod-{container_id}"
            return read_v1(
                self._root / "cpuacct" / self._parent / name,
                self._root / "memory" / self._parent / name,
            )
        candidates = (
            self._root / self._parent / f"libpod-{container_id}",
            self._root / "machine.slice" / f"libpod-{container_id}.scope",
        )
        group = next((path for path in candidates if path.is_dir()), None)
        return None if group is None else read_v2(group)

    def present(self) -> set[str] | None:
        """Container ids with a cgroup under the parent (and, on v2, ``machine.slice``)."""
        try:
            if not self.v2:
                return _ids(self._root / "memory" / self._parent, _V1_GROUP)
            return _ids(self._root / self._parent, _V1_GROUP) | _ids(
                self._root / "machine.slice", _V2_SCOPE
            )
        except OSError:
            return None
