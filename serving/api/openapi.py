"""The OpenAPI document: FastAPI's, plus what it cannot infer from the endpoints' signatures.

Every error an endpoint declares (``problem_responses``) answers ``application/problem+json``
with the ``Problem`` schema; ``install`` adds that schema and the event schemas of
``POST /events`` (whose endpoint reads its body itself) to the document's components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.api.models import Problem
from serving.api.problems import PROBLEM_MEDIA_TYPE

PROBLEM_REF = "#/components/schemas/Problem"


def problem_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each a problem details body."""
    return {
        status: {
            "description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
        }
        for status, description in descriptions.items()
    }


def install(app: FastAPI, schemas: dict[str, Any]) -> None:
    """Serve FastAPI's document with ``Problem`` and ``schemas`` among its components."""
    components = {"Problem": Problem.model_json_schema(), **schemas}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            doc.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
