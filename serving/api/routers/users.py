"""A user's recommendations and interests, and the recently updated users."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from serving.api.dependencies import ReadModelsDep
from serving.api.models import InterestsOut, RecommendationsOut, UserListOut
from serving.api.openapi import problem_responses
from serving.api.parameters import Category, K, UserId
from serving.api.problems import ProblemError
from serving.api.projection import projection
from serving.api.responses import FastJSONResponse, interest_out, item_out, live_interests
from serving.recommend import Recommendations

router = APIRouter()


@router.get(
    "/users/{user_id}/recommendations",
    response_model=RecommendationsOut,
    tags=["recommendations"],
    responses=problem_responses({422: "Invalid parameters"}),
)
async def recommendations(
    rm: ReadModelsDep,
    user_id: UserId,
    k: K = 20,
    explain: Annotated[bool, Query(description="Name each item's interest.")] = False,
    exclude_seen: Annotated[bool, Query(description="Drop items the user engaged with.")] = True,
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


@router.get(
    "/users/{user_id}/interests",
    response_model=InterestsOut,
    tags=["users"],
    responses=problem_responses(
        {404: "No interests known for this user", 422: "Invalid parameters"}
    ),
)
async def interests(
    rm: ReadModelsDep,
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
    applied_ms = rm.cached_applied_ms(user_id)
    out: dict[str, Any] = {
        "user_id": user_id,
        "n_actions": record.n_actions,
        "last_event_ts": record.last_event_ts,
        "updated_ms": record.updated_ms,
        "interests": [interest_out(i, rm) for i in live_interests(record.interests, rm)],
    }
    if applied_ms:
        out["applied_ms"] = applied_ms
        out["freshness_ms"] = max(applied_ms - record.last_event_ts, 0)
    if points:
        out["points"] = projection(record, rm, max_points)
    return out


@router.get(
    "/users",
    response_model=UserListOut,
    tags=["users"],
    responses=problem_responses({422: "Invalid parameters"}),
)
async def users(
    rm: ReadModelsDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    """Recently updated users, newest first (for the dashboard's picker)."""
    recent = list(rm.recent_users.items())[-limit:][::-1]
    return {"users": [{"user_id": u, "last_event_ts": ts} for u, ts in recent]}
