"""ClickHouse schema, versioned: each step runs once, in order, recorded in ``schema_versions``.

Tables are ReplacingMergeTree keyed on the natural identity of a row, so a redelivered
sample or invoice is harmless; queries read with ``FINAL`` so they are right before merges.
"""

from __future__ import annotations

from analytics.clickhouse import ClickHouse

STEPS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS usage_samples (
            run_id String,
            tenant String,
            node LowCardinality(String),
            seq UInt64,
            sample_time DateTime64(6, 'UTC'),
            cpu_ns UInt64,
            memory_bytes UInt64,
            memory_byte_ms UInt64,
            final Bool,
            ingested_at DateTime64(6, 'UTC') DEFAULT now64(6)
        ) ENGINE = ReplacingMergeTree
        ORDER BY (run_id, node, seq)
        """,
    ),
    (
        2,
        """
        CREATE TABLE IF NOT EXISTS invoices (
            invoice_id String,
            run_id String,
            tenant String,
            image_name String,
            tariff String,
            tariff_id UInt32,
            version UInt32,
            started_at DateTime64(6, 'UTC'),
            finished_at DateTime64(6, 'UTC'),
            currency LowCardinality(String),
            total Decimal(38, 18),
            cpu_seconds Decimal(38, 9),
            gib_seconds Decimal(38, 9),
            wall_seconds Decimal(38, 9),
            executions UInt32,
            lines String,
            memory_series String,
            created_at DateTime64(6, 'UTC')
        ) ENGINE = ReplacingMergeTree
        ORDER BY (tenant, run_id, version)
        """,
    ),
]


async def migrate(clickhouse: ClickHouse) -> None:
    await clickhouse.command(
        "CREATE TABLE IF NOT EXISTS schema_versions (version UInt32, applied_at DateTime"
        " DEFAULT now()) ENGINE = MergeTree ORDER BY version"
    )
    applied = await clickhouse.query_arrow("SELECT version FROM schema_versions")
    done = set(applied.column("version").to_pylist()) if applied.num_rows else set()
    for version, statement in STEPS:
        if version not in done:
            await clickhouse.command(statement)
            await clickhouse.command(
                "INSERT INTO schema_versions (version) VALUES ({v:UInt32})", {"v": version}
            )
