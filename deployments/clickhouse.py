"""ClickHouse for the Ray side: the embedded engine's single owner, and a proxy to it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
from ray import serve
from ray.serve.handle import DeploymentHandle

from analytics.clickhouse import ClickHouse, ClickHouseUnavailable, DirectClickHouse
from analytics.schema import migrate
from app.settings import Settings

log = logging.getLogger(__name__)
OPEN_RETRY_MAX_S = 5.0
READY_WAIT_S = 5.0  # how long a call waits for the engine before being told it is unavailable


@serve.deployment(name="ClickHouseOwner", num_replicas=1, ray_actor_options={"num_cpus": 0})
class ClickHouseOwner:
    """Holds the only client of the embedded engine's data path (one process may open it)."""

    def __init__(self, settings: Settings) -> None:
        assert settings.clickhouse.url is not None
        self._clickhouse = DirectClickHouse(settings.clickhouse.url, settings.clickhouse.database)
        self._ready = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        """Open the data path and migrate. Another process may hold the path for a while (a
        previous owner still exiting, an operator's tool): keep trying instead of dying, so
        Serve does not crash-loop the replica; callers are told it is unavailable meanwhile."""
        delay = 0.5
        while True:
            try:
                await migrate(self._clickhouse)
                return
            except Exception as exc:
                log.warning("ClickHouse engine not available (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, OPEN_RETRY_MAX_S)

    async def _engine(self) -> DirectClickHouse:
        try:  # a normal start takes a moment: wait for it, but never hang a caller
            await asyncio.wait_for(asyncio.shield(self._ready), READY_WAIT_S)
        except TimeoutError:
            raise ClickHouseUnavailable("the embedded ClickHouse engine cannot be opened") from None
        return self._clickhouse

    async def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        await (await self._engine()).command(sql, parameters)

    async def insert_arrow(self, table: str, data: pa.Table) -> None:
        await (await self._engine()).insert_arrow(table, data)

    async def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        return await (await self._engine()).query_arrow(sql, parameters)

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
