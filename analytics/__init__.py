"""ClickHouse schema and queries, Polars invoicing, batch re-billing. Never imports ray."""
