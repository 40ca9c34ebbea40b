"""The control plane as a Ray Serve ingress deployment (``/v1/functions``, ``/healthz``)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve import Application

from app.api.auth import authenticator_for
from app.api.functions import create_functions_api
from app.control.platform import ControlPlaneApp
from app.settings import Settings
from app.store.api_keys import ApiKeyRepository


# A request only validates and inserts (the starter runs containers in the background), so
# one replica takes a burst at once instead of Serve's default 5 at a time (200 POSTs at
# once waited in waves of 5 for the replica's slots).
@serve.deployment(
    name="ControlPlane",
    num_replicas=1,
    max_ongoing_requests=100,
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress()
class ControlPlaneDeployment:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._platform = ControlPlaneApp.from_settings(settings)
        self._keys = ApiKeyRepository(self._platform.engine)
        self._started = asyncio.get_running_loop().create_task(self._platform.start())

    def __serve_build_asgi_app__(self) -> Any:
        settings = self._settings
        return create_functions_api(
            self._platform.control,
            authenticator_for(settings, self._keys),
            self._keys,
            admin_token=settings.admin_token.get_secret_value(),
            max_body_bytes=settings.http.max_body_bytes,
            ready=self._started,
        )

    async def check_health(self) -> None:
        if self._started.done() and self._started.exception() is not None:
            raise RuntimeError(f"control plane failed to start: {self._started.exception()}")

    async def __del__(self) -> None:
        await self._platform.close()


def build(settings: Settings) -> Application:
    return ControlPlaneDeployment.bind(settings)
