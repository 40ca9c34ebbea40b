"""The body-size middleware over a recording ASGI app (no server needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.api.limits import BodyLimit

pytestmark = pytest.mark.hostile

LIMIT = 1024


class Recorder:
    """An ASGI app that reads the whole body and answers 200 with its length."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called, body = True, b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


async def call(
    headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[Recorder, list[Any], int]:
    app, sent, pulled = Recorder(), [], 0
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await BodyLimit(app, LIMIT)(scope, receive, send)
    return app, sent, pulled


async def test_declared_length_over_the_limit_is_refused_without_reading() -> None:
    app, sent, pulled = await call([(b"content-length", b"4096")], [b"x" * 4096])
    assert not app.called and pulled == 0
    assert sent[0]["status"] == 413
    assert (
        "larger than 1024 bytes (FAAS_HTTP_MAX_BODY_BYTES)" in json.loads(sent[1]["body"])["detail"]
    )


async def test_streamed_body_is_cut_off_as_soon_as_it_passes_the_limit() -> None:
    app, sent, pulled = await call([], [b"x" * 600] * 10)  # chunked: no content-length
    assert not app.called and pulled == 2 and sent[0]["status"] == 413


async def test_bodies_within_the_limit_reach_the_app_whole() -> None:
    app, sent, _ = await call([(b"content-length", b"1024")], [b"x" * 512, b"y" * 512])
    assert app.called and sent[0]["status"] == 200 and sent[1]["body"] == b"1024"
