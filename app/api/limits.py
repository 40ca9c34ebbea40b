"""Refuse oversized request bodies early: on Content-Length before reading, and while a
chunked body streams in, before any route parses it."""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


class BodyLimit:
    """ASGI middleware: 413 naming the limit for a body over ``max_bytes``. The body is read
    here (at most ``max_bytes``) and replayed to the app, so no route sees a larger one."""

    def __init__(self, app: Any, max_bytes: int, setting: str = "FAAS_HTTP_MAX_BODY_BYTES") -> None:
        if app is None or max_bytes < 1:
            raise ValueError("an app and a positive max_bytes are required")
        self.app, self.max_bytes, self.setting = app, max_bytes, setting

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)  # without reading a byte of the body
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return dict(await receive())  # e.g. http.disconnect, for streaming answers
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {"detail": f"request body larger than {self.max_bytes} bytes ({self.setting})"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),  # the unread rest of the body is not wanted
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
