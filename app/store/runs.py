"""Run repository: every state change and its events commit in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.schemas import RunStatus, RunView, StopReason
from app.store.models import OutboxRow, RunRow

# Accepted and not running yet: the starter's, until the container runs.
STARTING = (RunStatus.PENDING, RunStatus.DEPLOYED)
ACTIVE = (*STARTING, RunStatus.RUNNING)


class RunRecord(RunView):
    """A run with the fields only the control plane needs."""

    container_id: str | None
    deadline_at: datetime | None


@dataclass(frozen=True)
class OutgoingEvent:
    topic: str
    key: str
    payload: str


@dataclass(frozen=True)
class Finish:
    status: RunStatus
    reason: StopReason
    exit_code: int | None
    finished_at: datetime
    logs: str | None
    message: str | None = None


def _record(row: RunRow) -> RunRecord:
    return RunRecord.model_validate(row, from_attributes=True)


class RunRepository:
    def __init__(self, engine: Engine) -> None:
        if engine is None:
            raise ValueError("engine is required")
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def add_pending(self, row: RunRow) -> RunRecord:
        with self._sessions.begin() as session:
            session.add(row)
            session.flush()
            return _record(row)

    def mark_deployed(
        self, run_id: str, container_id: str, at: datetime, event: OutgoingEvent
    ) -> bool:
        """The accepted run's container exists; False if the run was stopped meanwhile."""
        values = {"status": RunStatus.DEPLOYED.value, "container_id": container_id}
        return self._move(run_id, (RunStatus.PENDING,), values, [event], at)

    def mark_running(
        self,
        run_id: str,
        container_id: str,
        started_at: datetime,
        deadline_at: datetime,
        events: Sequence[OutgoingEvent],
    ) -> bool:
        """The container runs; False if the run was stopped or given up meanwhile."""
        values = {
            "status": RunStatus.RUNNING.value,
            "container_id": container_id,
            "started_at": started_at,
            "deadline_at": deadline_at,
            "env": None,
        }
        return self._move(run_id, STARTING, values, events, started_at)

    def finish(
        self,
        run_id: str,
        finish: Finish,
        event: OutgoingEvent,
        *,
        only_from: Sequence[RunStatus] = ACTIVE,
    ) -> bool:
        """Move a run in one of ``only_from`` to its final state; False when another caller
        got there first (or the run has moved on)."""
        values = {
            "status": finish.status.value,
            "reason": finish.reason.value,
            "exit_code": finish.exit_code,
            "finished_at": finish.finished_at,
            "logs": finish.logs,
            "message": finish.message,
            "env": None,
        }
        return self._move(run_id, only_from, values, [event], finish.finished_at)

    def _move(
        self,
        run_id: str,
        only_from: Sequence[RunStatus],
        values: dict[str, Any],
        events: Sequence[OutgoingEvent],
        at: datetime,
    ) -> bool:
        """A state change and its events in one transaction, if the run is still in one of
        ``only_from`` (the check and the change are one UPDATE: no lost race)."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.status.in_([s.value for s in only_from]))
                .values(**values)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            _add_events(session, events, at)
            return True

    def get(self, run_id: str) -> RunRecord | None:
        with self._sessions() as session:
            row = session.get(RunRow, run_id)
            return None if row is None else _record(row)

    def logs(self, run_id: str) -> str | None:
        with self._sessions() as session:
            return session.scalar(select(RunRow.logs).where(RunRow.id == run_id))

    def by_email(self, email: str, limit: int, offset: int) -> list[RunRecord]:
        query = (
            select(RunRow)
            .where(RunRow.email == email)
            .order_by(RunRow.created_at.desc(), RunRow.id)
            .limit(limit)
            .offset(offset)
        )
        with self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def env_of(self, run_id: str) -> dict[str, str]:
        with self._sessions() as session:
            return session.scalar(select(RunRow.env).where(RunRow.id == run_id)) or {}

    def active(self) -> list[RunRecord]:
        with self._sessions() as session:
            rows = session.scalars(select(RunRow).where(RunRow.status.in_(ACTIVE)))
            return [_record(row) for row in rows]

    def starting(self, limit: int) -> list[RunRecord]:
        """Accepted runs not running yet, oldest first: the starter's queue."""
        query = (
            select(RunRow)
            .where(RunRow.status.in_(STARTING))
            .order_by(RunRow.created_at, RunRow.id)
            .limit(limit)
        )
        with self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def finished_ids(self, run_ids: Sequence[str]) -> set[str]:
        if not run_ids:
            return set()
        query = select(RunRow.id).where(RunRow.id.in_(run_ids), RunRow.status.not_in(ACTIVE))
        with self._sessions() as session:
            return set(session.scalars(query))

    def known_ids(self, run_ids: Sequence[str]) -> set[str]:
        if not run_ids:
            return set()
        with self._sessions() as session:
            return set(session.scalars(select(RunRow.id).where(RunRow.id.in_(run_ids))))

    # -- outbox -------------------------------------------------------------------------------

    def unpublished(self, limit: int) -> list[tuple[int, OutgoingEvent]]:
        query = (
            select(OutboxRow).where(OutboxRow.published_at.is_(None)).order_by(OutboxRow.id)
        ).limit(limit)
        with self._sessions() as session:
            return [
                (row.id, OutgoingEvent(row.topic, row.key, row.payload))
                for row in session.scalars(query)
            ]

    def mark_published(self, ids: Sequence[int], at: datetime) -> None:
        with self._sessions.begin() as session:
            session.execute(update(OutboxRow).where(OutboxRow.id.in_(ids)).values(published_at=at))


def _add_events(session: Session, events: Sequence[OutgoingEvent], at: datetime) -> None:
    for event in events:
        session.add(
            OutboxRow(topic=event.topic, key=event.key, payload=event.payload, created_at=at)
        )
