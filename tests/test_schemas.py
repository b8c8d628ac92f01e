import base64
import json
from typing import Any

import numpy as np
import pytest

from streams.schemas import (
    MAX_MESSAGE_BYTES,
    Engagement,
    InvalidEvent,
    Item,
    ItemEmbedding,
    decode_event,
    decode_for_topic,
    topic_for,
)

GOOD = {
    "type": "engagement",
    "v": 1,
    "event_id": "e1",
    "user_id": "u1",
    "item_id": "i1",
    "action": "click",
    "ts": 1_700_000_000_000,
}


def reason_for(raw: bytes | None, topic: str = "engagements") -> str:
    with pytest.raises(InvalidEvent) as exc:
        decode_for_topic(topic, raw)
    return exc.value.reason


def test_valid_engagement_round_trips() -> None:
    event = decode_for_topic("engagements", json.dumps(GOOD).encode())
    assert isinstance(event, Engagement)
    assert event.weight is None
    assert decode_event(event.to_json()) == event
    assert topic_for(event) == "engagements"
    assert event.key == b"u1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b"", "empty message (zero-length value)"),
        (None, "empty message (null value)"),
        (b"[1, 2]", "not a JSON object"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(),
            "missing field 'user_id'",
        ),
        (json.dumps({**GOOD, "ts": "yesterday"}).encode(), "invalid field 'ts'"),
        (json.dumps({**GOOD, "weight": -2}).encode(), "invalid field 'weight'"),
        (json.dumps({**GOOD, "v": 7}).encode(), "unknown schema version 7"),
        (json.dumps({**GOOD, "type": "purchase"}).encode(), "unknown event type 'purchase'"),
        (json.dumps({**GOOD, "user_id": "has space"}).encode(), "invalid field 'user_id'"),
        (json.dumps({**GOOD, "pad": "x" * MAX_MESSAGE_BYTES}).encode(), "message too large"),
        (json.dumps({"type": "item", "item_id": "i", "ts": 1}).encode(), "does not belong here"),
    ],
)
def test_bad_messages_get_a_precise_reason(raw: bytes | None, expected: str) -> None:
    assert expected in reason_for(raw)


def test_item_embedding_vectors_round_trip_in_both_dtypes() -> None:
    vec = np.random.default_rng(0).normal(size=16).astype(np.float32)
    for dtype, tol in (("float32", 0.0), ("float16", 1e-2)):
        rec = ItemEmbedding.from_vector("i1", vec, encoder_version="v", source_ts=5, dtype=dtype)
        back = decode_for_topic("item-embeddings", rec.to_json())
        np.testing.assert_allclose(back.array(), vec, atol=tol)


def test_item_with_non_finite_or_zero_embedding_is_rejected() -> None:
    base = {"type": "item", "item_id": "i", "ts": 1, "text": "t"}
    assert "finite" in reason_for(
        json.dumps({**base, "embedding": [1.0, float("nan")]}).encode(), "items"
    )
    assert "zeros" in reason_for(json.dumps({**base, "embedding": [0.0, 0.0]}).encode(), "items")
    assert isinstance(decode_for_topic("items", json.dumps(base).encode()), Item)


@pytest.mark.parametrize("with_state", [True, False])
def test_the_workers_user_interests_json_is_the_models_json_to_the_byte(with_state: bool) -> None:
    from streams.schemas import InterestSummary, UserInterests, user_interests_json

    interests = [("i7", 2.375, 3, ("i7", "i2", "i9")), ("i4", 0.1 + 0.2, 1, ("i4",))]
    state = b"RSIC\x01\x00\xff state bytes" if with_state else None
    fields: dict[str, Any] = {
        "user_id": "user-1",
        "n_actions": 4,
        "last_event_id": "e4" if with_state else None,
        "last_event_ts": 1_700_000_000_123,
        "updated_ms": 1_700_000_000_456,
    }

    fast = user_interests_json(interests=interests, state=state, **fields)

    model = UserInterests(
        interests=[
            InterestSummary(medoid=m, importance=imp, size=n, members=list(mem))
            for m, imp, n, mem in interests
        ],
        state=base64.b64encode(state).decode() if state else None,
        **fields,
    )
    assert fast == model.to_json()
    assert UserInterests.model_validate_json(fast) == model
