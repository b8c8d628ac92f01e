"""The HTTP API (FastAPI): live recommendations, similar items, interests, events, dashboard.

``create_app(read_models, settings)`` builds the app around a ``ReadModels`` (started and closed
with the app). Endpoints (OpenAPI at ``/docs``):

- ``GET /users/{user_id}/recommendations?k=20&explain=false&exclude_seen=true&category=&sample=``
- ``GET /users/{user_id}/interests?points=false`` (``points``: 2-D PCA of recent actions)
- ``GET /users?limit=50`` (recently updated users, for the dashboard)
- ``GET /items/{item_id}`` and ``GET /items/{item_id}/similar?k=20&category=``
- ``POST /events`` (one event or a list; engagement, user_deleted, item, item_deleted) -> 202
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus), dashboard at ``/``.

Every 4xx/5xx body is RFC 9457 problem details (``application/problem+json``). When the
environment variable ``RECSTREAM_API_KEYS`` holds a comma-separated list of keys, every endpoint
except the health checks, ``/metrics`` and the static dashboard page needs one in ``X-API-Key``.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.models import (
    EventsAccepted,
    InterestsOut,
    ItemOut,
    RecommendationsOut,
    SimilarOut,
    UserListOut,
)
from serving.api.parameters import Category, ItemId, K, UserId
from serving.api.problems import (
    ProblemError,
    on_http_error,
    on_invalid_request,
    on_problem,
    on_unhandled_error,
    problem,
)
from serving.api.projection import projection
from serving.api.responses import FastJSONResponse, interest_out, item_out
from serving.readmodels import ReadModels
from serving.recommend import InterestView, Recommendations
from streams.schemas import InvalidEvent, parse_event_obj
from streams.settings import KafkaSettings

STATIC_DIR = Path(__file__).parent / "static"
API_KEYS_ENV = "RECSTREAM_API_KEYS"
MAX_EVENTS_PER_POST = 1000
ACCEPTED_EVENT_TYPES = ("engagement", "user_deleted", "item", "item_deleted")
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description=f"Needed when the server sets {API_KEYS_ENV}."
)


def _api_keys() -> frozenset[str]:
    raw = os.environ.get(API_KEYS_ENV, "")
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


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
) -> FastAPI:
    """The API around ``read_models`` (started on startup and closed on shutdown when
    ``manage_read_models``). ``api_keys`` None = read ``RECSTREAM_API_KEYS``."""
    rm = read_models
    keys = frozenset(api_keys) if api_keys is not None else _api_keys()
    kafka = settings or rm.settings
    publisher_lock = threading.Lock()
    publisher: list[Any] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_read_models:
            await asyncio.to_thread(rm.start)
        try:
            yield
        finally:
            for pub in publisher:
                pub.close()
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

    async def require_key(key: Annotated[str | None, Depends(API_KEY_HEADER)]) -> None:
        if keys and not (key and any(hmac.compare_digest(key, k) for k in keys)):
            raise ProblemError(401, "Unauthorized", "a valid X-API-Key header is required")

    # Without keys there is nothing to check (and the OpenAPI document shows no key header).
    protected = [Depends(require_key)] if keys else []

    # ---- health ----
    @app.get("/healthz", tags=["health"])
    async def healthz() -> Response:
        """Liveness: the process answers and the read models' consumer is running."""
        if rm.error is not None or (rm.connected and not rm.alive):
            return problem(503, "Unhealthy", f"read models stopped: {rm.error!r}")
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", tags=["health"])
    async def readyz() -> Response:
        """Readiness: the index and stores caught up with the topic ends seen at start."""
        status = rm.status()
        if not status["ready"] or status["error"]:
            return problem(503, "Not ready", "catching up with the topics", **status)
        return JSONResponse(status)

    @app.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(rm.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---- queries ----
    @app.get(
        "/users/{user_id}/recommendations",
        response_model=RecommendationsOut,
        dependencies=protected,
        tags=["recommendations"],
    )
    async def recommendations(
        user_id: UserId,
        k: K = 20,
        explain: Annotated[bool, Query(description="Name each item's interest.")] = False,
        exclude_seen: Annotated[
            bool, Query(description="Drop items the user engaged with.")
        ] = True,
        category: Category = None,
        sample: Annotated[
            bool, Query(description="Sample interests by importance instead of the top ones.")
        ] = False,
    ) -> Response:
        """What this user should see now (cold start for an unknown user)."""
        started = time.perf_counter()
        profile = rm.profile(user_id)
        rec = rm.recommender
        if rec is None:
            recs = Recommendations(user_id, [], True, reason="no items indexed yet")
        else:
            recs = rec.recommend(
                profile,
                k,
                user_id=user_id,
                exclude_seen=exclude_seen,
                category=category,
                sample=sample,
            )
        rm.metrics.recommendations.labels("cold_start" if recs.cold_start else "personal").inc()
        # Every field of RecommendationsOut, built here and sent as is: this is the hot path,
        # and validating our own output against the model cost ~10% of a request.
        out: dict[str, Any] = {
            "user_id": user_id,
            "cold_start": recs.cold_start,
            "reason": recs.reason or None,
            "items": [item_out(i, recs.interests, rm, explain) for i in recs.items],
            "interests": [interest_out(i, rm) for i in recs.interests] if explain else None,
            "last_event_ts": None,
            "applied_ms": None,
            "freshness_ms": None,
        }
        if profile is not None:
            out["last_event_ts"] = profile.last_event_ts
            if profile.applied_ms:
                out["applied_ms"] = profile.applied_ms
                out["freshness_ms"] = max(profile.applied_ms - profile.last_event_ts, 0)
        out["took_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return FastJSONResponse(out)

    @app.get(
        "/users/{user_id}/interests",
        response_model=InterestsOut,
        dependencies=protected,
        tags=["users"],
    )
    async def interests(
        user_id: UserId,
        points: Annotated[
            bool, Query(description="Add a 2-D PCA projection of the recent actions.")
        ] = False,
        max_points: Annotated[int, Query(ge=10, le=1000)] = 300,
    ) -> dict[str, Any]:
        """The user's interest clusters: medoid, importance, size, sample members."""
        record = rm.record(user_id)
        if record is None:
            raise ProblemError(404, "Unknown user", f"no interests known for user {user_id!r}")
        profile = rm.profile(user_id)
        out: dict[str, Any] = {
            "user_id": user_id,
            "n_actions": record.n_actions,
            "last_event_ts": record.last_event_ts,
            "updated_ms": record.updated_ms,
            "interests": [
                interest_out(InterestView(i.medoid, i.importance, i.size, tuple(i.members)), rm)
                for i in record.interests
            ],
        }
        if profile is not None and profile.applied_ms:
            out["applied_ms"] = profile.applied_ms
            out["freshness_ms"] = max(profile.applied_ms - profile.last_event_ts, 0)
        if points:
            clusters, pts = projection(record.state, rm, max_points)
            if clusters is not None:
                out["interests"] = clusters
            out["points"] = pts
        return out

    @app.get("/users", response_model=UserListOut, dependencies=protected, tags=["users"])
    async def users(limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
        """Recently updated users, newest first (for the dashboard's picker)."""
        recent = list(rm.recent_users.items())[-limit:][::-1]
        return {"users": [{"user_id": u, "last_event_ts": ts} for u, ts in recent]}

    @app.get("/items/{item_id}", response_model=ItemOut, dependencies=protected, tags=["items"])
    async def item(item_id: ItemId) -> dict[str, Any]:
        info = rm.catalog.get(item_id)
        if info is None:
            raise ProblemError(404, "Unknown item", f"no live item {item_id!r}")
        return {
            "item_id": item_id,
            "title": info.title,
            "category": info.category,
            "tags": list(info.tags),
            "ts": info.ts,
        }

    @app.get(
        "/items/{item_id}/similar",
        response_model=SimilarOut,
        dependencies=protected,
        tags=["items"],
    )
    async def similar(item_id: ItemId, k: K = 20, category: Category = None) -> dict[str, Any]:
        """The items nearest to this one in embedding space."""
        rec = rm.recommender
        try:
            if rec is None:
                raise KeyError(item_id)
            hits = rec.similar(item_id, k, category=category)
        except KeyError:
            raise ProblemError(404, "Unknown item", f"no live item {item_id!r}") from None
        return {"item_id": item_id, "items": [item_out(h, [], rm, False) for h in hits]}

    # ---- events ----
    def _publisher() -> Any:
        with publisher_lock:
            if not publisher:
                from streams.publish import Publisher

                publisher.append(Publisher(kafka, linger_ms=2))
            return publisher[0]

    def _publish(events: list[Any]) -> None:
        pub = _publisher()
        for ev in events:
            pub.publish(ev)
        pub.flush(timeout_s=10.0)

    @app.post(
        "/events",
        status_code=202,
        response_model=EventsAccepted,
        dependencies=protected,
        tags=["events"],
        responses={422: {"description": "Invalid event (problem details)"}},
    )
    async def post_events(
        payload: Annotated[
            dict[str, Any] | list[dict[str, Any]],
            Body(description="One event object or a list of up to 1000 (recstream JSON schema)."),
        ],
    ) -> dict[str, Any]:
        """Validate events and publish them to Kafka (for clients without a Kafka library)."""
        objs = payload if isinstance(payload, list) else [payload]
        if not objs:
            raise ProblemError(422, "Invalid event", "no events given")
        if len(objs) > MAX_EVENTS_PER_POST:
            raise ProblemError(
                413,
                "Too many events",
                f"{len(objs)} events; at most {MAX_EVENTS_PER_POST} per request",
            )
        events = []
        for n, obj in enumerate(objs):
            kind = obj.get("type")
            if kind not in ACCEPTED_EVENT_TYPES:
                raise ProblemError(
                    422,
                    "Invalid event",
                    f"event {n}: type must be one of {', '.join(ACCEPTED_EVENT_TYPES)}"
                    f" (got {kind!r})",
                    index=n,
                )
            try:
                events.append(parse_event_obj(obj))
            except InvalidEvent as exc:
                raise ProblemError(
                    422, "Invalid event", f"event {n}: {exc.reason}", index=n
                ) from None
            except (TypeError, ValueError) as exc:  # e.g. an unhashable "v" trips the decoder
                raise ProblemError(422, "Invalid event", f"event {n}: {exc}", index=n) from None
        from streams.publish import PublishError
        from streams.schemas import topic_for

        try:
            await asyncio.to_thread(_publish, events)
        except (PublishError, OSError) as exc:
            raise ProblemError(503, "Kafka unavailable", f"events not confirmed: {exc}") from None
        except Exception as exc:  # kafka-python raises its own KafkaError family
            if type(exc).__module__.startswith("kafka"):
                raise ProblemError(
                    503, "Kafka unavailable", f"events not confirmed: {exc}"
                ) from None
            raise
        topics: dict[str, int] = {}
        for ev in events:
            topics[topic_for(ev)] = topics.get(topic_for(ev), 0) + 1
        return {"accepted": len(events), "topics": topics}

    # ---- dashboard ----
    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(_Timing, read_models=rm)
    return app
