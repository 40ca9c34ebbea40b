"""Every Serve application of the platform and its route prefix: one source of truth for
``make run``, the tests and (later) the KubeRay ``serveConfigV2``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from ray.serve import Application

from app.settings import Settings
from deployments import analytics, control_plane, pricing


@dataclass(frozen=True)
class ServeApp:
    name: str
    route_prefix: str
    app: Application


def platform_apps(settings: Settings) -> list[ServeApp]:
    return [
        ServeApp("faas", "/", control_plane.build(settings)),
        ServeApp("pricing", "/v1/tariffs", pricing.build(settings)),
        ServeApp("analytics", "/billing", analytics.build(settings)),
    ]


class PlatformArgs(BaseModel):
    """Arguments of the application builders in a Serve config: setting overrides."""

    settings: dict[str, Any] = {}


def control_plane_app(args: PlatformArgs) -> Application:
    return control_plane.build(Settings(**args.settings))


def pricing_app(args: PlatformArgs) -> Application:
    return pricing.build(Settings(**args.settings))


def analytics_app(args: PlatformArgs) -> Application:
    return analytics.build(Settings(**args.settings))
