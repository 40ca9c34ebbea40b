"""Hostile input refused before any route sees it: oversized bodies (413, on Content-Length
before reading and while a chunked body streams in) and NUL characters (422: no text
column of PostgreSQL can hold one, and no field of this API means one)."""

from __future__ import annotations

import json
import re
from typing import Any

Message = dict[str, Any]
# A JSON \u0000 escape that is not itself an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def nul_field(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where in a decoded JSON document a string (or key) holds a NUL, if anywhere."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if not isinstance(value, dict | list):
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(key, str) and "\x00" in key:
            return (*path, key)
        found = nul_field(item, (*path, key))
        if found is not None:
            return found
    return None


class InputGuard:
    """ASGI middleware. The body is read here (at most ``max_bytes``) and replayed to the
    app in one piece, so no route sees a larger one or one with a NUL."""

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
            await self._too_large(send)  # without reading a byte of the body
            return
        for where, raw in (
            ("path", scope.get("raw_path") or b""),
            ("query", scope["query_string"]),
        ):
            if b"%00" in raw or b"\x00" in raw or "\x00" in scope["path"]:
                await _nul(send, (where,))
                return
        body = await self._read(receive, send)
        if body is None:
            return
        if b"\x00" in body or _JSON_NUL.search(body):
            await _nul(send, ("body", *_where_in(body)))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return dict(await receive())  # e.g. http.disconnect, for streaming answers
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _read(self, receive: Any, send: Any) -> bytes | None:
        """The whole body, or None when it was refused (or the client left)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Any) -> None:
        detail = f"request body larger than {self.max_bytes} bytes ({self.setting})"
        await _answer(send, 413, {"detail": detail})


def _where_in(body: bytes) -> tuple[str | int, ...]:
    try:
        return nul_field(json.loads(body)) or ()
    except (ValueError, RecursionError):
        return ()  # not JSON (or absurdly nested): the NUL is refused all the same


async def _nul(send: Any, loc: tuple[str | int, ...]) -> None:
    error = {"loc": list(loc), "msg": "NUL characters are not accepted", "type": "value_error"}
    await _answer(send, 422, {"detail": [error]})


async def _answer(send: Any, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the unread rest of the body is not wanted
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
