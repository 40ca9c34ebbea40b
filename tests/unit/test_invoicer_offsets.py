"""How far the invoicer may commit a batch it prices out of order: per partition, up to
the first record whose effect is not durable yet."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from analytics.offsets import OffsetTracker, ProgressiveCommitter

P0, P1 = TopicPartition("faas.deployments", 0), TopicPartition("faas.deployments", 1)


def tracker_of(**offsets: list[int]) -> OffsetTracker:
    tracker = OffsetTracker()
    for name, tp in (("p0", P0), ("p1", P1)):
        for offset in offsets.get(name, []):
            tracker.add(tp, offset)
    return tracker


def test_commits_stop_at_the_first_record_not_done() -> None:
    tracker = tracker_of(p0=[10, 11, 12, 13], p1=[5, 6])
    assert tracker.committable() == {}  # nothing done: still where the batch started
    tracker.done(P0, 12)
    tracker.done(P0, 13)
    assert tracker.committable() == {}  # 10 and 11 still open
    tracker.done(P0, 10)
    assert tracker.committable() == {P0: 11}
    tracker.done(P0, 11)
    assert tracker.committable() == {P0: 14}  # all done: past the last record
    assert not tracker.all_done
    tracker.done(P1, 5)
    tracker.done(P1, 6)
    assert tracker.all_done and tracker.committable() == {P0: 14, P1: 7}


def test_only_partitions_that_moved_since_the_last_commit_are_committed() -> None:
    tracker = tracker_of(p0=[0, 1], p1=[0])
    tracker.done(P0, 0)
    tracker.committed(tracker.committable())
    assert tracker.committable() == {}
    tracker.done(P1, 0)
    assert tracker.committable() == {P1: 1}


def test_gaps_between_fetched_offsets_do_not_hold_the_commit() -> None:
    tracker = tracker_of(p0=[3, 7])  # compacted or transaction markers in between
    tracker.done(P0, 3)
    assert tracker.committable() == {P0: 7}
    tracker.done(P0, 7)
    assert tracker.committable() == {P0: 8}


async def test_committer_commits_progress_while_the_block_runs_and_the_rest_after() -> None:
    tracker = tracker_of(p0=[0, 1, 2])
    commits: list[dict[TopicPartition, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        commits.append(dict(offsets))

    async with ProgressiveCommitter(tracker, commit, every_s=0.05):
        await asyncio.sleep(0.12)
        assert commits == []  # nothing done: nothing moved, no empty commit
        tracker.done(P0, 0)
        await asyncio.sleep(0.12)
        assert commits == [{P0: 1}]  # while the batch is still going
        tracker.done(P0, 2)
        tracker.done(P0, 1)
    assert commits[-1] == {P0: 3}  # the rest, once the block ended


async def test_no_final_commit_when_the_block_fails() -> None:
    tracker = tracker_of(p0=[0, 1])
    commits: list[dict[TopicPartition, int]] = []

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        commits.append(dict(offsets))

    with pytest.raises(RuntimeError):
        async with ProgressiveCommitter(tracker, commit, every_s=3600):
            tracker.done(P0, 0)
            raise RuntimeError("pricing failed")
    assert commits == []  # redelivered from offset 0: what was done is found stored


async def test_a_failed_commit_fails_the_block() -> None:
    tracker = tracker_of(p0=[0])

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        async with ProgressiveCommitter(tracker, commit, every_s=0.01):
            tracker.done(P0, 0)
            await asyncio.sleep(0.05)
