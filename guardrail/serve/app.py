"""``create_app(config)``: the OpenAI-compatible FastAPI app over the served chat models.

Routes: ``POST /v1/chat/completions`` (:mod:`guardrail.serve.completions`), ``GET /v1/models``
(the served policies as models), ``GET /health`` and ``GET /metrics`` (Prometheus text). Every
``/v1`` route and ``/metrics`` need a bearer key when the config has keys; ``/health`` is open.
Every error, unknown routes included, is OpenAI-shaped. FastAPI's generated docs are off: the
API is OpenAI's, and an open ``/docs`` is surface nobody asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from guardrail.serve import protocol as p
from guardrail.serve.completions import ServerState, chat_completions
from guardrail.serve.config import ServeConfig
from guardrail.serve.limits import Queue, check_key
from guardrail.scheduler import SchedulerStats
from guardrail.serve.metrics import ServeMetrics
from guardrail.serve.served import build_served, pick, warm_up


def create_app(config: ServeConfig) -> FastAPI:
    """Build the app: every served policy is resolved now (a bad one raises
    :class:`~guardrail.errors.ConfigError` here); models load at startup (the lifespan, before
    the server listens) when ``config.preload``, else on first use."""
    served = build_served(config)
    metrics = ServeMetrics()
    state = ServerState(config, served, Queue(config.max_queue), metrics)
    metrics.in_flight.set_function(lambda: state.queue.depth)
    metrics.queue_limit.set(config.max_queue)

    def stats() -> list[SchedulerStats]:  # the loaded models' schedulers (each engine once)
        engines = {id(e): e for e in (s.model.engine() for s in served.values() if s.loaded)}
        return [e.scheduler.stats() for e in engines.values()]

    metrics.decoding.set_function(lambda: sum(x.running + x.prefilling for x in stats()))
    metrics.waiting.set_function(lambda: sum(x.waiting for x in stats()))
    metrics.streams.set_function(lambda: sum(x.live_streams for x in stats()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.preload:  # a model that cannot load stops the server here, before it listens
            await asyncio.to_thread(warm_up, served)
        yield

    app = FastAPI(title="guardrail", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.guardrail = state

    async def require_key(request: Request) -> None:
        check_key(request.headers.get("authorization"), config.api_keys)

    @app.exception_handler(p.ApiError)
    async def _api_error(request: Request, e: p.ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse(p.error_body(message, kind), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return JSONResponse(p.error_body(f"invalid request: {e.errors()[0]['msg']}",
                                         "invalid_request_error"), status_code=400)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @v1.post("/chat/completions")
    async def _chat(request: Request) -> Response:
        return await chat_completions(request, state)

    @v1.get("/models")
    async def _models() -> dict[str, object]:
        return p.models_body([p.model_body(s.name, state.created, **s.describe())
                              for s in served.values()])

    @v1.get("/models/{name:path}")
    async def _model(name: str) -> dict[str, object]:
        s = pick(served, name, "model")
        return p.model_body(s.name, state.created, **s.describe())

    app.include_router(v1)

    @app.get("/health")
    async def _health() -> dict[str, object]:
        """Open to all: the served names only when no key is needed to list them anyway."""
        out: dict[str, object] = {
            "status": "ok", "loaded": all(s.loaded for s in served.values()),
            "in_flight": state.queue.depth, "max_queue": config.max_queue}
        if not config.api_keys:
            out["models"] = {s.name: s.loaded for s in served.values()}
        return out

    @app.get("/metrics", dependencies=[Depends(require_key)])
    async def _metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


__all__ = ["create_app"]
