"""The input guard middleware over a recording ASGI app (no server needed)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.api.input_guard import InputGuard, nul_field

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
    headers: list[tuple[bytes, bytes]], chunks: list[bytes], path: str = "/", query: bytes = b""
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

    scope = {
        "type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
        "query_string": query, "headers": headers,
    }  # fmt: skip
    await InputGuard(app, LIMIT)(scope, receive, send)
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


def detail(sent: list[Any]) -> Any:
    return json.loads(sent[1]["body"])["detail"]


async def test_nul_in_a_json_field_is_refused_naming_the_field() -> None:
    body = json.dumps({"email": "a@b.c", "env": {"K": "v\x00"}}).encode()
    app, sent, _ = await call([], [body])
    assert not app.called and sent[0]["status"] == 422
    assert detail(sent)[0]["loc"] == ["body", "env", "K"]
    raw = b'{"tariff": "x\x00"}'  # a raw NUL is not even JSON: refused all the same
    app, sent, _ = await call([], [raw])
    assert not app.called and sent[0]["status"] == 422 and detail(sent)[0]["loc"] == ["body"]


async def test_nul_in_path_or_query_is_refused() -> None:
    app, sent, _ = await call([], [b""], path="/v1/functions/%00")
    assert not app.called and detail(sent)[0]["loc"] == ["path"]
    app, sent, _ = await call([], [b""], query=b"email=a%00@b.c")
    assert not app.called and detail(sent)[0]["loc"] == ["query"]


async def test_an_escaped_backslash_before_u0000_is_not_a_nul() -> None:
    body = json.dumps({"command": ["printf", "\\u0000"]}).encode()
    app, sent, _ = await call([], [body])
    assert app.called and sent[0]["status"] == 200


def test_nul_field_walks_lists_dicts_and_keys() -> None:
    assert nul_field({"a": [1, {"b": "x\x00"}]}) == ("a", 1, "b")
    assert nul_field({"k\x00": 1}) == ("k\x00",)
    assert nul_field({"a": [1, 2.5, None, True]}) is None


async def test_a_deeply_nested_body_with_a_nul_is_still_a_client_error() -> None:
    deep = b"[" * 100_000 + b'"\\u0000"' + b"]" * 100_000
    app = Recorder()
    big = InputGuard(app, 10 * len(deep))
    messages = [{"type": "http.request", "body": deep, "more_body": False}]
    out: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        out.append(message)

    scope = {"type": "http", "path": "/", "raw_path": b"/", "query_string": b"", "headers": []}
    await big(scope, receive, send)
    assert not app.called
    assert out[0]["status"] == 422 and detail(out)[0]["loc"] == ["body"]
