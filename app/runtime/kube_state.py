"""ContainerState of a run from its Job and the Job's pod (raw API dicts, camelCase)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.runtime.base import RUN_ID_LABEL, ContainerState
from app.runtime.kube_spec import CONTAINER_NAME

Obj = dict[str, Any]
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# FailureTarget/SuccessCriteriaMet come first (1.31+): the Job is decided, pods are ending.
_FAILED = ("Failed", "FailureTarget")
_SUCCEEDED = ("Complete", "SuccessCriteriaMet")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _true_conditions(job: Obj) -> dict[str, Obj]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return {c["type"]: c for c in conditions if c.get("status") == "True"}


def _container_state(pod: Obj | None) -> Obj:
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER_NAME:
            return dict(status.get("state") or {})
    return {}


def latest_pod(pods: list[Obj]) -> Obj | None:
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""), default=None)


def state_of(job: Obj, pod: Obj | None) -> ContainerState:
    meta = job["metadata"]
    run_id = (meta.get("annotations") or {}).get(RUN_ID_LABEL) or meta["labels"][RUN_ID_LABEL]
    conditions = _true_conditions(job)
    container = _container_state(pod)
    running_state = container.get("running") or {}
    terminated = container.get("terminated") or {}
    started_at = parse_time(
        running_state.get("startedAt")
        or terminated.get("startedAt")
        or (job.get("status") or {}).get("startTime")
    )
    failed = next((conditions[t] for t in _FAILED if t in conditions), None)
    succeeded = next((conditions[t] for t in _SUCCEEDED if t in conditions), None)
    decided = failed or succeeded
    if decided is None:
        return ContainerState(run_id, meta["name"], running=True, started_at=started_at)
    exit_code = terminated.get("exitCode")
    if exit_code is None and succeeded is not None:
        exit_code = 0
    finished_at = parse_time(terminated.get("finishedAt") or decided.get("lastTransitionTime"))
    deadline = failed is not None and failed.get("reason") == "DeadlineExceeded"
    error = None
    if failed is not None and exit_code is None and not deadline:
        error = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip(": ")
    return ContainerState(
        run_id,
        meta["name"],
        running=False,
        exit_code=exit_code,
        started_at=started_at,
        finished_at=finished_at,
        oom_killed=terminated.get("reason") == "OOMKilled",
        error=error,
        deadline_exceeded=deadline,
    )
