"""``/v1/functions``: run, inspect, list, stop and read logs of functions."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import EmailStr

from app.api.auth import Authenticator, Caller, CallerDep, forbidden
from app.api.common import JsonBodyRoute, field_error, plain_error, readiness_gate
from app.api.input_guard import InputGuard
from app.api.keys import keys_router
from app.control import ControlPlane, FieldError, RunNotFound
from app.runtime import RuntimeError_, RuntimeUnavailable
from app.schemas import RunAccepted, RunRequest, RunView
from app.store.api_keys import ApiKeyRepository

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing (production mode), unknown or revoked credentials"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    **_AUTH,
    404: {"description": "no such run (or another tenant's)"},
}
_FOREIGN = "a tenant key acts only for its own email"


def functions_router(control: ControlPlane) -> APIRouter:
    """Routes whose caller is identified by the app's ``Authenticator`` (``auth.install``)."""
    router = APIRouter(prefix="/v1/functions", tags=["functions"], route_class=JsonBodyRoute)

    async def own_run(caller: Caller, run_id: str) -> None:
        # Another tenant's run is "not found": ids must not leak whether they exist.
        if not caller.may_act_for((await control.get(run_id)).email):
            raise RunNotFound(run_id)

    @router.post(
        "/run",
        status_code=202,
        response_model=RunAccepted,
        responses={
            **_AUTH,
            403: {"description": "email is not the key's tenant"},
            422: {"description": "invalid field"},
            503: {"description": "the runtime has been unreachable for FAAS_RUNTIME_LOST_AFTER_S"},
        },
    )
    async def run_function(body: RunRequest, caller: CallerDep) -> RunAccepted:
        """Accept a run for the tenant: answered ``pending`` at once, its container is
        started shortly after (poll ``GET /v1/functions/{id}``; a runtime that refuses the
        image ends it ``failed`` with the cause in ``message``). The body is JSON whatever
        the Content-Type."""
        if not caller.may_act_for(str(body.email)):
            raise forbidden("body", "email", _FOREIGN)
        run = await control.submit(body)
        return RunAccepted(id=run.id, status=run.status)

    @router.get(
        "",
        response_model=list[RunView],
        responses={**_AUTH, 403: {"description": "email is not the key's tenant"}},
    )
    async def list_functions(
        email: EmailStr,
        caller: CallerDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> list[RunView]:
        """A tenant's runs, newest first."""
        if not caller.may_act_for(str(email)):
            raise forbidden("query", "email", _FOREIGN)
        return [
            RunView.model_validate(r.model_dump()) for r in await control.list(email, limit, offset)
        ]

    @router.get("/{run_id}", response_model=RunView, responses=_NOT_FOUND)
    async def get_function(run_id: str, caller: CallerDep) -> RunView:
        await own_run(caller, run_id)
        return RunView.model_validate((await control.get(run_id)).model_dump())

    @router.post("/{run_id}/stop", response_model=RunView, responses=_NOT_FOUND)
    async def stop_function(run_id: str, caller: CallerDep) -> RunView:
        """Stop the container; stopping a finished run returns it unchanged."""
        await own_run(caller, run_id)
        return RunView.model_validate((await control.stop(run_id)).model_dump())

    @router.get("/{run_id}/logs", response_class=PlainTextResponse, responses=_NOT_FOUND)
    async def function_logs(run_id: str, caller: CallerDep) -> str:
        """stdout and stderr (live while running, the stored tail afterwards)."""
        await own_run(caller, run_id)
        return await control.logs(run_id)

    return router


def install_error_handlers(api: FastAPI) -> None:
    async def field(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, FieldError)
        return field_error(exc.field, exc.message)

    # A run's image and start are the starter's business (the run ends ``failed``, naming
    # the cause); what reaches here is a stop or a logs read the runtime refused.
    async def refused(_: Request, exc: Exception) -> JSONResponse:
        return plain_error(f"the container runtime refused the operation: {exc}", 502)

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        return plain_error(f"container runtime unavailable, try again later ({exc})", 503)

    async def not_found(_: Request, exc: Exception) -> JSONResponse:
        return plain_error(str(exc), 404)

    api.add_exception_handler(FieldError, field)
    api.add_exception_handler(RuntimeError_, refused)
    api.add_exception_handler(RuntimeUnavailable, unavailable)
    api.add_exception_handler(RunNotFound, not_found)


def create_functions_api(
    control: ControlPlane,
    auth: Authenticator,
    keys: ApiKeyRepository,
    *,
    admin_token: str,
    max_body_bytes: int,
    ready: Awaitable[None] | None = None,
) -> FastAPI:
    """The functions API and the admin's key routes; requests wait for ``ready``
    (migrations) and get 503 if it failed."""
    api = FastAPI(
        title="FaaS on Ray",
        version="0.1.0",
        description="Run a container, meter what it really used, bill it exactly.",
    )
    auth.install(api)
    api.include_router(functions_router(control))
    api.include_router(keys_router(keys, admin_token))
    install_error_handlers(api)
    if ready is not None:
        readiness_gate(api, ready, "control plane")
    api.add_middleware(InputGuard, max_bytes=max_body_bytes)  # added last: runs first

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api
