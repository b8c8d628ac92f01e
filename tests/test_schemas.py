import base64
import json
import re
from typing import Any

import numpy as np
import pytest

from streams.schemas import (
    ID_PATTERN,
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


def test_the_workers_user_interests_json_with_actions_is_the_models_json_to_the_byte() -> None:
    from streams.schemas import InterestSummary, UserActions, UserInterests, user_interests_json

    interests = [("i7", 2.375, 3, ("i7", "i2")), ("i4", 0.5, 1, ("i4",))]
    # As the engine gives them: a tuple of ids and integer arrays (here of another width, and
    # a strided view).
    items = ("i2", "i7", "i9", "i4", "i7")
    ts = np.array([5, 1_700_000_000_001, 1_700_000_000_002, 1_700_000_000_003, 0] * 2)[::2]
    interest = np.array([0, 0, -1, 1, 0], dtype=np.int32)
    fields: dict[str, Any] = {
        "user_id": "user-1",
        "n_actions": 5,
        "last_event_id": "e5",
        "last_event_ts": 1_700_000_000_003,
        "updated_ms": 1_700_000_000_456,
    }

    fast = user_interests_json(interests=interests, actions=(items, ts, interest), **fields)

    model = UserInterests(
        interests=[
            InterestSummary(medoid=m, importance=imp, size=n, members=list(mem))
            for m, imp, n, mem in interests
        ],
        actions=UserActions(items=list(items), ts=ts.tolist(), interest=interest.tolist()),
        **fields,
    )
    assert fast == model.to_json()
    assert decode_for_topic("user-interests", fast) == model
    # A record of an older worker (no actions) is still a valid version 1 record.
    older = json.loads(fast)
    del older["actions"]
    assert decode_for_topic("user-interests", json.dumps(older).encode()).actions is None


@pytest.mark.parametrize(
    ("actions", "expected"),
    [
        (
            {"items": ["a", "b"], "ts": [1], "interest": [0, 0]},
            "items, ts and interest differ in length (2, 1, 2)",
        ),
        (
            {"items": ["a"], "ts": [1], "interest": [1]},
            "actions.interest must be -1 or a position in interests (0 to 0): holds 1 to 1",
        ),
        (
            {"items": ["a"], "ts": [1], "interest": [-2]},
            "actions.interest must be -1 or a position in interests (0 to 0): holds -2 to -2",
        ),
        ({"items": ["a"], "ts": ["1"], "interest": [0]}, "invalid field 'actions.ts.0'"),
        ({"items": [7], "ts": [1], "interest": [0]}, "invalid field 'actions.items.0'"),
        ({"items": ["a"], "ts": [1]}, "missing field 'actions.interest'"),
    ],
)
def test_user_interests_actions_that_do_not_fit_get_a_precise_reason(
    actions: dict[str, Any], expected: str
) -> None:
    record = {
        "type": "user_interests",
        "user_id": "u1",
        "interests": [{"medoid": "a", "importance": 1.0, "size": 1, "members": ["a"]}],
        "n_actions": 1,
        "last_event_ts": 1,
        "updated_ms": 2,
        "actions": actions,
    }
    assert expected in reason_for(json.dumps(record).encode(), "user-interests")


def test_an_integral_number_is_an_integer_timestamp_and_nothing_else_is() -> None:
    # JSON has one kind of number: 5.0 is the integer 5 (JSON Schema agrees).
    event = decode_for_topic("engagements", json.dumps({**GOOD, "ts": 1700.0}).encode())
    assert event.ts == 1700 and type(event.ts) is int
    for ts, reason in [
        (1700.5, "Input should be a valid integer"),
        ("1700", "Input should be a valid integer"),
        (-1.0, "Input should be greater than or equal to 0"),
        (1e20, "Input should be less than or equal to 100000000000000"),
    ]:
        assert (
            reason_for(json.dumps({**GOOD, "ts": ts}).encode()) == f"invalid field 'ts': {reason}"
        )


def test_the_id_pattern_means_the_same_in_python_and_in_pydantic() -> None:
    """No C0 control and no Unicode whitespace, whichever engine reads it: pydantic's Rust regex
    (validation) and Python's re (what schemathesis generates from) agree on every code point."""
    from pydantic import TypeAdapter

    from streams.schemas import Id

    pattern, ids = re.compile(ID_PATTERN), TypeAdapter(Id)
    refused = []
    # Every whitespace character is in the first plane; the others are sampled.
    for cp in [*range(0xD800), *range(0xE000, 0x10000), *range(0x10000, 0x110000, 251)]:
        c = chr(cp)
        expected = not (cp <= 0x20 or c.isspace())
        assert bool(pattern.match(c)) == expected, hex(cp)
        try:
            assert ids.validate_python(c) == c and expected, hex(cp)
        except ValueError:
            assert not expected, hex(cp)
            refused.append(cp)
    # C0 and space, NEL, NBSP, OGHAM SPACE, U+2000-U+200A, LS, PS, NNBSP, MMSP, IDEOGRAPHIC SPACE
    assert len(refused) == 33 + 1 + 1 + 1 + 11 + 1 + 1 + 1 + 1 + 1
