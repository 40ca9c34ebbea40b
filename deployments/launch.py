"""Deploys the platform's Serve applications onto a running Ray cluster (``make run``)."""

from __future__ import annotations

import argparse
import sys
import time

import httpx
import ray
from ray import serve

from app.settings import Settings, with_local_admin_token
from deployments.apps import platform_apps


def wait_healthy(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="auto", help="Ray cluster address")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    settings, token_file = with_local_admin_token(Settings())
    ray.init(address=args.address, log_to_driver=False)
    serve.start(http_options={"host": settings.http.host, "port": settings.http.port})
    for app in platform_apps(settings):
        serve.run(app.app, name=app.name, route_prefix=app.route_prefix, blocking=False)
    url = f"http://{settings.http.host}:{settings.http.port}"
    if not wait_healthy(url, args.timeout):
        print(f"faas: {url} not healthy after {args.timeout}s; see `serve status`", file=sys.stderr)
        return 1
    print(f"faas: API ready at {url} (docs at {url}/docs, tariffs docs at {url}/v1/tariffs/docs)")
    if token_file is not None:
        print(
            f"faas: admin token in {token_file} (mode 0600): export FAAS_ADMIN_TOKEN=$(cat {token_file})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
