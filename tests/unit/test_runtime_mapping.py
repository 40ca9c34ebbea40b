from datetime import UTC, datetime

import pytest

from app.control.finisher import outcome_of_exit
from app.runtime import ContainerState
from app.runtime.podman import parse_docker_time, state_from_attrs
from app.schemas import RunStatus, StopReason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-28T17:48:31.097890123Z", datetime(2026, 11, 28, 17, 48, 31, 97890, tzinfo=UTC)),
        ("2026-11-28T17:48:31.5+01:00", datetime(2026, 11, 28, 16, 48, 31, 500000, tzinfo=UTC)),
        ("2026-11-28T17:48:31Z", datetime(2026, 11, 28, 17, 48, 31, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_docker_time(raw: str | None, expected: datetime | None) -> None:
    assert parse_docker_time(raw) == expected


def test_state_from_inspect_attrs() -> None:
    attrs = {
        "Id": "abc",
        "Config": {"Labels": {"faas.run_id": "r1"}},
        "State": {
            "Running": False,
            "ExitCode": 3,
            "StartedAt": "2026-11-28T10:00:00.1Z",
            "FinishedAt": "2026-11-28T10:00:05.2Z",
            "OOMKilled": False,
            "Error": "",
        },
    }
    state = state_from_attrs(attrs)
    assert state.run_id == "r1" and state.exit_code == 3 and not state.running
    assert state.finished_at is not None and state.started_at is not None
    assert (state.finished_at - state.started_at).total_seconds() == pytest.approx(5.1)
    assert state.error is None


@pytest.mark.parametrize(
    ("state", "status", "reason"),
    [
        (ContainerState("r", "c", False, exit_code=0), RunStatus.SUCCEEDED, StopReason.EXITED),
        (ContainerState("r", "c", False, exit_code=3), RunStatus.FAILED, StopReason.EXITED),
        (
            ContainerState("r", "c", False, exit_code=137, oom_killed=True),
            RunStatus.FAILED,
            StopReason.FAILED,
        ),
        (
            ContainerState("r", "c", False, exit_code=127, error="exec failed"),
            RunStatus.FAILED,
            StopReason.FAILED,
        ),
    ],
)
def test_outcome_of_exit(state: ContainerState, status: RunStatus, reason: StopReason) -> None:
    got_status, got_reason, message = outcome_of_exit(state, memory_mb=64)
    assert (got_status, got_reason) == (status, reason)
    if state.oom_killed:
        assert message is not None and "out of memory" in message and "64 MiB" in message
