"""The isolation policy and how a killed function is reported (pure logic)."""

from __future__ import annotations

import pytest

from app.control.finisher import outcome_of_exit
from app.runtime import ContainerState
from app.runtime.isolation import Isolation
from app.schemas import RunStatus, StopReason
from app.settings import RuntimeSettings

pytestmark = pytest.mark.hostile


@pytest.mark.parametrize("image_user", [None, "", "root", "0", "0:0", " root:root "])
def test_root_or_unset_image_user_runs_as_the_fallback(image_user: str | None) -> None:
    assert Isolation().user_for(image_user) == "65534:65534"
    assert Isolation(fallback_user="").user_for(image_user) is None  # operator opted out


def test_an_image_that_names_a_non_root_user_keeps_it() -> None:
    assert Isolation().user_for("app") == "app"
    assert Isolation().user_for("1000:1000") == "1000:1000"


def test_docker_options_drop_everything_and_follow_settings() -> None:
    settings = RuntimeSettings(read_only_root=False, tmpfs_mb=8, pids_limit=32, run_as_user="")
    options = Isolation.from_settings(settings).docker_options(None)
    assert options["cap_drop"] == ["ALL"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["pids_limit"] == 32 and options["read_only"] is False
    assert "size=8m" in options["tmpfs"]["/tmp"]
    assert "user" not in options
    assert Isolation().docker_options("0")["user"] == "65534:65534"


def test_sigkill_without_oom_flag_is_reported_as_out_of_memory() -> None:
    state = ContainerState(run_id="r", container_id="c", running=False, exit_code=137)
    status, reason, message = outcome_of_exit(state, 48)
    assert (status, reason) == (RunStatus.FAILED, StopReason.FAILED)
    assert message is not None and "out of memory (limit 48 MiB)" in message
    flagged = ContainerState(run_id="r", container_id="c", running=False, oom_killed=True)
    assert outcome_of_exit(flagged, 48)[2] == "killed: out of memory (limit 48 MiB)"
