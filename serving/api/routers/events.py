"""``POST /events``: events validated and published to Kafka, for clients without a Kafka
library."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body

from serving.api.dependencies import EventPublisherDep
from serving.api.models import EventsAccepted
from serving.api.problems import ProblemError
from streams.schemas import InvalidEvent, parse_event_obj

MAX_EVENTS_PER_POST = 1000
ACCEPTED_EVENT_TYPES = ("engagement", "user_deleted", "item", "item_deleted")

router = APIRouter(tags=["events"])


@router.post(
    "/events",
    status_code=202,
    response_model=EventsAccepted,
    responses={422: {"description": "Invalid event (problem details)"}},
)
async def post_events(
    publisher: EventPublisherDep,
    payload: Annotated[
        dict[str, Any] | list[dict[str, Any]],
        Body(description="One event object or a list of up to 1000 (recstream JSON schema)."),
    ],
) -> dict[str, Any]:
    """Validate events and publish them to Kafka (for clients without a Kafka library)."""
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
        kind = obj.get("type")
        if kind not in ACCEPTED_EVENT_TYPES:
            raise ProblemError(
                422,
                "Invalid event",
                f"event {n}: type must be one of {', '.join(ACCEPTED_EVENT_TYPES)} (got {kind!r})",
                index=n,
            )
        try:
            events.append(parse_event_obj(obj))
        except InvalidEvent as exc:
            raise ProblemError(422, "Invalid event", f"event {n}: {exc.reason}", index=n) from None
        except (TypeError, ValueError) as exc:  # e.g. an unhashable "v" trips the decoder
            raise ProblemError(422, "Invalid event", f"event {n}: {exc}", index=n) from None
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
