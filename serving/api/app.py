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
import binascii
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import pybase64
from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.readmodels import ReadModels
from serving.recommend import InterestView, Recommendations, Recommended
from streams.schemas import InvalidEvent, parse_event_obj
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
API_KEYS_ENV = "RECSTREAM_API_KEYS"
MAX_K = 200
MAX_EVENTS_PER_POST = 1000
ACCEPTED_EVENT_TYPES = ("engagement", "user_deleted", "item", "item_deleted")
ID_PATTERN = r"^[^\s\x00-\x1f]+$"
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description=f"Needed when the server sets {API_KEYS_ENV}."
)

UserId = Annotated[str, PathParam(min_length=1, max_length=256, pattern=ID_PATTERN)]
ItemId = Annotated[str, PathParam(min_length=1, max_length=256, pattern=ID_PATTERN)]
K = Annotated[int, Query(ge=1, le=MAX_K, description="How many items (1-200).")]
Category = Annotated[
    str | None, Query(min_length=1, max_length=256, description="Only items of this category.")
]


# ---- response models (for the OpenAPI document) ----
class Explanation(BaseModel):
    source: Literal["interest", "popular"]
    medoid: str | None = None
    medoid_title: str | None = None
    importance: float | None = None
    similarity: float | None = None


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str = ""
    category: str | None = None
    interest: str | None = None  # medoid of the interest it came from
    explain: Explanation | None = None


class InterestOut(BaseModel):
    medoid: str
    title: str = ""
    importance: float
    size: int
    members: list[str] = []


class RecommendationsOut(BaseModel):
    user_id: str
    cold_start: bool
    reason: str | None = None
    items: list[RecommendedItem]
    interests: list[InterestOut] | None = None
    last_event_ts: int | None = None
    applied_ms: int | None = None
    freshness_ms: int | None = None
    took_ms: float


class Point(BaseModel):
    item_id: str
    title: str
    x: float
    y: float
    interest: int
    medoid: bool
    ts: int


class InterestsOut(BaseModel):
    user_id: str
    n_actions: int
    last_event_ts: int
    updated_ms: int
    applied_ms: int | None = None
    freshness_ms: int | None = None
    interests: list[InterestOut]
    points: list[Point] | None = None


class SimilarOut(BaseModel):
    item_id: str
    items: list[RecommendedItem]


class ItemOut(BaseModel):
    item_id: str
    title: str
    category: str | None
    tags: list[str]
    ts: int


class EventsAccepted(BaseModel):
    accepted: int
    topics: dict[str, int]


class UserListOut(BaseModel):
    users: list[dict[str, Any]]


