"""Runtime over the Kubernetes API: one ``batch/v1`` Job per run, state from watches."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)

from app.runtime.base import (
    RUN_ID_LABEL,
    ContainerSpec,
    ContainerState,
    RuntimeError_,
    RuntimeUnavailable,
)
from app.runtime.kube_spec import CONTAINER_NAME, JobOptions, build_job, secret_name
from app.runtime.kube_state import JOB_NAME_LABEL, latest_pod, state_of
from app.runtime.kube_watch import WatchCache
from app.settings import RuntimeSettings

T = TypeVar("T")
LOG_TAIL_LINES = 10_000  # read at most this many lines of a pod's log
START_WAIT_S = 5.0  # how long start() waits for the pod to run before answering "running"


def api_client_from_settings(settings: RuntimeSettings) -> client.ApiClient:
    """From ``settings.kubeconfig``, or the pod's service account when it is unset."""
    if settings.kubeconfig:
        return config.new_client_from_config(config_file=settings.kubeconfig)
    return in_cluster_api_client()


def in_cluster_api_client(
    token_file: str = SERVICE_TOKEN_FILENAME, ca_file: str = SERVICE_CERT_FILENAME
) -> client.ApiClient:
    """The pod's service account: KUBERNETES_SERVICE_HOST/PORT, its token and CA files
    (re-read as the kubelet rotates the token)."""
    configuration = client.Configuration()
    InClusterConfigLoader(token_filename=token_file, cert_filename=ca_file).load_and_set(
        configuration
    )
    return client.ApiClient(configuration)


