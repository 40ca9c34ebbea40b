"""Fixtures shared by the tests that talk to the local Kubernetes control plane."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from infra.kube import KubeCluster


@pytest.fixture
def api(kube_cluster: KubeCluster) -> Iterator[client.ApiClient]:
    """A client with the cluster's admin token."""
    admin = config.new_client_from_config(config_file=kube_cluster.kubeconfig)
    yield admin
    admin.close()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    """A namespace of its own for one test, deleted afterwards."""
    name = f"fns-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    yield name
    client.CoreV1Api(api).delete_namespace(name)
