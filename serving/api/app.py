"""The HTTP API (FastAPI): live recommendations, similar items, interests, events, dashboard.

``create_app(read_models, settings)`` builds the app around a ``ReadModels`` (started and closed
with the app). Endpoints (OpenAPI at ``/docs``), one router per resource in ``routers``:

- ``GET /users/{user_id}/recommendations?k=20&explain=false&exclude_seen=true&category=&sample=``
- ``GET /users/{user_id}/interests?points=false`` (``points``: 2-D PCA of recent actions)
- ``GET /users?limit=50`` (recently updated users, for the dashboard)
- ``GET /items/{item_id}`` and ``GET /items/{item_id}/similar?k=20&category=``
- ``POST /events`` (one event or a list; engagement, user_deleted, item, item_deleted) -> 202
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus), dashboard at ``/``.

Every 4xx/5xx body is RFC 9457 problem details (``application/problem+json``; ``problems``),
and the OpenAPI document declares each one (``openapi``). Bodies over ``max_body_bytes`` get 413
and URLs whose percent-escapes are not UTF-8 get 400 before any endpoint runs (``limits``).
When the environment variable ``RECSTREAM_API_KEYS`` holds a comma-separated list of keys, every
endpoint except the health checks, ``/metrics`` and the static dashboard page needs one in
``X-API-Key`` (``dependencies``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api import openapi
from serving.api.dependencies import EventPublisher, api_keys_from_env, require_api_key
from serving.api.limits import MAX_BODY_BYTES, RequestLimits
from serving.api.problems import (
    ProblemError,
    on_http_error,
    on_invalid_request,
    on_problem,
    on_unhandled_error,
)
from serving.api.routers import dashboard, events, health, items, users
from serving.readmodels import ReadModels
from streams.settings import KafkaSettings


class _Timing:
    """Pure ASGI middleware: request latency per route template (cheaper than BaseHTTP)."""

    def __init__(self, app: ASGIApp, read_models: ReadModels) -> None:
        self.app = app
        self.metrics = read_models.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(name, str(status[0])).observe(
                time.perf_counter() - started
            )


def create_app(
    read_models: ReadModels,
    settings: KafkaSettings | None = None,
    *,
    api_keys: Sequence[str] | None = None,
    manage_read_models: bool = True,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API around ``read_models`` (started on startup and closed on shutdown when
    ``manage_read_models``). ``api_keys`` None = read ``RECSTREAM_API_KEYS``."""
    rm = read_models
    keys = frozenset(api_keys) if api_keys is not None else api_keys_from_env()
    publisher = EventPublisher(settings or rm.settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_read_models:
            await asyncio.to_thread(rm.start)
        try:
            yield
        finally:
            publisher.close()
            if manage_read_models:
                await asyncio.to_thread(rm.close)

    app = FastAPI(
        title="recstream",
        version="0.1.0",
        description="Live recommendations from streaming PinnerSage interests.",
        lifespan=lifespan,
        exception_handlers={
            ProblemError: on_problem,
            RequestValidationError: on_invalid_request,
            StarletteHTTPException: on_http_error,
            Exception: on_unhandled_error,
        },
    )
    app.state.read_models = rm
    app.state.api_keys = keys
    app.state.event_publisher = publisher
    # Without keys there is nothing to check (and the OpenAPI document shows no key header).
    protected = [Depends(require_api_key)] if keys else []
    # Any URL may be refused by RequestLimits; a key-guarded one also for its key.
    anywhere = openapi.problem_responses({400: "The URL's percent-escapes are not UTF-8"})
    guarded = {
        **anywhere,
        **(openapi.problem_responses({401: "Missing or wrong X-API-Key"}) if keys else {}),
    }
    app.include_router(health.router, responses=anywhere)
    app.include_router(users.router, dependencies=protected, responses=guarded)
    app.include_router(items.router, dependencies=protected, responses=guarded)
    app.include_router(events.router, dependencies=protected, responses=guarded)
    app.include_router(dashboard.router)
    openapi.install(app, events.EVENT_SCHEMAS)
    app.add_middleware(RequestLimits, max_body_bytes=max_body_bytes)
    app.add_middleware(_Timing, read_models=rm)
    return app
