"""`build_app(settings)`: the FastAPI application, its engines' lifespan and error handling."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import __version__
from server.access_log import AccessLogMiddleware
from server.admin import admin_router
from server.admission import Admission
from server.auth import area_of, refusal
from server.config import Settings
from server.engine_config import EngineBuilder, check_engine_arg_names
from server.engines import ManagedEngine
from server.errors import APIError
from server.model_manager import ModelManager
from server.models import ModelRouter, ServedModel
from server.pages import install_pages
from server.protocol import ParamError
from server.reward import make_scorer
from server.routes import ClientDisconnected, openai_router, ops_router, vllm_router
from server.startup import plan_policy, plan_rerankers, plan_reward, read_desired_state
from server.state import AppState

logger = logging.getLogger("bonserve.app")


# --------------------------------------------------------------------------- middleware


class GuardMiddleware:
    """Before any route sees a request: refuse a wrong or missing key (server/auth.py) without
    reading the body, then read the body with a cap and refuse one over it with 413, whether
    its size was announced (Content-Length) or not (chunked). The body is handed on whole;
    later `receive` calls go to the client, so routes still see it disconnect."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        error = refusal(area_of(scope["path"]), authorization, self.settings)
        if error is None:
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.settings.max_body_bytes:
                error = _too_large(self.settings.max_body_bytes)
        if error is not None:
            await error.response()(scope, receive, send)
            return
        body, more, disconnected = bytearray(), True, False
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.settings.max_body_bytes:
                await _too_large(self.settings.max_body_bytes).response()(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                if disconnected:
                    return {"type": "http.disconnect"}
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"request body exceeds {max_bytes} bytes", code="request_too_large")


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    @app.exception_handler(ClientDisconnected)
    async def _gone(_: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return APIError(
                400, "We could not parse the JSON body of your request.", code="invalid_json"
            ).response()
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, ParamError):
            return APIError(400, str(cause), param=cause.param, code="invalid_value").response()
        if first.get("type") == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        elif first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'."
        else:
            message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}"
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}
        return APIError(
            exc.status_code, str(exc.detail), type=kinds.get(exc.status_code, "invalid_request_error")
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        return APIError(500, "internal server error", type="server_error").response()


# --------------------------------------------------------------------------- app


def build_state(settings: Settings) -> AppState:
    desired = read_desired_state(settings)  # a promotion recorded in the registry wins (--alias)
    policy = plan_policy(settings, desired)
    builder = EngineBuilder(settings, lora_override=policy.lora_options)
    try:
        check_engine_arg_names(builder.policy_options.engine_args)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc
    engines = {
        "policy": ManagedEngine(
            "policy",
            builder.policy(policy.path, policy.served_name, "policy"),
            restart_backoff_s=settings.engine_restart_backoff_s,
        )
    }
    reward = None
    rerank = plan_rerankers(settings, desired, policy)
    reward_start = plan_reward(settings, desired)
    if reward_start is not None:  # the default reward model; the others start with the manager
        rm_path, rm_name, rm_kind = reward_start
        engines["reward"] = ManagedEngine(
            "reward",
            builder.reranker(rm_path, rm_name, "reward", rm_kind),
            restart_backoff_s=settings.engine_restart_backoff_s,
        )
        reward = make_scorer(engines["reward"], rm_name, rm_kind)
        rerank.default, rerank.scorers[rm_name] = rm_name, reward
    elif settings.default_best_of.strip() not in ("", "1") and not settings.reward_models:
        raise SystemExit("--default-best-of needs --reward-model or --reward-models to rerank candidates")
    router = ModelRouter()
    router.add(ServedModel(name=policy.served_name, engine=engines["policy"], entry=policy.weights))
    if settings.alias and policy.lora is None:  # a start-up adapter gets it once added
        router.set_alias(settings.alias, policy.served_name)
    rerank.export(router)  # the rerank gauges exist from the start
    manager = ModelManager(
        settings,
        router,
        engines,
        builder,
        policy_base=policy.base,
        reward=reward,
        start=policy,
        rerank=rerank,
    )
    return AppState(
        settings=settings,
        router=router,
        engines=engines,
        admission=Admission(
            settings.max_concurrent_requests,
            settings.max_waiting_requests,
            settings.accelerator_price_per_hour,
        ),
        manager=manager,
    )


def build_app(settings: Settings, state: AppState | None = None) -> FastAPI:
    state = state or build_state(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Engines start in the background: /health answers at once and /ready turns true
        # when every engine is up (what Kubernetes' startup and readiness probes expect).
        async def start_all() -> None:
            # One at a time: vLLM takes the reward engine's thread settings from the process
            # environment while it spawns (server/engines.py), so engine starts are serialised.
            for engine in state.engines.values():
                await engine.start()
            if state.manager is not None:  # then the registry's desired state, and follow it
                await state.manager.start()
                if settings.reconcile_interval_s > 0:
                    await state.manager.follow(settings.reconcile_interval_s)

        starting = [asyncio.create_task(start_all())]
        try:
            yield
        finally:
            state.draining = True
            for task in starting:
                task.cancel()
            await asyncio.gather(*starting, return_exceptions=True)
            if state.manager is not None:
                await state.manager.close()  # the spare engine (--standby-engine)
            await asyncio.gather(*(e.stop() for e in state.engines.values()))

    # docs_url/redoc_url None: server/pages.py serves /docs and /redoc from local files
    app = FastAPI(title="bonserve", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.bonserve = state
    app.include_router(openai_router)
    app.include_router(vllm_router)
    app.include_router(ops_router)
    app.include_router(admin_router)
    install_pages(app)
    _install_error_handlers(app, settings)
    app.add_middleware(GuardMiddleware, settings=settings)
    app.add_middleware(AccessLogMiddleware)  # outermost: sees every response, 413s included
    return app
