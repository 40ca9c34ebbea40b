"""Committing a fetched batch progressively: each partition only up to the first record
whose effect is not durable yet, so a crash redelivers exactly the records not done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import TopicPartition

Commit = Callable[[dict[TopicPartition, int]], Awaitable[None]]


class OffsetTracker:
    """The records of one batch per partition, and which of them are done."""

    def __init__(self) -> None:
        self._open: dict[TopicPartition, set[int]] = {}
        self._end: dict[TopicPartition, int] = {}  # one past the last record fetched
        self._committed: dict[TopicPartition, int] = {}  # position committed (or fetched from)

    def add(self, tp: TopicPartition, offset: int) -> None:
        self._open.setdefault(tp, set()).add(offset)
        self._end[tp] = max(self._end.get(tp, 0), offset + 1)
        # Where the batch started: committing that would change nothing.
        self._committed[tp] = min(self._committed.get(tp, offset), offset)

    def done(self, tp: TopicPartition, offset: int) -> None:
        self._open[tp].discard(offset)

    @property
    def all_done(self) -> bool:
        return not any(self._open.values())

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the next offset to consume (Kafka's commit position) where it has
        moved since the last ``committed``: the first open record, or past the last one."""
        positions = {tp: min(self._open[tp], default=end) for tp, end in self._end.items()}
        return {tp: p for tp, p in positions.items() if p > self._committed.get(tp, -1)}

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)


class ProgressiveCommitter:
    """While its block runs, commits the tracker's progress every ``every_s`` (one commit
    at a time, none when nothing moved); once more when the block ends without an error.

    ``async with ProgressiveCommitter(tracker, consumer.commit): ...``
    """

    def __init__(self, tracker: OffsetTracker, commit: Commit, *, every_s: float = 0.5) -> None:
        if every_s <= 0:
            raise ValueError("every_s must be > 0")
        self._tracker = tracker
        self._commit = commit
        self._every_s = every_s
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None

    async def flush(self) -> None:
        async with self._lock:
            offsets = self._tracker.committable()
            if offsets:
                await self._commit(offsets)
                self._tracker.committed(offsets)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            await self.flush()

    async def __aenter__(self) -> ProgressiveCommitter:
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        assert self._ticker is not None
        self._ticker.cancel()
        await asyncio.wait([self._ticker])  # our own cancellation still propagates
        error = None if self._ticker.cancelled() else self._ticker.exception()
        if error is not None:
            raise error  # a commit failed
        if exc_type is None:
            await self.flush()
