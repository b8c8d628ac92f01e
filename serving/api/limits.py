"""Limits every request meets before an endpoint runs: the size of its body and the encoding of
its URL (``RequestLimits``, pure ASGI middleware).

- A body announced larger than ``max_body_bytes`` (``Content-Length``) gets 413 before a byte of
  it is read. A body sent without a length (chunked) is counted as it arrives and the reading
  stops at the cap with the same 413, so at most the cap plus one chunk is ever held; uvicorn
  drops whatever the client still sends after the answer, without keeping it.
- A path or query string whose percent-escapes do not decode as UTF-8 gets 400: the server would
  otherwise decode them to U+FFFD and answer for an id the client never sent.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.problems import problem

MAX_BODY_BYTES = 16 * 1024 * 1024


def body_too_large(limit: int, size: int | None = None) -> str:
    got = f"{size} bytes" if size is not None else "more bytes"
    return f"request body of {got}; at most {limit} bytes per request"


def _utf8(raw: bytes) -> bool:
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class RequestLimits:
    """413 for a body over ``max_body_bytes``, 400 for a URL that is not UTF-8 (see module)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rejection = self._reject_early(scope)
        if rejection is not None:
            await rejection(scope, receive, send)
            return
        limit = self.max_body_bytes
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the endpoint's body read: the HTTP error handler answers.
                    raise HTTPException(413, body_too_large(limit))
            return message

        await self.app(scope, receive_within_limit, send)

    def _reject_early(self, scope: Scope) -> Any:
        raw_path = scope.get("raw_path")
        if raw_path is not None and not _utf8(raw_path):
            return problem(400, "Bad request", "the path's percent-escapes are not UTF-8")
        if not _utf8(scope.get("query_string", b"").replace(b"+", b" ")):
            return problem(400, "Bad request", "the query string's percent-escapes are not UTF-8")
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    size = int(value)
                except ValueError:
                    return problem(400, "Bad request", "Content-Length is not a number")
                if size > self.max_body_bytes:
                    return problem(
                        413, "Content too large", body_too_large(self.max_body_bytes, size)
                    )
        return None
