"""When a stopped run's samples are complete enough to price, for a whole batch at once.

A run is settled when the agent's final sample is stored. Without it (the datagram may be
lost; counters are cumulative), once the grace period after its finish has passed *and*
the ingestor has stored everything published to ``faas.metrics`` by then (it may be down
or behind) — or, as a last resort, after ``max_wait_s``. One snapshot of the metrics
topic's end offsets serves every run of the batch that is overdue when it is taken, so a
batch waits for the ingestor once, not once per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from datetime import UTC, datetime

import polars as pl
from aiokafka import TopicPartition

from analytics.clickhouse import ClickHouse
from analytics.ingestion import IngestionProgress, caught_up

_SAMPLES = (
    "SELECT run_id, node, seq, sample_time, memory_bytes, memory_byte_ms, cpu_ns, final"
    " FROM usage_samples FINAL WHERE run_id IN {runs:Array(String)} ORDER BY run_id, node, seq"
)
_FINAL = (
    "SELECT DISTINCT run_id FROM usage_samples"
    " WHERE run_id IN {runs:Array(String)} AND final ORDER BY run_id"
)
log = logging.getLogger(__name__)


class RunSamples:
    """Reads runs' samples; settles a batch of stopped runs as described above."""

    def __init__(
        self,
        clickhouse: ClickHouse,
        *,
        grace_s: float = 5.0,
        poll_s: float = 0.2,
        progress: IngestionProgress | None = None,
        max_wait_s: float = 120.0,
    ) -> None:
        if clickhouse is None:
            raise ValueError("clickhouse is required")
        self._clickhouse = clickhouse
        self._grace_s = grace_s
        self._poll_s = poll_s
        self._progress = progress
        self._max_wait_s = max_wait_s

    async def read_many(self, run_ids: list[str]) -> dict[str, pl.DataFrame]:
        """Each run's samples ordered by node and seq (an empty frame when it has none)."""
        table = await self._clickhouse.query_arrow(_SAMPLES, {"runs": run_ids})
        frame: pl.DataFrame = pl.from_arrow(table)  # type: ignore[assignment]
        parts = {str(k[0]): v for k, v in frame.partition_by("run_id", as_dict=True).items()}
        return {run_id: parts.get(run_id, frame.clear()) for run_id in run_ids}

    async def read(self, run_id: str) -> pl.DataFrame:
        return (await self.read_many([run_id]))[run_id]

    async def settled(self, run_id: str, finished_at: datetime) -> pl.DataFrame:
        async with contextlib.aclosing(self.settle_many({run_id: finished_at})) as settling:
            async for _, samples in settling:
                return samples
        raise AssertionError("unreachable: settle_many yields every run")

    async def settle_many(
        self, runs: Mapping[str, datetime]
    ) -> AsyncGenerator[tuple[str, pl.DataFrame], None]:
        """Yields ``(run_id, samples)`` for every run of ``runs`` (run id → finish time),
        each as soon as it is settled: those with a final sample first, typically at once."""
        started = time.monotonic()
        pending = dict(runs)
        snapshot: tuple[dict[TopicPartition, int], set[str]] | None = None
        while pending:
            ready = set(await self._with_final(list(pending)))
            waited = time.monotonic() - started
            now = datetime.now(UTC)
            # Counted from the finish, not from when the event arrived: a run stopped long
            # ago had its final datagram sent long ago; the ingestor check covers the rest.
            overdue = {
                r for r, finished_at in pending.items()
                if r not in ready and (now - finished_at).total_seconds() >= self._grace_s
            }  # fmt: skip
            if self._progress is None:
                ready |= overdue  # nothing to wait for beyond the grace period
            elif waited >= self._max_wait_s and overdue:
                log.warning("runs %s priced without their final sample: ingestion behind", overdue)
                ready |= overdue
            elif overdue:
                try:
                    if snapshot is None:
                        snapshot = await self._progress.end_offsets(), overdue
                    elif caught_up(await self._progress.committed(), snapshot[0]):
                        ready |= snapshot[1] & pending.keys()
                        snapshot = None
                except Exception as exc:  # Kafka away: keep waiting, up to max_wait_s
                    log.warning("ingestion progress unknown (%s); waiting", exc)
            if ready:
                for run_id, samples in (await self.read_many(sorted(ready))).items():
                    del pending[run_id]
                    yield run_id, samples
                continue
            await asyncio.sleep(self._poll_s if snapshot is None else max(self._poll_s, 0.5))

    async def _with_final(self, run_ids: list[str]) -> list[str]:
        table = await self._clickhouse.query_arrow(_FINAL, {"runs": run_ids})
        return [str(r) for r in table.column("run_id").to_pylist()] if table.num_rows else []
