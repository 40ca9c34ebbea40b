"""When the ingestor counts as caught up with the metrics topic (the invoicer waits for it
before pricing a run whose final sample is missing)."""

from __future__ import annotations

from aiokafka import TopicPartition

from analytics.ingestion import caught_up

P0, P1 = TopicPartition("faas.metrics", 0), TopicPartition("faas.metrics", 1)


def test_caught_up_once_every_partition_reached_its_target() -> None:
    assert caught_up({P0: 10, P1: 7}, {P0: 10, P1: 5})
    assert not caught_up({P0: 9, P1: 7}, {P0: 10, P1: 5})


def test_a_partition_never_committed_on_counts_as_offset_zero() -> None:
    assert caught_up({}, {P0: 0, P1: 0})  # nothing was ever published
    assert not caught_up({P0: 3}, {P0: 3, P1: 1})  # one sample on P1 still to store


def test_no_partitions_known_means_nothing_to_wait_for() -> None:
    assert caught_up({P0: 1}, {})