# ---- problem details ----
class FastJSONResponse(JSONResponse):
    """JSON through orjson (~5x faster than the standard library's encoder; the hot path)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


class _Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


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
    )

    async def require_key(key: Annotated[str | None, Depends(API_KEY_HEADER)]) -> None:
        if keys and not (key and any(hmac.compare_digest(key, k) for k in keys)):
            raise _Problem(401, "Unauthorized", "a valid X-API-Key header is required")

    # Without keys there is nothing to check (and the OpenAPI document shows no key header).
    protected = [Depends(require_key)] if keys else []

    # ---- errors: always problem details ----
    @app.exception_handler(_Problem)
    async def _on_problem(request: Request, exc: _Problem) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        loc = ".".join(errors[0]["loc"]) if errors else ""
        msg = str(errors[0]["msg"]) if errors else "invalid request"
        detail = f"{loc}: {msg}" if loc else msg
        return problem(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "Internal error", f"{type(exc).__name__}: the server failed")

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
            "items": [_item_out(i, recs.interests, rm, explain) for i in recs.items],
            "interests": [_interest_out(i, rm) for i in recs.interests] if explain else None,
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
            raise _Problem(404, "Unknown user", f"no interests known for user {user_id!r}")
        profile = rm.profile(user_id)
        out: dict[str, Any] = {
            "user_id": user_id,
            "n_actions": record.n_actions,
            "last_event_ts": record.last_event_ts,
            "updated_ms": record.updated_ms,
            "interests": [
                _interest_out(InterestView(i.medoid, i.importance, i.size, tuple(i.members)), rm)
                for i in record.interests
            ],
        }
        if profile is not None and profile.applied_ms:
            out["applied_ms"] = profile.applied_ms
            out["freshness_ms"] = max(profile.applied_ms - profile.last_event_ts, 0)
        if points:
            clusters, pts = _projection(record.state, rm, max_points)
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
            raise _Problem(404, "Unknown item", f"no live item {item_id!r}")
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
            raise _Problem(404, "Unknown item", f"no live item {item_id!r}") from None
        return {"item_id": item_id, "items": [_item_out(h, [], rm, False) for h in hits]}

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
            raise _Problem(422, "Invalid event", "no events given")
        if len(objs) > MAX_EVENTS_PER_POST:
            raise _Problem(
                413,
                "Too many events",
                f"{len(objs)} events; at most {MAX_EVENTS_PER_POST} per request",
            )
        events = []
        for n, obj in enumerate(objs):
            kind = obj.get("type")
            if kind not in ACCEPTED_EVENT_TYPES:
                raise _Problem(
                    422,
                    "Invalid event",
                    f"event {n}: type must be one of {', '.join(ACCEPTED_EVENT_TYPES)}"
                    f" (got {kind!r})",
                    index=n,
                )
            try:
                events.append(parse_event_obj(obj))
            except InvalidEvent as exc:
                raise _Problem(422, "Invalid event", f"event {n}: {exc.reason}", index=n) from None
            except (TypeError, ValueError) as exc:  # e.g. an unhashable "v" trips the decoder
                raise _Problem(422, "Invalid event", f"event {n}: {exc}", index=n) from None
        from streams.publish import PublishError
        from streams.schemas import topic_for

        try:
            await asyncio.to_thread(_publish, events)
        except (PublishError, OSError) as exc:
            raise _Problem(503, "Kafka unavailable", f"events not confirmed: {exc}") from None
        except Exception as exc:  # kafka-python raises its own KafkaError family
            if type(exc).__module__.startswith("kafka"):
                raise _Problem(503, "Kafka unavailable", f"events not confirmed: {exc}") from None
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


_POPULAR_EXPLANATION = Explanation(source="popular").model_dump()


def _item_out(
    item: Recommended, interests: Sequence[InterestView], rm: ReadModels, explain: bool
) -> dict[str, Any]:
    """A ``RecommendedItem`` as a dict with every field (sent without re-validation)."""
    medoid = interests[item.interest].medoid if item.interest is not None else None
    out: dict[str, Any] = {
        "item_id": item.item_id,
        "score": round(item.score, 6),
        "title": item.title,
        "category": item.category,
        "interest": medoid,
        "explain": None,
    }
    if explain:
        if item.interest is None:
            out["explain"] = dict(_POPULAR_EXPLANATION)
        else:
            source = interests[item.interest]
            info = rm.catalog.get(source.medoid)
            out["explain"] = {
                "source": "interest",
                "medoid": source.medoid,
                "medoid_title": info.title if info else None,
                "importance": round(source.importance, 6),
                "similarity": round(item.score, 6),
            }
    return out


def _interest_out(interest: InterestView, rm: ReadModels) -> dict[str, Any]:
    info = rm.catalog.get(interest.medoid)
    return {
        "medoid": interest.medoid,
        "title": info.title if info else "",
        "importance": round(interest.importance, 6),
        "size": interest.size,
        "members": list(interest.members),
    }


def _projection(
    state_b64: str | None, rm: ReadModels, max_points: int
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """All clusters and a 2-D PCA of the user's most recent actions (distinct items)."""
    if not state_b64:
        return None, []
    from streams.interests import InterestClusters, InterestConfig, StateFormatError

    try:
        state = InterestClusters.from_bytes(
            pybase64.b64decode(state_b64, validate=True),
            rm.item_vectors,
            config=InterestConfig(max_actions=1_000_000),
        )
    except (StateFormatError, binascii.Error, ValueError):
        return None, []
    if state.n_actions == 0:
        return [], []
    now = state.last_ts
    clusters = state.interests(now)
    # Cluster j (creation order) is at position rank[j] of `interests()` (importance order).
    order = np.argsort(-state.importances(now), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    ids, cl = state.assignments()
    vectors, times = state.action_vectors(), state.action_times()
    latest: dict[str, int] = {}
    for pos in np.argsort(-times, kind="stable").tolist():  # newest action of each item
        latest.setdefault(ids[pos], pos)
        if len(latest) >= max_points:
            break
    rows = np.fromiter(latest.values(), dtype=np.intp, count=len(latest))
    xy = _pca2(vectors[rows])
    medoids = {c.medoid for c in clusters}
    points = []
    for (item_id, pos), (x, y) in zip(latest.items(), xy.tolist(), strict=True):
        info = rm.catalog.get(item_id)
        points.append(
            {
                "item_id": item_id,
                "title": info.title if info else "",
                "x": round(x, 5),
                "y": round(y, 5),
                "interest": int(rank[cl[pos]]),
                "medoid": item_id in medoids,
                "ts": int(times[pos]),
            }
        )
    out = [
        _interest_out(InterestView(c.medoid, c.importance, c.size, c.members[:5]), rm)
        for c in clusters
    ]
    return out, points


def _pca2(x: np.ndarray) -> np.ndarray:
    """Rows projected on their first two principal components (zeros when degenerate)."""
    if len(x) == 0:
        return np.zeros((0, 2))
    centered = x.astype(np.float64) - x.mean(axis=0)
    if len(x) < 2 or not np.any(centered):
        return np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    xy = centered @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(x), 2 - xy.shape[1]))])
    return xy
