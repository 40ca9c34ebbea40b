"""The Job of a run, built as a pure function, and the run state read back from Job + pod."""

from __future__ import annotations

from app.runtime.base import ContainerSpec
from app.runtime.kube_spec import JobOptions, build_job, job_name, label_value, secret_name
from app.runtime.kube_state import state_of

OPTIONS = JobOptions(namespace="fns", ttl_after_finished_s=120, env_inline_max_bytes=16)
SPEC = ContainerSpec(
    run_id="ABC123", tenant="a@example.com", image="localhost/faas-cpu", cpu=0.5,
    memory_mb=128, env={"SMALL": "x", "BIG": "y" * 17}, command=["sh", "-c", "true"],
    owner="/root/.faas", timeout_s=30,
)  # fmt: skip


def test_job_has_the_exact_run_spec() -> None:
    job, secret = build_job(SPEC, OPTIONS)
    assert job["metadata"]["name"] == "faas-abc123" == job_name("ABC123")
    assert job["metadata"]["namespace"] == "fns"
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 30)
    assert spec["ttlSecondsAfterFinished"] == 120
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65534
    (container,) = pod["containers"]
    assert container["args"] == ["sh", "-c", "true"]
    limits = {"cpu": "500m", "memory": "128Mi"}
    assert container["resources"] == {"requests": limits, "limits": limits}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["env"][0] == {"name": "SMALL", "value": "x"}
    ref = container["env"][1]["valueFrom"]["secretKeyRef"]
    assert container["env"][1]["name"] == "BIG"
    assert ref["name"] == secret_name("ABC123")
    assert secret == {ref["key"]: "y" * 17}


def test_labels_are_valid_and_annotations_keep_the_exact_tenant() -> None:
    job, _ = build_job(SPEC, OPTIONS)
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["faas.run_id"] == "ABC123"
    assert "@" not in labels["faas.tenant"] and labels["faas.tenant"].startswith("a_example.com-")
    assert job["metadata"]["annotations"]["faas.tenant"] == "a@example.com"
    assert label_value("a@example.com") != label_value("a_example.com")
    long = label_value("x" * 200 + "@y")
    assert len(long) <= 63 and long[0].isalnum() and long[-1].isalnum()


def test_no_timeout_no_deadline_no_secret() -> None:
    spec = ContainerSpec(run_id="r1", tenant="t", image="i", cpu=1, memory_mb=64)
    job, secret = build_job(spec, OPTIONS)
    assert "activeDeadlineSeconds" not in job["spec"] and secret == {}
    assert "args" not in job["spec"]["template"]["spec"]["containers"][0]


def _job(*conditions: dict[str, str]) -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": "faas-r1", "labels": {"faas.run_id": "r1"},
                     "annotations": {"faas.run_id": "r1"}},
        "status": {"startTime": "2026-01-01T00:00:00Z",
                   "conditions": [{"status": "True", **c} for c in conditions]},
    }  # fmt: skip


def _pod(state: dict) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"containerStatuses": [{"name": "function", "state": state}]}}  # fmt: skip


def test_state_running_then_exit_codes_and_deadline() -> None:
    running = state_of(_job(), _pod({"running": {"startedAt": "2026-01-01T00:00:01Z"}}))
    assert running.running and running.started_at is not None and running.exit_code is None
    failed = state_of(
        _job({"type": "Failed", "reason": "BackoffLimitExceeded"}),
        _pod({"terminated": {"exitCode": 3, "finishedAt": "2026-01-01T00:00:05Z"}}),
    )
    assert (failed.running, failed.exit_code, failed.error) == (False, 3, None)
    assert failed.finished_at is not None and failed.finished_at.second == 5
    done = state_of(_job({"type": "Complete", "lastTransitionTime": "2026-01-01T00:00:09Z"}), None)
    assert (done.running, done.exit_code) == (False, 0)
    late = state_of(_job({"type": "Failed", "reason": "DeadlineExceeded"}), None)
    assert late.deadline_exceeded and not late.running and late.error is None
    oom = state_of(
        _job({"type": "Failed"}), _pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    )
    assert oom.oom_killed


def test_deadline_exceeded_is_reported_as_timed_out() -> None:
    from app.control.finisher import outcome_of_exit
    from app.schemas import RunStatus, StopReason

    late = state_of(_job({"type": "Failed", "reason": "DeadlineExceeded"}), None)
    assert outcome_of_exit(late, 64) == (RunStatus.TIMED_OUT, StopReason.TIMEOUT, None)
