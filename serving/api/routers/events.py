"""``POST /events``: events validated and published to Kafka, for clients without a Kafka
library.

The endpoint reads its body itself: strict JSON (RFC 8259: no NaN or Infinity, no lone
surrogates, nested at most ``MAX_BODY_DEPTH`` levels) parsed by orjson, then each event
(``MAX_EVENT_DEPTH`` levels at most) validated by the topics' own decoder, so a 422 names the
event and the field. The OpenAPI document shows the event schemas (``EVENT_SCHEMAS``) that
validation enforces.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from pydantic import Field, TypeAdapter

from serving.api.dependencies import EventPublisherDep
from serving.api.models import EventsAccepted
from serving.api.openapi import problem_responses
from serving.api.problems import ProblemError
from streams.schemas import (
    Engagement,
    InvalidEvent,
    Item,
    ItemDeleted,
    UserDeleted,
    decode_event,
)

MAX_EVENTS_PER_POST = 1000
MAX_BODY_DEPTH = 1024  # orjson's parser
MAX_EVENT_DEPTH = 254  # orjson's encoder, which writes each event for the topics' decoder
ACCEPTED_EVENT_TYPES = ("engagement", "user_deleted", "item", "item_deleted")

_Event = Annotated[Engagement | Item | ItemDeleted | UserDeleted, Field(discriminator="type")]
_EventsBody = _Event | Annotated[list[_Event], Field(min_length=1, max_length=MAX_EVENTS_PER_POST)]
_BODY_SCHEMA = TypeAdapter(_EventsBody).json_schema(ref_template="#/components/schemas/{model}")
EVENT_SCHEMAS: dict[str, Any] = _BODY_SCHEMA.pop("$defs")
for _schema in EVENT_SCHEMAS.values():
    # The models default `type` for Python callers; a posted or published event must say it.
    _schema["required"] = ["type", *_schema.get("required", [])]

router = APIRouter(tags=["events"])


def _json_media_type(content_type: str | None) -> bool:
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_events(body: bytes) -> list[Any]:
    """The events of a ``POST /events`` body; ``ProblemError`` (413 or 422) says what is wrong."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        detail = f"the body is not JSON (RFC 8259): {exc}"
        if body[exc.pos : exc.pos + 9].lstrip(b"-").startswith((b"NaN", b"Infinity")):
            detail += "; NaN and Infinity are not JSON numbers"
        raise ProblemError(422, "Invalid JSON", detail) from None
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
        if not isinstance(obj, dict):
            raise ProblemError(
                422,
                "Invalid event",
                f"event {n}: not a JSON object (got {type(obj).__name__})",
                index=n,
            )
        kind = obj.get("type")
        if kind not in ACCEPTED_EVENT_TYPES:
            raise ProblemError(
                422,
                "Invalid event",
                f"event {n}: type must be one of {', '.join(ACCEPTED_EVENT_TYPES)} "
                f"(got {_short(kind)})",
                index=n,
            )
        try:
            # The event's own bytes, as a topic would carry them, for the topics' decoder.
            raw = orjson.dumps(obj)
        except orjson.JSONEncodeError:
            raise ProblemError(
                422, "Invalid event", f"event {n}: nested deeper than {MAX_EVENT_DEPTH}", index=n
            ) from None
        try:
            events.append(decode_event(raw))
        except InvalidEvent as exc:
            raise ProblemError(422, "Invalid event", f"event {n}: {exc.reason}", index=n) from None
        except (TypeError, ValueError) as exc:  # e.g. an unhashable "v" trips the decoder
            raise ProblemError(422, "Invalid event", f"event {n}: {exc}", index=n) from None
    return events


@router.post(
    "/events",
    status_code=202,
    response_model=EventsAccepted,
    responses=problem_responses(
        {
            413: f"Body over the size cap, or more than {MAX_EVENTS_PER_POST} events",
            415: "Body not sent as application/json",
            422: "Not JSON, or an invalid event (the detail names it)",
            503: "Kafka did not confirm the events",
        }
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": f"One event or a list of 1 to {MAX_EVENTS_PER_POST}.",
            "content": {"application/json": {"schema": _BODY_SCHEMA}},
        }
    },
)
async def post_events(request: Request, publisher: EventPublisherDep) -> dict[str, Any]:
    """Validate events and publish them to Kafka (for clients without a Kafka library)."""
    content_type = request.headers.get("content-type")
    if not _json_media_type(content_type):
        raise ProblemError(
            415, "Unsupported media type", f"send application/json (got {_short(content_type)})"
        )
    body = await request.body()  # RequestLimits caps it
    # Validation of a large body runs beside the event loop, which keeps answering queries.
    events = await asyncio.to_thread(parse_events, body)
    from streams.publish import PublishError
    from streams.schemas import topic_for

    try:
        await asyncio.to_thread(publisher.publish, events)
    except (PublishError, OSError) as exc:
        raise ProblemError(503, "Kafka unavailable", f"events not confirmed: {exc}") from None
    except Exception as exc:  # kafka-python raises its own KafkaError family
        if type(exc).__module__.startswith("kafka"):
            raise ProblemError(503, "Kafka unavailable", f"events not confirmed: {exc}") from None
        raise
    topics: dict[str, int] = {}
    for ev in events:
        topics[topic_for(ev)] = topics.get(topic_for(ev), 0) + 1
    return {"accepted": len(events), "topics": topics}
