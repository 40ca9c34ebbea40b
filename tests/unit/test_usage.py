from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl

from analytics.usage import no_samples_usage, run_endpoints, usage_from_endpoints

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
MIB64 = 64 << 20


def frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows)


def flat_memory_samples(node: str = "n1", count: int = 20) -> list[dict[str, object]]:
    # 64 MiB held from the start (the agent integrates from StartedAt), readings every
    # 250 ms from 0.25 s to 4.75 s, CPU at 0.5 cores; the last 0.25 s is closed here.
    rows = []
    for i in range(count):
        t = T0 + timedelta(milliseconds=250 * (i + 1))
        rows.append(
            {"run_id": "r", "node": node, "seq": i, "sample_time": t, "memory_bytes": MIB64,
             "memory_byte_ms": MIB64 * 250 * (i + 1), "cpu_ns": 125_000_000 * (i + 1)}
        )  # fmt: skip
    return rows


def test_integral_is_closed_at_the_runtime_finish_time() -> None:
    row = run_endpoints(frame(flat_memory_samples())).row(0, named=True)
    usage = usage_from_endpoints(row, T0, T0 + timedelta(seconds=5))
    # 64 MiB for exactly 5 s = 0.3125 GiB·s; CPU 0.5 cores for 5 s = 2.5 s.
    assert usage.gib_seconds == Decimal("0.312500000")
    assert usage.cpu_seconds == Decimal("2.500000000")
    assert usage.wall_seconds == Decimal("5.000000000")
    assert usage.samples == 20


def test_recomputation_is_identical() -> None:
    samples = frame(flat_memory_samples())
    first = usage_from_endpoints(
        run_endpoints(samples).row(0, named=True), T0, T0 + timedelta(seconds=5)
    )
    shuffled = samples.sample(fraction=1.0, shuffle=True, seed=7)
    again = usage_from_endpoints(
        run_endpoints(shuffled).row(0, named=True), T0, T0 + timedelta(seconds=5)
    )
    assert first == again


def test_the_node_with_most_readings_wins() -> None:
    rows = flat_memory_samples("n1") + flat_memory_samples("n2", count=3)
    endpoints = run_endpoints(frame(rows))
    assert endpoints.height == 1 and endpoints.row(0, named=True)["node"] == "n1"


def test_run_without_samples_bills_wall_time_only() -> None:
    usage = no_samples_usage("r", T0, T0 + timedelta(milliseconds=1500))
    assert (usage.cpu_seconds, usage.gib_seconds, usage.wall_seconds) == (0, 0, Decimal("1.5"))
