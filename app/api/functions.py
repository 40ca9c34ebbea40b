"""``/v1/functions``: run, inspect, list, stop and read logs of functions."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import EmailStr

from app.api.common import JsonBodyRoute, field_error, plain_error, readiness_gate
from app.control import ControlPlane, FieldError, RunConflict, RunNotFound
from app.runtime import ImageNotFound, RuntimeError_, RuntimeUnavailable
from app.schemas import RunAccepted, RunRequest, RunView

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such run"}}


def functions_router(control: ControlPlane) -> APIRouter:
    router = APIRouter(prefix="/v1/functions", tags=["functions"], route_class=JsonBodyRoute)

    @router.post(
        "/run",
        status_code=202,
        response_model=RunAccepted,
        responses={422: {"description": "invalid field"}, 503: {"description": "runtime down"}},
    )
    async def run_function(body: RunRequest) -> RunAccepted:
        """Start a container for the tenant. The body is JSON whatever the Content-Type."""
        run = await control.submit(body)
        return RunAccepted(id=run.id, status=run.status)

    @router.get("", response_model=list[RunView])
    async def list_functions(
        email: EmailStr,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> list[RunView]:
        """A tenant's runs, newest first."""
        return [
            RunView.model_validate(r.model_dump()) for r in await control.list(email, limit, offset)
        ]

    @router.get("/{run_id}", response_model=RunView, responses=_NOT_FOUND)
    async def get_function(run_id: str) -> RunView:
        return RunView.model_validate((await control.get(run_id)).model_dump())

    @router.post("/{run_id}/stop", response_model=RunView, responses=_NOT_FOUND)
    async def stop_function(run_id: str) -> RunView:
        """Stop the container; stopping a finished run returns it unchanged."""
        return RunView.model_validate((await control.stop(run_id)).model_dump())

    @router.get("/{run_id}/logs", response_class=PlainTextResponse, responses=_NOT_FOUND)
    async def function_logs(run_id: str) -> str:
        """stdout and stderr (live while running, the stored tail afterwards)."""
        return await control.logs(run_id)

    return router


def install_error_handlers(api: FastAPI) -> None:
    async def field(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldError)
        return field_error(exc.field, exc.message)

    async def image(_: Request, exc: Exception) -> JSONResponse:
        return field_error("image_name", f"image not available to the runtime: {exc}")

    async def refused(_: Request, exc: Exception) -> JSONResponse:
        return field_error("image_name", f"the runtime could not start the container: {exc}")

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        return plain_error(f"container runtime unavailable, try again later ({exc})", 503)

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return plain_error(str(exc), 404)

    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return plain_error(str(exc), 409)

    api.add_exception_handler(FieldError, field)
    api.add_exception_handler(ImageNotFound, image)
    api.add_exception_handler(RuntimeError_, refused)
    api.add_exception_handler(RuntimeUnavailable, unavailable)
    api.add_exception_handler(RunNotFound, not_found)
    api.add_exception_handler(RunConflict, conflict)


def create_functions_api(control: ControlPlane, ready: Awaitable[None] | None = None) -> FastAPI:
    """The functions API; requests wait for ``ready`` (migrations) and get 503 if it failed."""
    api = FastAPI(
        title="FaaS on Ray",
        version="0.1.0",
        description="Run a container, meter what it really used, bill it exactly.",
    )
    api.include_router(functions_router(control))
    install_error_handlers(api)
    if ready is not None:
        readiness_gate(api, ready, "control plane")

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api
