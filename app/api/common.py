"""Shared HTTP plumbing: JSON bodies whatever the Content-Type, error shapes."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
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
