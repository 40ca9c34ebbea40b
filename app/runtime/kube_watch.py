"""A watch-fed cache of one kind of object (Jobs or Pods): list once, then watch from the
list's resourceVersion, resuming from the last one seen when the connection drops and
listing again only when the server says that version is gone (410)."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
Obj = dict[str, Any]
ListFn = Callable[..., Any]  # a namespaced list call of the kubernetes client


def _rv(obj: Obj) -> int:
    value = str(obj.get("metadata", {}).get("resourceVersion", "0"))
    return int(value) if value.isdigit() else 0


class WatchCache:
    def __init__(
        self,
        list_fn: ListFn,
        namespace: str,
        label_selector: str,
        *,
        reconnect_delay_s: float = 0.2,
        watch_timeout_s: int = 60,
    ) -> None:
        if list_fn is None or not namespace:
            raise ValueError("list_fn and namespace are required")
        self._list_fn = list_fn
        self._namespace = namespace
        self._selector = label_selector
        self.reconnect_delay_s = reconnect_delay_s
        self._watch_timeout_s = watch_timeout_s
        self._objects: dict[str, Obj] = {}
        self._lock = threading.Condition()
        self._stopped = threading.Event()
        self._response: Any = None
        self.resource_version = ""
        self.connected = False
        self.relists = 0  # how often the server's 410 forced a fresh list
        self._thread = threading.Thread(target=self._run, daemon=True, name="kube-watch")

    def start(self) -> None:
        self._relist()
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self.drop()
        self._thread.join(timeout=5)

    def drop(self) -> None:
        """Close the current watch connection (the loop resumes from the last version)."""
        response = self._response
        if response is not None:
            # close() alone leaves the reader blocked in recv() until the server ends the
            # watch (up to a minute); shutdown() wakes it at once (urllib3 >= 2.3).
            with contextlib.suppress(Exception):
                response.shutdown()
            response.close()

    def get(self, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get(name)

    def values(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())

    def put(self, obj: Obj) -> None:
        """Our own write, seen before its watch event arrives; older versions never win."""
        with self._lock:
            name = obj["metadata"]["name"]
            known = self._objects.get(name)
            if known is None or _rv(known) <= _rv(obj):
                self._objects[name] = obj
                self._lock.notify_all()

    def forget(self, name: str) -> None:
        with self._lock:
            self._objects.pop(name, None)
            self._lock.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        with self._lock:
            return self._lock.wait_for(predicate, timeout=timeout_s)

    def _relist(self) -> None:
        answer = self._list_fn(
            self._namespace, label_selector=self._selector, _preload_content=False
        )
        listing = json.loads(answer.data)
        with self._lock:
            self._objects = {o["metadata"]["name"]: o for o in listing.get("items", [])}
            self.resource_version = listing["metadata"]["resourceVersion"]
            self._lock.notify_all()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._watch_once()
            except ApiException as exc:
                if exc.status == 410:
                    self._relist_after_gone()
                else:
                    log.warning("kube watch failed: %s", exc.reason)
            except Exception as exc:  # a dropped connection: resume from where we were
                log.info("kube watch dropped (%s); resuming at %s", exc, self.resource_version)
            self.connected = False
            self._response = None
            self._stopped.wait(self.reconnect_delay_s)

    def _relist_after_gone(self) -> None:
        self.relists += 1
        try:
            self._relist()
        except Exception:
            log.exception("kube relist failed")

    def _watch_once(self) -> None:
        response = self._list_fn(
            self._namespace,
            label_selector=self._selector,
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            _preload_content=False,
        )
        self._response = response
        self.connected = True
        buffer = b""
        for chunk in response.stream(4096, decode_content=False):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    self._apply(json.loads(line))

    def _apply(self, event: Obj) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiException(status=obj.get("code", 500), reason=obj.get("message"))
        version = obj.get("metadata", {}).get("resourceVersion")
        if kind == "DELETED":
            self.forget(obj["metadata"]["name"])
        elif kind in ("ADDED", "MODIFIED"):
            self.put(obj)
        if version:
            with self._lock:
                self.resource_version = version
                self._lock.notify_all()
