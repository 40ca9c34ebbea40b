"""A real, small Kubernetes control plane on this machine for the Kubernetes runtime tests.

etcd (Debian's ``etcd-server``) → ``kube-apiserver``, ``kube-controller-manager`` (job,
ttl-after-finished, garbage collector, service accounts) and ``kube-scheduler`` built from
the ``k8s.io/kubernetes`` Go module (``infra/kube/go.mod``) → the ``kwok`` controller
simulating the node ``kwok-node-0`` and moving its pods through phases
(``infra/kube/stages.yaml``). Binaries are built once into ``~/.cache/faas/kube-<version>/``.

    python infra/kube.py build
    python infra/kube.py start --state DIR     # prints the kubeconfig path
    python infra/kube.py stop --state DIR
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from infra import devstack
from infra.kube_certs import write_pki

KUBE_VERSION = "v1.34.4"
KWOK_VERSION = "v0.7.0"
NODE_NAME = "kwok-node-0"
KUBE_DIR = Path(__file__).resolve().parent / "kube"
BIN_DIR = devstack.CACHE / f"kube-{KUBE_VERSION}"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
KWOK_BIN = BIN_DIR / f"kwok-{KWOK_VERSION}"
POD_LOG = ("function started", "function done")  # what kwok serves as every pod's log
SERVICES = ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


# Debian's etcd 3.4.23 lacks the progress notifications streaming lists need. The API server
# runs with WatchList off (kwok's client asks for streams regardless and would only see pod
# changes on its periodic relists); the control-plane components are told not to ask.
CLIENT_ENV = {"KUBE_FEATURE_WatchListClient": "false"}


def go_env() -> dict[str, str]:
    """GOPATH, module and build caches outside the repo, so CI and later builds reuse them."""
    go = devstack.CACHE / "go"
    return {"GOPATH": str(go), "GOMODCACHE": str(go / "mod"), "GOCACHE": str(go / "build")}


def build() -> None:
    """Build whatever binary is missing from the cache; raises with Go's output on failure."""
    env = {**os.environ, **go_env(), "GOFLAGS": "-mod=mod"}
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    missing = [name for name in KUBE_BINARIES if not (BIN_DIR / name).exists()]
    if missing:
        version = "k8s.io/component-base/version"
        ldflags = (
            f"-s -w -X {version}.gitVersion={KUBE_VERSION} -X {version}.gitMajor=1"
            f" -X {version}.gitMinor={KUBE_VERSION.split('.')[1]}"
        )
        packages = [f"k8s.io/kubernetes/cmd/{name}" for name in missing]
        _run(["go", "build", "-ldflags", ldflags, "-o", f"{BIN_DIR}/", *packages], env, KUBE_DIR)
    if not KWOK_BIN.exists():
        gobin = BIN_DIR / "kwok-build"
        _run(
            ["go", "install", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
            {**env, "GOBIN": str(gobin), "GOFLAGS": ""},
            BIN_DIR,
        )
        (gobin / "kwok").rename(KWOK_BIN)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{done.stdout}\n{done.stderr}")


@dataclass(frozen=True)
class KubeCluster:
    kubeconfig: str
    server: str
    state: Path
    token: str
    etcd: str = ""

    def compact_etcd(self) -> int:
        """Compact etcd up to its current revision (older resourceVersions become 410)."""
        answer = httpx.post(f"{self.etcd}/v3/kv/range", json={"key": "AA=="}, timeout=10)
        revision = int(answer.raise_for_status().json()["header"]["revision"])
        body = {"revision": revision, "physical": True}
        httpx.post(f"{self.etcd}/v3/kv/compaction", json=body, timeout=30).raise_for_status()
        return revision


def start(state: Path, timeout_s: float = 90.0) -> KubeCluster:
    build()
    state.mkdir(parents=True, exist_ok=True)
    pki = write_pki(state / "pki")
    token = secrets.token_hex(16)
    (state / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    etcd_port, peer_port, api_port = (devstack.free_port() for _ in range(3))
    pid = devstack.spawn("etcd", [
        "etcd", "--data-dir", str(state / "etcd-data"), "--name", "faas",
        "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"faas=http://127.0.0.1:{peer_port}",
        "--listen-metrics-urls", f"http://127.0.0.1:{devstack.free_port()}",
    ], state)  # fmt: skip
    devstack.wait_for_port(etcd_port, 30, "etcd", pid)
    server = f"https://127.0.0.1:{api_port}"
    pid = devstack.spawn("kube-apiserver", [
        str(BIN_DIR / "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
        f"--cert-dir={state / 'pki'}", f"--tls-cert-file={pki.server_cert}",
        f"--tls-private-key-file={pki.server_key}", f"--client-ca-file={pki.ca_cert}",
        f"--token-auth-file={state / 'tokens.csv'}", "--authorization-mode=RBAC",
        f"--service-account-key-file={pki.sa_public}",
        f"--service-account-signing-key-file={pki.sa_private}",
        "--service-account-issuer=https://kubernetes.default.svc",
        "--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=false",
        # Debian's etcd 3.4 cannot serve streaming lists (no progress requests); pods are
        # watched straight from etcd so that a compacted version really answers 410 Gone.
        "--feature-gates=WatchList=false", "--watch-cache-sizes=pods#0",
    ], state)  # fmt: skip
    kubeconfig = write_kubeconfig(state / "admin.kubeconfig", server, pki.ca_cert, token)
    _wait_ready(server, pki.ca_cert, token, timeout_s, pid)
    common = [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
    auth = [f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}"]
    devstack.spawn("kube-controller-manager", [
        str(BIN_DIR / "kube-controller-manager"), *common, *auth,
        f"--secure-port={devstack.free_port()}",
        "--controllers=job,ttl-after-finished,garbagecollector,serviceaccount,namespace",
        "--use-service-account-credentials=false",
    ], state, env=CLIENT_ENV)  # fmt: skip
    devstack.spawn("kube-scheduler", [
        str(BIN_DIR / "kube-scheduler"), *common, *auth, f"--secure-port={devstack.free_port()}",
    ], state, env=CLIENT_ENV)  # fmt: skip
    # kwok also plays the node's kubelet endpoint (127.0.0.1:<port>, HTTPS) so that the API
    # server can proxy pod logs to it; every pod "logs" the lines of POD_LOG.
    kubelet_port = devstack.free_port()
    devstack.spawn("kwok", [
        str(KWOK_BIN), f"--kubeconfig={kubeconfig}", f"--config={KUBE_DIR / 'stages.yaml'}",
        f"--config={_write_logs_config(state)}",
        "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        "--node-ip=127.0.0.1", f"--node-port={kubelet_port}",
        f"--server-address=127.0.0.1:{kubelet_port}",
        f"--tls-cert-file={pki.server_cert}", f"--tls-private-key-file={pki.server_key}",
    ], state, env=CLIENT_ENV)  # fmt: skip
    cluster = KubeCluster(str(kubeconfig), server, state, token, f"http://127.0.0.1:{etcd_port}")
    _create_node(cluster, pki.ca_cert)
    # Pods are refused until the service-account controller has made "default".
    wait_for(cluster, pki.ca_cert, "/api/v1/namespaces/default/serviceaccounts/default", 60)
    return cluster


def _write_logs_config(state: Path) -> Path:
    log = state / "pod.log"
    # The CRI log format a kubelet reads from its node: time, stream, full-line tag, text.
    log.write_text("".join(f"2026-01-01T00:00:0{i}.000000000Z stdout F {line}\n"
                           for i, line in enumerate(POD_LOG)))  # fmt: skip
    logs = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "ClusterLogs",
        "metadata": {"name": "every-pod"},
        "spec": {"selector": {}, "logs": [{"logsFile": str(log), "follow": False}]},
    }  # fmt: skip
    path = state / "kwok-logs.yaml"
    path.write_text(json.dumps(logs))  # JSON is valid YAML
    return path


def wait_for(cluster: KubeCluster, ca: Path, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            api(cluster.server, ca, cluster.token, "GET", path)
            return
        except httpx.HTTPError as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} not there within {timeout_s}s: {error}") from error
            time.sleep(0.2)


def stop(state: Path) -> None:
    for name in SERVICES:
        devstack.stop(name, state)


def write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "faas",
        "clusters": [{"name": "faas", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "faas", "context": {"cluster": "faas", "user": "admin"}}],
    }  # fmt: skip
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    path.chmod(0o600)
    return path


def api(server: str, ca: Path, token: str, method: str, path: str, body: object = None) -> object:
    """One call to the API server with the admin token (no client library needed here)."""
    answer = httpx.request(
        method, f"{server}{path}", json=body, verify=ssl.create_default_context(cafile=str(ca)),
        headers={"Authorization": f"Bearer {token}"}, timeout=10,
    )  # fmt: skip
    answer.raise_for_status()
    return answer.json()


def _wait_ready(server: str, ca: Path, token: str, timeout_s: float, pid: int) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not devstack._alive(pid):
            raise RuntimeError("kube-apiserver exited during start-up (see its log)")
        try:
            # The default namespace appears once the bootstrap controllers have run.
            api(server, ca, token, "GET", "/api/v1/namespaces/default")
            return
        except httpx.HTTPError as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"kube-apiserver not ready in {timeout_s}s: {error}") from error
            time.sleep(0.3)


def _create_node(cluster: KubeCluster, ca: Path) -> None:
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": NODE_NAME}},
    }  # fmt: skip
    api(cluster.server, ca, cluster.token, "POST", "/api/v1/nodes", node)
    deadline = time.monotonic() + 30
    while not _node_ready(cluster, ca):
        if time.monotonic() > deadline:
            raise TimeoutError(f"kwok did not make {NODE_NAME} Ready in 30s (see kwok.log)")
        time.sleep(0.2)
    # Admission tainted the new node not-ready; the node-lifecycle controller that would lift
    # it also expects kubelet heartbeats, so it is not run and the taint is lifted here.
    patch = {"spec": {"taints": None}}
    answer = httpx.patch(
        f"{cluster.server}/api/v1/nodes/{NODE_NAME}", json=patch, timeout=10,
        headers={"Authorization": f"Bearer {cluster.token}",
                 "Content-Type": "application/merge-patch+json"},
        verify=ssl.create_default_context(cafile=str(ca)),
    )  # fmt: skip
    answer.raise_for_status()


def _node_ready(cluster: KubeCluster, ca: Path) -> bool:
    node: Any = api(cluster.server, ca, cluster.token, "GET", f"/api/v1/nodes/{NODE_NAME}")
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "start", "stop"])
    parser.add_argument("--state", type=Path, default=devstack.ROOT / ".faas" / "kube")
    args = parser.parse_args()
    if args.action == "build":
        started = time.monotonic()
        build()
        print(f"binaries in {BIN_DIR} ({time.monotonic() - started:.1f}s)")
    elif args.action == "start":
        cluster = start(args.state.resolve())
        print(f"kubeconfig: {cluster.kubeconfig}\nserver:     {cluster.server}")
    else:
        stop(args.state.resolve())


if __name__ == "__main__":
    main()
