"""Session fixtures: the real services every integration and e2e test runs against.

Each service is started here (never assumed): a KRaft Kafka broker, ``podman system
service``, a PostgreSQL cluster and a local Ray instance with Serve. A service that
cannot start fails the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from analytics.clickhouse import DirectClickHouse
from infra import devstack

ROOT = Path(__file__).resolve().parent.parent
TEST_IMAGES = (
    "localhost/faas-echo",
    "localhost/faas-cpu",
    "localhost/faas-mem",
    "localhost/faas-crash",
)


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_dir: Path) -> Iterator[str]:
    state = stack_dir / "kafka"
    port = devstack.free_port()
    devstack.start_kafka(state, port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        devstack.stop("kafka", state)


@pytest.fixture(scope="session")
def podman_url(stack_dir: Path) -> Iterator[str]:
    missing = [
        image
        for image in TEST_IMAGES
        if subprocess.run(
            ["podman", "image", "exists", image], env={**os.environ, **devstack.podman_env()}
        ).returncode
    ]
    if missing:
        subprocess.run(
            [str(ROOT / "infra" / "images" / "build.sh")],
            check=True,
            env={**os.environ, **devstack.podman_env()},
        )
    state = stack_dir / "podman"
    socket_path = state / "podman.sock"
    devstack.start_podman_service(state, socket_path)
    try:
        yield f"unix://{socket_path}"
    finally:
        devstack.stop("podman", state)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    # Outside pytest's root-only tmp tree: the server runs as the postgres user.
    state = Path(tempfile.mkdtemp(prefix="faas-pg-"))
    url = devstack.start_postgres(state, devstack.free_port())
    try:
        yield url
    finally:
        devstack.stop_postgres(state)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_cluster: str) -> str:
    """A fresh, empty database for one test."""
    return devstack.create_database(postgres_cluster)


@pytest.fixture(scope="session")
def serve_port() -> Iterator[int]:
    import ray
    from ray import serve

    port = devstack.free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def chdb_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The embedded ClickHouse engine allows one data path per process: one per session,
    and a database per test (``clickhouse`` fixture) keeps tests apart."""
    return f"chdb://{tmp_path_factory.mktemp('clickhouse')}"


@pytest.fixture
def clickhouse(chdb_url: str) -> Iterator[DirectClickHouse]:
    import uuid

    client = DirectClickHouse(chdb_url, f"t_{uuid.uuid4().hex[:12]}")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kube_cluster(stack_dir: Path) -> Iterator[object]:
    """A real API server (etcd, kube-apiserver, controller-manager, scheduler) with kwok's
    simulated node; the binaries are built on first use (infra/kube.py), which fails loudly."""
    from infra import kube

    state = stack_dir / "kube"
    try:
        yield kube.start(state)
    finally:
        kube.stop(state)
