"""How long the platform rides out an outage before it gives up: the runtime (runs end
``failed``) and the SMTP relay (emails dead-lettered)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.control.health import runtime_lost
from app.settings import Settings

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("since", "lost"),
    [(None, False), (NOW, False), (NOW - timedelta(seconds=29.9), False),
     (NOW - timedelta(seconds=30), True), (NOW - timedelta(hours=1), True)],
)  # fmt: skip
def test_the_runtime_is_lost_after_being_unreachable_long_enough(
    since: datetime | None, lost: bool
) -> None:
    assert runtime_lost(since, NOW, 30.0) is lost


def test_outage_limits_default_and_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = Settings()
    assert defaults.runtime.lost_after_s == 30 and defaults.smtp.max_attempts == 12
    monkeypatch.setenv("FAAS_RUNTIME_LOST_AFTER_S", "5")
    monkeypatch.setenv("FAAS_SMTP_MAX_ATTEMPTS", "3")
    configured = Settings()
    assert configured.runtime.lost_after_s == 5 and configured.smtp.max_attempts == 3
