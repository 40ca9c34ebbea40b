"""The platform on real services, started for a benchmark run and torn down after it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra import devstack


@dataclass(frozen=True)
class BenchStack:
    url: str
    podman_url: str
    kafka_bootstrap: str
    home: Path


@contextmanager
def platform_stack() -> Iterator[BenchStack]:
    import ray
    from ray import serve

    from app.settings import Settings
    from deployments.control_plane import build

    home = Path(tempfile.mkdtemp(prefix="faas-bench-"))
    kafka_port = devstack.free_port()
    devstack.start_kafka(home / "kafka", kafka_port)
    socket_path = home / "podman.sock"
    devstack.start_podman_service(home / "podman", socket_path)
    port = devstack.free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = Settings(
            home=home,
            kafka={"bootstrap": f"127.0.0.1:{kafka_port}"},
            runtime={"docker_url": f"unix://{socket_path}", "stop_grace_s": 1},
        )
        serve.run(build(settings), name="faas", route_prefix="/")
        yield BenchStack(
            f"http://127.0.0.1:{port}", f"unix://{socket_path}", f"127.0.0.1:{kafka_port}", home
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        devstack.stop("podman", home / "podman")
        devstack.stop("kafka", home / "kafka")
        shutil.rmtree(home, ignore_errors=True)
