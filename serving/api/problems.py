"""RFC 9457 problem details: every 4xx/5xx body is ``application/problem+json``.

Endpoints raise ``ProblemError``; the handlers here turn it, request validation errors, HTTP
errors (404, 405) and anything unhandled into problem details.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


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
    titles = {404: "Not found", 405: "Method not allowed"}
    return problem(exc.status_code, titles.get(exc.status_code, "Error"), str(exc.detail))


async def on_unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return problem(500, "Internal error", f"{type(exc).__name__}: the server failed")
