"""The KubeRay serveConfigV2 is generated from deployments.apps and must not drift from it."""

from __future__ import annotations

from pathlib import Path

import yaml

from app.settings import Settings
from deployments import serve_config
from deployments.apps import platform_apps

RAYSERVICE = Path(__file__).resolve().parents[2] / "kuberay" / "rayservice.yaml"


def committed_serve_config() -> dict:
    (rayservice,) = [d for d in yaml.safe_load_all(RAYSERVICE.read_text()) if d]
    assert rayservice["kind"] == "RayService"
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def test_committed_rayservice_equals_the_generated_serve_config() -> None:
    generated = yaml.safe_load(serve_config.render())
    assert committed_serve_config() == generated, (
        "kuberay/rayservice.yaml drifted: paste `python -m deployments.serve_config` into it"
    )


def test_every_platform_app_is_deployed_with_its_route_prefix() -> None:
    expected = {app.name: app.route_prefix for app in platform_apps(Settings())}
    applications = committed_serve_config()["applications"]
    assert {app["name"]: app["route_prefix"] for app in applications} == expected


def test_every_import_path_names_a_builder_of_that_app() -> None:
    import importlib

    for app in committed_serve_config()["applications"]:
        module, _, attr = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module), attr)
        assert builder is serve_config.BUILDERS[app["name"]]
