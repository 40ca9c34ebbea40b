"""Re-billing throughput at 10 M samples (``python -m bench.rebill``).

10,000 runs of 1,000 readings for 50 tenants are written straight into a fresh embedded
ClickHouse; then, in the same run, the usage of every run is computed three ways — the
aggregation in Polars (the default path), pushed down to ClickHouse, and a
straightforward pure-Python loop over the same rows — and finally the whole re-bill
(every tenant, dry run: reading, usage, pricing with the allowance) is timed.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import polars as pl

from analytics.clickhouse import DirectClickHouse
from analytics.invoice_store import InvoiceStore
from analytics.invoicing import priced_invoice
from analytics.rebill import RebillScope, rebill_tenant
from analytics.schema import migrate
from analytics.usage import ENDPOINTS_SQL, busiest_node, run_endpoints
from app.events import Stopped
from app.pricing import Usage
from app.schemas import RunStatus, StopReason
from app.tariffs.schemas import TariffView

MONTH = datetime(2026, 10, 1, tzinfo=UTC)
TARIFF = TariffView(
    id=1, name="bench", currency="USD", price_cpu_second=Decimal("0.000024"),
    price_gib_second=Decimal("0.0000025"), price_execution=Decimal("0.0000004"),
    price_second=Decimal(0), created_at=MONTH, updated_at=MONTH,
)  # fmt: skip


def generate(runs: int, readings: int, tenants: int) -> tuple[pl.DataFrame, list[Stopped]]:
    n = runs * readings
    frame = pl.DataFrame({"i": pl.int_range(0, n, eager=True)}).with_columns(
        run=pl.col("i") // readings, seq=(pl.col("i") % readings).cast(pl.UInt64)
    )
    starts = [MONTH + timedelta(seconds=250 * r) for r in range(runs)]
    frame = frame.with_columns(
        run_id=pl.format("run-{}", pl.col("run")),
        tenant=pl.format("tenant-{}@example.com", pl.col("run") % tenants),
        node=pl.lit("n1"),
        sample_time=(
            pl.lit(MONTH)
            + pl.duration(seconds=pl.col("run") * 250, milliseconds=(pl.col("seq") + 1) * 250)
        ),
        cpu_ns=((pl.col("seq") + 1) * 125_000_000).cast(pl.UInt64),
        memory_bytes=pl.lit(64 << 20, dtype=pl.UInt64),
        memory_byte_ms=((pl.col("seq") + 1) * (64 << 20) * 250).cast(pl.UInt64),
        final=pl.col("seq") == readings - 1,
    ).drop("i", "run")
    stops = [
        Stopped(
            run_id=f"run-{r}",
            tenant=f"tenant-{r % tenants}@example.com",
            image_name="img",
            status=RunStatus.SUCCEEDED,
            reason=StopReason.EXITED,
            exit_code=0,
            started_at=starts[r],
            finished_at=starts[r] + timedelta(milliseconds=250 * readings),
        )
        for r in range(runs)
    ]
    return frame, stops


def python_loop(rows: list[tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    """The straightforward way: walk every row, keep the last two readings per run."""
    last: dict[str, tuple[object, ...]] = {}
    prev: dict[str, tuple[object, ...]] = {}
    for row in rows:
        run_id = str(row[0])
        if run_id in last and row[2] > last[run_id][2]:  # type: ignore[operator]
            prev[run_id] = last[run_id]
        last[run_id] = row
    return last


async def measure_async(
    runs: int = 10_000, readings: int = 1_000, tenants: int = 50
) -> dict[str, float]:
    frame, stops = generate(runs, readings, tenants)
    clickhouse = DirectClickHouse(
        f"chdb://{tempfile.mkdtemp(prefix='faas-bench-rebill-')}", "bench"
    )
    await migrate(clickhouse)
    start = time.perf_counter()
    await clickhouse.insert_arrow("usage_samples", frame.to_arrow())
    load_s = time.perf_counter() - start
    one = frame.filter(pl.col("run_id") == "run-0")
    await InvoiceStore(clickhouse).save(
        [
            priced_invoice(s, one.with_columns(run_id=pl.lit(s.run_id)), TARIFF, Usage.zero())
            for s in stops
        ]
    )
    samples = runs * readings
    query = "SELECT run_id, node, seq, sample_time, memory_bytes, memory_byte_ms, cpu_ns, final FROM usage_samples FINAL"

    start = time.perf_counter()
    polars_runs = run_endpoints(pl.from_arrow(await clickhouse.query_arrow(query))).height  # type: ignore[arg-type]
    polars_s = time.perf_counter() - start

    start = time.perf_counter()
    runs_list = [stop.run_id for stop in stops]
    endpoints = await clickhouse.query_arrow(ENDPOINTS_SQL, {"runs": runs_list})
    pushed = busiest_node(pl.from_arrow(endpoints)).height  # type: ignore[arg-type]
    pushdown_s = time.perf_counter() - start

    start = time.perf_counter()
    rows = (await clickhouse.query_arrow(query + " ORDER BY run_id, seq")).to_pylist()
    loop_runs = len(python_loop([tuple(r.values()) for r in rows]))
    loop_s = time.perf_counter() - start
    assert polars_runs == pushed == loop_runs == runs

    scope = RebillScope(MONTH, MONTH + timedelta(days=40))
    tenant_names = sorted({s.tenant for s in stops})
    start = time.perf_counter()
    revisions = 0
    for tenant in tenant_names:
        revisions += len(
            await rebill_tenant(clickhouse, tenant, scope, lambda _: TARIFF, dry_run=True)
        )
    rebill_s = time.perf_counter() - start
    clickhouse.close()
    return {
        "samples": samples, "runs": runs, "tenants": tenants, "load_s": load_s,
        "usage_polars_samples_per_s": samples / polars_s,
        "usage_pushdown_samples_per_s": samples / pushdown_s,
        "usage_python_loop_samples_per_s": samples / loop_s,
        "rebill_s": rebill_s, "rebill_samples_per_s": samples / rebill_s,
        "rebill_invoices_per_s": revisions / rebill_s,
    }  # fmt: skip


def measure(**kwargs: int) -> dict[str, float]:
    return asyncio.run(measure_async(**kwargs))


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
