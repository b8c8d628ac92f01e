"""The typed response models: the OpenAPI document's schemas, and what FastAPI validates the
answers of most endpoints against (the hot path builds its dicts directly: ``responses``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


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
    """An interest in a response: the OpenAPI document's schema of what ``interest_out``
    builds (with the medoid's title from the catalog)."""

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
    interest: int  # position in the response's interests; -1: not among them
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


class Problem(BaseModel):
    """RFC 9457 problem details, the body of every 4xx/5xx answer (``application/problem+json``);
    some carry more members (``errors`` of a 422, ``index`` of the invalid event, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