class KubernetesRuntime:
    def __init__(
        self,
        api: client.ApiClient,
        options: JobOptions,
        *,
        reconnect_delay_s: float = 0.2,
        workers: int = 8,
    ) -> None:
        if api is None or options is None:
            raise ValueError("api and options are required")
        # Its own threads: a start waits up to START_WAIT_S for the pod, and must not hold
        # the threads the store's calls need (asyncio.to_thread's pool is small).
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="kubernetes-api")
        self._api = api
        self._options = options
        self._batch = client.BatchV1Api(api)
        self._core = client.CoreV1Api(api)
        ns = options.namespace
        self.jobs = WatchCache(
            self._batch.list_namespaced_job, ns, RUN_ID_LABEL, reconnect_delay_s=reconnect_delay_s
        )
        self.pods = WatchCache(
            self._core.list_namespaced_pod, ns, RUN_ID_LABEL, reconnect_delay_s=reconnect_delay_s
        )
        self._started = False
        self._final_logs: dict[str, str] = {}  # read just before stop deletes the pod

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> KubernetesRuntime:
        options = JobOptions(
            namespace=settings.namespace,
            ttl_after_finished_s=settings.kube_ttl_after_finished_s,
            env_inline_max_bytes=settings.kube_env_inline_bytes,
            read_only_root=settings.read_only_root,
        )
        # The starts, the reconciler's closes, its listing, the API's stops and logs.
        workers = settings.start_concurrency + settings.close_concurrency + 2
        return cls(api_client_from_settings(settings), options, workers=workers)

    async def _call(self, fn: Callable[[], T]) -> T:
        def guarded() -> T:
            try:
                if not self._started:
                    self.jobs.start()
                    self.pods.start()
                    self._started = True
                return fn()
            except ApiException as exc:
                if exc.status in (None, 0) or exc.status >= 500:
                    raise RuntimeUnavailable(f"kubernetes API: {exc.reason}") from exc
                raise RuntimeError_(f"kubernetes API {exc.status}: {exc.reason}") from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise RuntimeUnavailable(f"kubernetes API unreachable: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._threads, guarded)

    async def create(self, spec: ContainerSpec) -> str:
        job, secret_data = build_job(spec, self._options)
        ns = self._options.namespace

        def create() -> str:
            try:
                answer = self._batch.create_namespaced_job(ns, job, _preload_content=False)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # Created by an earlier attempt whose answer was lost (a restart, a timeout).
                answer = self._batch.read_namespaced_job(
                    job["metadata"]["name"], ns, _preload_content=False
                )
            created: dict[str, Any] = json.loads(answer.data)
            if (created["metadata"].get("annotations") or {}).get(RUN_ID_LABEL) != spec.run_id:
                raise RuntimeError_(f"job {created['metadata']['name']} belongs to another run")
            self.jobs.put(created)
            if secret_data:
                try:
                    self._core.create_namespaced_secret(
                        ns, self._secret(spec, created, secret_data)
                    )
                except ApiException as exc:
                    if exc.status != 409:  # 409: the earlier attempt created it too
                        raise
            return str(created["metadata"]["name"])

        return await self._call(create)

    def _secret(self, spec: ContainerSpec, job: dict[str, Any], data: dict[str, str]) -> Any:
        owner = {
            "apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
            "uid": job["metadata"]["uid"], "blockOwnerDeletion": False,
        }  # fmt: skip
        return {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "stringData": data,
            "metadata": {"name": secret_name(spec.run_id), "labels": job["metadata"]["labels"],
                         "ownerReferences": [owner]},  # the garbage collector removes it with the Job
        }  # fmt: skip

    def _state(self, name: str) -> ContainerState | None:
        job = self.jobs.get(name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            return None  # stopped: a foreground delete keeps it until its pod is gone
        pods = [p for p in self.pods.values() if _job_of(p) == name]
        return state_of(job, latest_pod(pods))

    async def start(self, container_id: str) -> ContainerState:
        # The Job controller starts it as soon as it exists: wait briefly for the pod to run.
        def started() -> bool:
            state = self._state(container_id)
            return state is None or not state.running or _pod_running(self, container_id)

        def start() -> ContainerState:
            self.pods.wait_for(started, START_WAIT_S)
            state = self._state(container_id)
            if state is None:
                raise RuntimeError_(f"job {container_id} vanished right after creation")
            return state

        return await self._call(start)

    async def inspect(self, container_id: str) -> ContainerState | None:
        return await self._call(lambda: self._state(container_id))

    async def list_runs(self) -> list[ContainerState]:
        def list_runs() -> list[ContainerState]:
            names = [job["metadata"]["name"] for job in self.jobs.values()]
            return [s for s in (self._state(n) for n in names) if s is not None]

        return await self._call(list_runs)

    async def stop(self, container_id: str, grace_s: int) -> None:
        def stop() -> None:
            with contextlib.suppress(ApiException, RuntimeError_):
                self._final_logs[container_id] = self._read_logs(container_id, 256 * 1024) or ""
            self._delete(container_id, grace_s, "Foreground")

        await self._call(stop)

    async def logs(self, container_id: str, tail_bytes: int) -> str | None:
        def logs() -> str | None:
            if container_id in self._final_logs:
                return self._final_logs.pop(container_id)[-tail_bytes:]
            if self.jobs.get(container_id) is None:
                return None
            try:
                return self._read_logs(container_id, tail_bytes) or ""
            except ApiException:
                return ""  # the pod never ran, or its node cannot serve logs

        return await self._call(logs)

    def _read_logs(self, name: str, tail_bytes: int) -> str | None:
        pod = latest_pod([p for p in self.pods.values() if _job_of(p) == name])
        if pod is None:
            return None
        # limitBytes counts from the start of what is returned: bound the read by lines and
        # keep the last tail_bytes here, as the podman runtime does.
        text: str = self._core.read_namespaced_pod_log(
            pod["metadata"]["name"], self._options.namespace, container=CONTAINER_NAME,
            tail_lines=LOG_TAIL_LINES,
        )  # fmt: skip
        return text[-tail_bytes:]

    async def remove(self, container_id: str) -> None:
        await self._call(lambda: self._delete(container_id, None, "Background"))

    def _delete(self, name: str, grace_s: int | None, propagation: str) -> None:
        body = client.V1DeleteOptions(propagation_policy=propagation, grace_period_seconds=grace_s)
        try:
            self._batch.delete_namespaced_job(name, self._options.namespace, body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.jobs.forget(name)

    async def close(self) -> None:
        def close() -> None:
            if self._started:
                self.jobs.stop()
                self.pods.stop()
            self._api.close()

        await asyncio.to_thread(close)
        self._threads.shutdown(wait=False)


def _job_of(pod: dict[str, Any]) -> str | None:
    labels = pod["metadata"].get("labels") or {}
    return labels.get(JOB_NAME_LABEL) or labels.get("job-name")


def _pod_running(runtime: KubernetesRuntime, name: str) -> bool:
    pod = latest_pod([p for p in runtime.pods.values() if _job_of(p) == name])
    return pod is not None and (pod.get("status") or {}).get("phase") == "Running"
