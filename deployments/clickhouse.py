"""ClickHouse for the Ray side: the embedded engine's single owner, and a proxy to it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from ray import serve
from ray.serve.handle import DeploymentHandle

from analytics.clickhouse import ClickHouse, DirectClickHouse
from analytics.schema import migrate
from app.settings import Settings


@serve.deployment(name="ClickHouseOwner", num_replicas=1, ray_actor_options={"num_cpus": 0})
class ClickHouseOwner:
    """Holds the only client of the embedded engine's data path (one process may open it)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.clickhouse.url is not None
        self._clickhouse = DirectClickHouse(settings.clickhouse.url, settings.clickhouse.database)
        self._ready = asyncio.get_running_loop().create_task(migrate(self._clickhouse))

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        await self._ready
        await self._clickhouse.command(sql, parameters)

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        await self._ready
        await self._clickhouse.insert_arrow(table, data)

    async def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        await self._ready
        return await self._clickhouse.query_arrow(sql, parameters)

    async def check_health(self) -> None:
        if self._ready.done() and self._ready.exception() is not None:
            raise RuntimeError(f"ClickHouse schema migration failed: {self._ready.exception()}")

    def __del__(self) -> None:
        self._clickhouse.close()


class OwnerClickHouse:
    """The ``ClickHouse`` protocol over a handle to the owner deployment."""

    def __init__(self, owner: DeploymentHandle) -> None:
        if owner is None:
            raise ValueError("owner handle is required")
        self._owner = owner

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        await self._owner.command.remote(sql, parameters)

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        await self._owner.insert_arrow.remote(table, data)

    async def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        result: pa.Table = await self._owner.query_arrow.remote(sql, parameters)
        return result


async def connect(settings: Settings, owner: DeploymentHandle | None) -> ClickHouse:
    """Through the owner in embedded mode; a client of its own (schema ensured) otherwise."""
    if owner is not None:
        return OwnerClickHouse(owner)
    assert settings.clickhouse.url is not None
    direct = DirectClickHouse(settings.clickhouse.url, settings.clickhouse.database)
    await migrate(direct)
    return direct


def is_embedded(settings: Settings) -> bool:
    return (settings.clickhouse.url or "").startswith("chdb://")
