"""Tariff management as a Ray Serve ingress deployment (route prefix ``/v1/tariffs``)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve import Application

from app.api.tariffs import create_pricing_api
from app.settings import Settings
from app.store.db import make_engine, migrate
from app.tariffs.repository import TariffRepository


@serve.deployment(name="Pricing", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class PricingDeployment:
    def __init__(self, settings: Settings) -> None:
        self._engine = make_engine(settings.sql_url)
        self._tariffs = TariffRepository(self._engine)
        self._token = settings.admin_token.get_secret_value()
        self._max_body_bytes = settings.http.max_body_bytes
        self._started = asyncio.get_running_loop().create_task(
            asyncio.to_thread(migrate, self._engine)
        )

    def __serve_build_asgi_app__(self) -> Any:
        return create_pricing_api(
            self._tariffs, self._token, max_body_bytes=self._max_body_bytes, ready=self._started
        )

    async def check_health(self) -> None:
        if self._started.done() and self._started.exception() is not None:
            raise RuntimeError(f"pricing failed to start: {self._started.exception()}")

    def __del__(self) -> None:
        self._engine.dispose()


def build(settings: Settings) -> Application:
    return PricingDeployment.bind(settings)
