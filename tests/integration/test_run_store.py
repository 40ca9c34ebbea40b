"""Migrations and the run repository on real SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app.schemas import RunStatus, StopReason
from app.store.db import MIGRATIONS, make_engine, migrate
from app.store.models import RunRow
from app.store.runs import STARTING, Finish, OutgoingEvent, RunRepository


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'faas.db'}"
    return str(request.getfixturevalue("postgres_url"))


def new_run(run_id: str, email: str = "a@b.c") -> RunRow:
    return RunRow(
        id=run_id, email=email, image_name="localhost/faas-echo", command=None, cpu=1.0,
        memory_mb=64, timeout_s=10, tariff=None, status=RunStatus.PENDING.value,
        created_at=datetime.now(UTC),
    )  # fmt: skip


def test_migrations_from_empty_are_repeatable(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    migrate(engine)  # a second replica starting finds nothing to do
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "event_outbox", "tariffs", "locks", "alembic_version"} <= tables
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == head
    # Down to empty and up again: every migration is reversible.
    migrate_to = "base"
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, migrate_to)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(engine)
    assert "tariffs" in set(inspect(engine).get_table_names())


def test_state_change_and_its_events_commit_together(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    runs = RunRepository(engine)
    runs.add_pending(new_run("r1"))
    started = datetime.now(UTC)
    events = [
        OutgoingEvent("t", "r1", '{"type":"deployed"}'),
        OutgoingEvent("t", "r1", '{"type":"started"}'),
    ]
    runs.mark_running("r1", "c1", started, started + timedelta(seconds=10), events)
    record = runs.get("r1")
    assert record is not None and record.status == RunStatus.RUNNING
    assert record.started_at == started and record.started_at.tzinfo is not None

    finish = Finish(RunStatus.FAILED, StopReason.EXITED, 3, started + timedelta(seconds=1), "log")
    assert runs.finish("r1", finish, OutgoingEvent("t", "r1", '{"type":"stopped"}'))
    # The loser of a race changes nothing and emits nothing.
    assert not runs.finish("r1", finish, OutgoingEvent("t", "r1", '{"type":"stopped"}'))

    pending = runs.unpublished(100)
    assert [e.payload for _, e in pending] == [
        '{"type":"deployed"}',
        '{"type":"started"}',
        '{"type":"stopped"}',
    ]
    runs.mark_published([i for i, _ in pending], datetime.now(UTC))
    assert runs.unpublished(100) == []
    assert runs.logs("r1") == "log"
    assert runs.finished_ids(["r1", "other"]) == {"r1"}


def test_the_start_path_moves_only_forward_and_a_stop_can_win_it(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    runs = RunRepository(engine)
    now = datetime.now(UTC)
    event = OutgoingEvent("t", "p1", '{"type":"deployed"}')
    row = new_run("p1")
    row.env = {"SECRET": "s"}
    accepted = runs.add_pending(row)
    assert accepted.status == RunStatus.PENDING and runs.env_of("p1") == {"SECRET": "s"}
    assert [r.id for r in runs.starting(10)] == ["p1"]
    assert runs.mark_deployed("p1", "c1", now, event)
    assert not runs.mark_deployed("p1", "c1", now, event)  # only from pending
    assert runs.mark_running("p1", "c1", now, now + timedelta(seconds=10), [])
    assert runs.env_of("p1") == {}  # not kept once the container runs
    assert runs.starting(10) == []
    assert not runs.mark_running("p1", "c1", now, now, [])

    runs.add_pending(new_run("p2"))
    stop = Finish(
        RunStatus.STOPPED, StopReason.STOPPED, None, now, None, "stopped before it started"
    )
    assert runs.finish("p2", stop, event, only_from=STARTING)
    assert not runs.mark_deployed("p2", "c2", now, event)  # the stop won: the starter backs off
    runs.add_pending(new_run("p3"))
    assert runs.mark_running("p3", "c3", now, now, [])
    assert not runs.finish("p3", stop, event, only_from=STARTING)  # it runs: a real stop needed
    assert [e.payload for _, e in runs.unpublished(100)].count('{"type":"deployed"}') == 2


def test_list_by_email_is_paginated_newest_first(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate(engine)
    runs = RunRepository(engine)
    base = datetime.now(UTC)
    for i in range(5):
        row = new_run(f"r{i}", "p@q.r")
        row.created_at = base + timedelta(seconds=i)
        runs.add_pending(row)
    runs.add_pending(new_run("other", "x@y.z"))
    assert [r.id for r in runs.by_email("p@q.r", 2, 0)] == ["r4", "r3"]
    assert [r.id for r in runs.by_email("p@q.r", 10, 3)] == ["r1", "r0"]
