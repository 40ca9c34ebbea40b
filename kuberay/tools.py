"""Tools for kuberay/, built or fetched once into the cache (``make kuberay-tools``).

- ``kustomize`` from the Go module proxy (``sigs.k8s.io/kustomize/kustomize/v5``);
- KubeRay's CRDs from its Go module (``github.com/ray-project/kuberay/ray-operator``);
- Strimzi's CRDs rendered by Strimzi's own ``crd-generator`` from its ``api`` model (both
  from Maven Central; Strimzi publishes no CRD YAML in a package registry).

    python kuberay/tools.py build    # prints the paths
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("FAAS_CACHE", Path.home() / ".cache" / "faas"))
KUSTOMIZE_VERSION = "v5.7.1"  # v5.8 needs a newer Go than this machine's 1.26
KUBERAY_VERSION = "v1.4.0"
STRIMZI_VERSION = "0.45.0"
HERE = Path(__file__).resolve().parent
KUSTOMIZE = CACHE / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"
STRIMZI_DIR = CACHE / f"strimzi-{STRIMZI_VERSION}"
STRIMZI_KINDS = {
    "kafka.yaml": "io.strimzi.api.kafka.model.kafka.Kafka",
    "kafkanodepool.yaml": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "kafkatopic.yaml": "io.strimzi.api.kafka.model.topic.KafkaTopic",
}


def go_env() -> dict[str, str]:
    go = CACHE / "go"
    return {
        **os.environ,
        "GOPATH": str(go),
        "GOMODCACHE": str(go / "mod"),
        "GOCACHE": str(go / "build"),
        "GOTOOLCHAIN": "local",
    }


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def kustomize() -> Path:
    if not KUSTOMIZE.exists():
        env = {**go_env(), "GOBIN": str(KUSTOMIZE.parent)}
        _run(
            ["go", "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"], env, CACHE
        )
    return KUSTOMIZE


def kuberay_crds() -> list[Path]:
    module = f"github.com/ray-project/kuberay/ray-operator@{KUBERAY_VERSION}"
    info = json.loads(_run(["go", "mod", "download", "-json", module], go_env(), CACHE))
    return sorted((Path(info["Dir"]) / "config" / "crd" / "bases").glob("ray.io_*.yaml"))


def strimzi_crds() -> list[Path]:
    crds = STRIMZI_DIR / "crds"
    paths = [crds / name for name in STRIMZI_KINDS]
    if all(path.exists() for path in paths):
        return paths
    libs = STRIMZI_DIR / "libs"
    pom = HERE / "strimzi" / "pom.xml"
    _run(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
          f"-DoutputDirectory={libs}"])  # fmt: skip
    crds.mkdir(parents=True, exist_ok=True)
    targets = [f"{cls}={crds / name}" for name, cls in STRIMZI_KINDS.items()]
    _run(["java", "-cp", f"{libs}/*", "io.strimzi.crdgenerator.CrdGenerator", "--yaml",
          "--api-versions", "v1beta2", "--storage-version", "v1beta2", *targets])  # fmt: skip
    return paths


def render(path: Path = HERE) -> str:
    """``kustomize build kuberay/``: every object the operator applies."""
    return _run([str(kustomize()), "build", str(path)])


def build() -> list[Path]:
    CACHE.mkdir(parents=True, exist_ok=True)
    return [kustomize(), *kuberay_crds(), *strimzi_crds()]


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python kuberay/tools.py build")
    for path in build():
        print(path)
