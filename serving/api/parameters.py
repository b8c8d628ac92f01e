"""Path and query parameters shared by the routers (validated before an endpoint runs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from streams.schemas import ID_PATTERN

MAX_K = 200

UserId = Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN, examples=["u1"])]
ItemId = Annotated[str, Path(min_length=1, max_length=256, pattern=ID_PATTERN, examples=["i1"])]
K = Annotated[int, Query(ge=1, le=MAX_K, description="How many items (1-200).")]
Category = Annotated[
    str | None, Query(min_length=1, max_length=256, description="Only items of this category.")
]
