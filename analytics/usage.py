"""What a run used, from its stored samples: CPU-seconds, GiB-seconds, wall seconds.

Counters are cumulative from the container's start (the agent integrates memory from the
runtime's StartedAt, carrying its first reading back), so the last sample carries almost
everything. What it cannot carry is the time between the last reading and the moment the
container stopped (the cgroup is gone by then). That gap is closed here with the
runtime's own finish time: memory keeps its last level, CPU its last observed rate. All arithmetic is exact
(integers and fractions); the result is converted to ``Decimal`` once, at nanosecond /
nano-GiB-second resolution, so recomputing from the same samples gives the same numbers.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import polars as pl

GIB = 2**30
RESOLUTION = Decimal("0.000000001")  # 1 ns of CPU, 1 nano-GiB-second of memory


@dataclass(frozen=True)
class RunUsage:
    run_id: str
    cpu_seconds: Decimal
    gib_seconds: Decimal
    wall_seconds: Decimal
    samples: int


def _us(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000 + t.microsecond


def _decimal(value: Fraction) -> Decimal:
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        return exact.quantize(RESOLUTION, rounding=decimal.ROUND_HALF_EVEN)


def run_endpoints(samples: pl.DataFrame) -> pl.DataFrame:
    """Per run: the last two readings and the sample count.

    ``samples`` has the ``usage_samples`` columns. When two agents reported one run (a
    node change), the node with the most readings is taken.
    """
    ordered = samples.sort("run_id", "node", "seq")
    per_node = ordered.group_by("run_id", "node", maintain_order=True).agg(
        pl.len().alias("samples"),
        pl.col("sample_time").last().alias("last_time"),
        pl.col("memory_bytes").last().alias("last_memory"),
        pl.col("memory_byte_ms").last().alias("memory_byte_ms"),
        pl.col("cpu_ns").last().alias("cpu_ns"),
        pl.col("sample_time").slice(-2, 1).first().alias("prev_time"),
        pl.col("cpu_ns").slice(-2, 1).first().alias("prev_cpu_ns"),
    )
    return per_node.sort("run_id", "samples", descending=[False, True]).unique(
        "run_id", keep="first", maintain_order=True
    )


# The same endpoints computed inside ClickHouse (4x faster than fetching every sample into
# Polars at 10 M samples, see docs/BENCHMARKS.md); one row per (run, node).
ENDPOINTS_SQL = """
SELECT run_id, node, samples,
       r[1].2 AS last_time, r[1].4 AS last_memory, r[1].5 AS memory_byte_ms, r[1].3 AS cpu_ns,
       if(samples > 1, r[2].2, NULL) AS prev_time, if(samples > 1, r[2].3, NULL) AS prev_cpu_ns
FROM (
    SELECT run_id, node, count() AS samples,
           arrayReverseSort(x -> x.1,
               groupArray((seq, sample_time, cpu_ns, memory_bytes, memory_byte_ms))) AS r
    FROM usage_samples FINAL
    WHERE has({runs:Array(String)}, run_id)
    GROUP BY run_id, node
)
"""


def busiest_node(endpoints: pl.DataFrame) -> pl.DataFrame:
    """One row per run: the node with the most readings (as ``run_endpoints`` picks)."""
    return endpoints.sort(["run_id", "samples", "node"], descending=[False, True, False]).unique(
        "run_id", keep="first", maintain_order=True
    )


def usage_from_endpoints(
    row: dict[str, object], started_at: datetime, finished_at: datetime
) -> RunUsage:
    last_us = _us(row["last_time"])  # type: ignore[arg-type]
    start_us, finish_us = _us(started_at), _us(finished_at)
    tail_us = max(0, finish_us - last_us)
    memory_byte_us = (
        int(row["memory_byte_ms"]) * 1000  # type: ignore[call-overload]
        + int(row["last_memory"]) * tail_us  # type: ignore[call-overload]
    )
    cpu_ns = Fraction(int(row["cpu_ns"]))  # type: ignore[call-overload]
    if tail_us and row["prev_time"] is not None:
        span_us = last_us - _us(row["prev_time"])  # type: ignore[arg-type]
        gained = int(row["cpu_ns"]) - int(row["prev_cpu_ns"])  # type: ignore[call-overload]
        if span_us > 0 and gained > 0:
            cpu_ns += Fraction(gained, span_us) * tail_us
    return RunUsage(
        run_id=str(row["run_id"]),
        cpu_seconds=_decimal(cpu_ns / 1_000_000_000),
        gib_seconds=_decimal(Fraction(memory_byte_us, GIB * 1_000_000)),
        wall_seconds=_decimal(Fraction(max(0, finish_us - start_us), 1_000_000)),
        samples=int(row["samples"]),  # type: ignore[call-overload]
    )


def no_samples_usage(run_id: str, started_at: datetime, finished_at: datetime) -> RunUsage:
    """A run that ended before the agent saw it: billed for wall time and the execution."""
    wall = Fraction(max(0, _us(finished_at) - _us(started_at)), 1_000_000)
    return RunUsage(run_id, Decimal(0), Decimal(0), _decimal(wall), 0)
