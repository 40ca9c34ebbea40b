"""Deploys the platform's Serve application(s) onto a running Ray cluster (``make run``)."""

from __future__ import annotations

import argparse
import sys
import time

import httpx
import ray
from ray import serve

from app.settings import Settings
from deployments.control_plane import build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default="auto", help="Ray cluster address")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    settings = Settings()
    ray.init(address=args.address, log_to_driver=False)
    serve.start(http_options={"host": settings.http.host, "port": settings.http.port})
    serve.run(build(settings), name="faas", route_prefix="/", blocking=False)
    url = f"http://{settings.http.host}:{settings.http.port}"
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                print(f"faas: API ready at {url} (docs at {url}/docs)")
                return 0
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    print(
        f"faas: API at {url} not healthy after {args.timeout}s; see `serve status`", file=sys.stderr
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
