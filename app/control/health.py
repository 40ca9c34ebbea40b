"""What the control plane knows of the runtime's reachability, as the reconciler saw it."""

from __future__ import annotations

from datetime import datetime


def runtime_lost(unreachable_since: datetime | None, now: datetime, after_s: float) -> bool:
    """Whether the runtime has been unreachable long enough to give its runs up."""
    return unreachable_since is not None and (now - unreachable_since).total_seconds() >= after_s


class RuntimeHealth:
    def __init__(self, lost_after_s: float) -> None:
        self.lost_after_s = lost_after_s
        self.unreachable_since: datetime | None = None

    def reachable(self) -> None:
        self.unreachable_since = None

    def unreachable(self, now: datetime) -> None:
        self.unreachable_since = self.unreachable_since or now

    def lost(self, now: datetime) -> bool:
        return runtime_lost(self.unreachable_since, now, self.lost_after_s)
