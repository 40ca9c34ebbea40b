"""Emit the KubeRay ``serveConfigV2`` from ``deployments.apps`` (the one source of truth).

    python -m deployments.serve_config > kuberay/serve-config.yaml

Every application of ``platform_apps`` becomes an entry with its name, route prefix and
the builder's ``import_path``; settings come from the pods' environment (ConfigMap and
Secret), so ``args`` carries no overrides.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import yaml

from app.settings import Settings
from deployments import apps

# Builder per application name: the Serve config imports these, `make run` calls build().
BUILDERS: dict[str, Callable[[apps.PlatformArgs], Any]] = {
    "faas": apps.control_plane_app,
    "pricing": apps.pricing_app,
    "analytics": apps.analytics_app,
}
HTTP_PORT = 8000  # the port KubeRay's serve Service targets on the head pod


def import_path(builder: Callable[..., Any]) -> str:
    return f"{builder.__module__}:{builder.__name__}"


def serve_config(settings: Settings | None = None) -> dict[str, Any]:
    """The ``serveConfigV2`` document: one application per platform app, in its order."""
    applications = []
    for app in apps.platform_apps(settings or Settings()):
        if app.name not in BUILDERS:
            raise KeyError(f"no Serve config builder for platform app {app.name!r}")
        applications.append(
            {
                "name": app.name,
                "route_prefix": app.route_prefix,
                "import_path": import_path(BUILDERS[app.name]),
                "args": {"settings": {}},
            }
        )
    return {
        "http_options": {"host": "0.0.0.0", "port": HTTP_PORT},
        "applications": applications,
    }


def render(settings: Settings | None = None) -> str:
    text: str = yaml.safe_dump(serve_config(settings), sort_keys=False)
    return text


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
