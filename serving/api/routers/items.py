"""An item's metadata and the items similar to it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.api.dependencies import ReadModelsDep
from serving.api.models import ItemOut, SimilarOut
from serving.api.openapi import problem_responses
from serving.api.parameters import Category, ItemId, K
from serving.api.problems import ProblemError
from serving.api.responses import item_out

router = APIRouter(tags=["items"])
ERRORS = problem_responses({404: "No live item with this id", 422: "Invalid parameters"})


@router.get("/items/{item_id}", response_model=ItemOut, responses=ERRORS)
async def item(rm: ReadModelsDep, item_id: ItemId) -> dict[str, Any]:
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


@router.get("/items/{item_id}/similar", response_model=SimilarOut, responses=ERRORS)
async def similar(
    rm: ReadModelsDep, item_id: ItemId, k: K = 20, category: Category = None
) -> dict[str, Any]:
    """The items nearest to this one in embedding space."""
    rec = rm.recommender
    try:
        if rec is None:
            raise KeyError(item_id)
        hits = rec.similar(item_id, k, category=category)
    except KeyError:
        raise ProblemError(404, "Unknown item", f"no live item {item_id!r}") from None
    return {"item_id": item_id, "items": [item_out(h, [], rm, False) for h in hits]}
