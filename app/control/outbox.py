"""Relays committed outbox events to Kafka, in commit order, until each is acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from itertools import groupby

from app.events import EventPublisher
from app.store.runs import RunRepository

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        runs: RunRepository,
        publisher: EventPublisher,
        *,
        batch: int = 500,
        idle_s: float = 1.0,
    ) -> None:
        if runs is None or publisher is None:
            raise ValueError("runs and publisher are required")
        self._runs = runs
        self._publisher = publisher
        self._batch = batch
        self._idle_s = idle_s
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def publish_pending(self) -> int:
        """Publish everything committed so far; returns how many events went out."""
        sent = 0
        while rows := await asyncio.to_thread(self._runs.unpublished, self._batch):
            # Consecutive runs of one topic keep per-key order: a run's events share a key.
            for topic, group in groupby(rows, key=lambda row: row[1].topic):
                chunk = list(group)
                await self._publisher.publish(
                    topic, [(e.key, e.payload.encode()) for _, e in chunk]
                )
                ids = [event_id for event_id, _ in chunk]
                await asyncio.to_thread(self._runs.mark_published, ids, datetime.now(UTC))
                sent += len(chunk)
            if len(rows) < self._batch:
                break
        return sent

    async def run_forever(self) -> None:
        backoff = self._idle_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            try:
                await self.publish_pending()
                backoff = self._idle_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker down, DB locked: keep the events, retry later
                backoff = min(backoff * 2, 10.0)
                log.warning("outbox relay: %s; retrying in %.1fs", exc, backoff)
