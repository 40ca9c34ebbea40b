"""Shared HTTP plumbing: JSON bodies whatever the Content-Type, error shapes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

_JSON = (b"content-type", b"application/json")


class JsonBodyRoute(APIRoute):
    """Treats every request body as JSON: ``curl -d '{...}'`` sends a form content type."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def as_json(request: Request) -> Response:
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            request.scope["headers"] = [*headers, _JSON]
            return await handler(Request(request.scope, request.receive))

        return as_json


def field_error(field: str, message: str, status_code: int = 422) -> JSONResponse:
    """The same shape FastAPI uses for validation errors, so clients parse one format."""
    detail = [{"loc": ["body", field], "msg": message, "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=status_code)


def plain_error(message: str, status_code: int) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status_code)


def readiness_gate(api: FastAPI, ready: Awaitable[None], what: str) -> None:
    """Requests wait for ``ready`` (migrations at start) and get 503 if it failed."""
    gate = asyncio.ensure_future(ready)

    @api.middleware("http")
    async def wait_until_ready(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            await asyncio.shield(gate)
        except Exception as exc:
            return plain_error(f"{what} not ready: {exc}", 503)
        return await call_next(request)


class PrefixRootAsSlash:
    """Serves ``/prefix`` like ``/prefix/`` (no 307 redirect) for an app mounted at a route
    prefix: ``curl localhost:8080/v1/tariffs`` must work as written."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            if scope["path"] in ("", root):
                scope = {**scope, "path": f"{root}/"}
        await self.app(scope, receive, send)
