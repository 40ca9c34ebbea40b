"""Access to ClickHouse through clickhouse-connect: ``chdb://`` (embedded engine) or HTTP.

The embedded engine lets one process open a data path, so in embedded mode a single
owner holds the client and everyone else reaches it through that owner; the ``ClickHouse``
protocol is what both the direct client and the owner's proxy offer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import clickhouse_connect
import pyarrow as pa
from clickhouse_connect.driver.client import Client


class ClickHouseUnavailable(Exception):
    """ClickHouse cannot be reached or opened right now; the caller may retry later."""


class ClickHouse(Protocol):
    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None: ...

    async def insert_arrow(self, table: str, data: pa.Table) -> None: ...

    async def query_arrow(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> pa.Table: ...


class DirectClickHouse:
    """Owns a clickhouse-connect client; blocking calls run in a worker thread."""

    def __init__(self, url: str, database: str) -> None:
        if not url or not database:
            raise ValueError("url and database are required")
        self._url = url
        self._database = database
        self._client: Client | None = None
        # The embedded engine's client is not documented as thread-safe: one call at a time.
        self._lock = threading.Lock()

    def _connected(self) -> Client:
        if self._client is None:
            bootstrap = clickhouse_connect.get_client(dsn=self._url)
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {self._database}")
            self._client = clickhouse_connect.get_client(dsn=self._url, database=self._database)
        return self._client

    def command_sync(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self._connected().command(sql, parameters=dict(parameters or {}))

    def insert_arrow_sync(self, table: str, data: pa.Table) -> None:
        with self._lock:
            self._connected().insert_arrow(table, data)

    def query_arrow_sync(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        with self._lock:
            result: pa.Table = self._connected().query_arrow(
                sql, parameters=dict(parameters or {}), use_strings=True
            )
            return result

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        await asyncio.to_thread(self.command_sync, sql, parameters)

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        await asyncio.to_thread(self.insert_arrow_sync, table, data)

    async def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        return await asyncio.to_thread(self.query_arrow_sync, sql, parameters)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
