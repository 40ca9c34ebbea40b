"""How tightly a function's container is confined (the same policy for every runtime)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.settings import RuntimeSettings

_ROOT_USERS = {"", "root", "0", "0:0", "root:root", "root:0", "0:root"}
SIGKILL_EXIT = 137  # 128 + SIGKILL


@dataclass(frozen=True)
class Isolation:
    """Every container: no capabilities, no privilege gain, limited pids; a read-only root
    with a small tmpfs /tmp; a non-root user unless the image names one of its own."""

    fallback_user: str = "65534:65534"  # nobody; "" keeps whatever the image says
    read_only_root: bool = True
    tmpfs_mb: int = 64
    pids_limit: int = 256

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> Isolation:
        return cls(
            fallback_user=settings.run_as_user,
            read_only_root=settings.read_only_root,
            tmpfs_mb=settings.tmpfs_mb,
            pids_limit=settings.pids_limit,
        )

    def user_for(self, image_user: str | None) -> str | None:
        """The image's own user when it is not root, otherwise the fallback (None: image's)."""
        if (image_user or "").strip() not in _ROOT_USERS:
            return image_user
        return self.fallback_user or None

    def docker_options(self, image_user: str | None) -> dict[str, Any]:
        """Keyword arguments for the Docker SDK's ``containers.create``."""
        options: dict[str, Any] = {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.pids_limit,
            "read_only": self.read_only_root,
            # tmpfs pages are charged to the container's memory cgroup, so the size cap is
            # only a guard against filling /tmp; the memory limit still holds.
            "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={self.tmpfs_mb}m,mode=1777"},  # noqa: S108 (inside the container)
        }
        user = self.user_for(image_user)
        if user is not None:
            options["user"] = user
        return options
