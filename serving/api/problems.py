"""RFC 9457 problem details: every 4xx/5xx body is ``application/problem+json``.

Endpoints raise ``ProblemError``; the handlers here turn it, request validation errors, HTTP
errors (404, 405, 413) and anything unhandled into problem details.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Invalid request",
    500: "Internal error",
    503: "Unavailable",
}


def problem(
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


class ProblemError(Exception):
    """An error answered as problem details (``extra`` members join the body)."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


async def on_problem(request: Request, exc: ProblemError) -> JSONResponse:
    return problem(exc.status, exc.title, exc.detail, **exc.extra)


async def on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
        for e in exc.errors()
    ]
    loc = ".".join(errors[0]["loc"]) if errors else ""
    msg = str(errors[0]["msg"]) if errors else "invalid request"
    detail = f"{loc}: {msg}" if loc else msg
    return problem(422, "Invalid request", detail, errors=errors)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # The headers matter: a 405 carries the Allow header RFC 9110 requires.
    status = exc.status_code
    return problem(status, TITLES.get(status, "Error"), str(exc.detail), headers=exc.headers)


async def on_unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return problem(500, "Internal error", f"{type(exc).__name__}: the server failed")
