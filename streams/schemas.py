"""Event schemas (JSON on Kafka), versioned, with validation that says exactly what is wrong.

Every message is a JSON object with ``"type"`` and ``"v"`` (schema version). Topics and the
types they carry:

==================  ==============================================  ===========
topic               types                                           key
==================  ==============================================  ===========
engagements         ``engagement``, ``user_deleted``                user id
items               ``item``, ``item_deleted``                      item id
item-embeddings     ``item_embedding`` (tombstone = deleted item)   item id
user-interests      ``user_interests`` (tombstone = deleted user)   user id
dead-letters        ``dead_letter``                                 source topic
==================  ==============================================  ===========

Unknown extra fields are ignored (forward compatible), and a field added later is optional (an
older message lacks it and gets its default), so adding one keeps the version; a message with
an unknown version is rejected (``InvalidEvent``) and routed to ``dead-letters``. The
``user-interests`` record's fields are documented on ``UserInterests``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import pybase64
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
MAX_MESSAGE_BYTES = 1 << 20  # larger messages are dead-lettered, never parsed
MAX_TEXT_CHARS = 20_000
MAX_EMBEDDING_DIM = 4096

# An id has no control character (C0) and no whitespace: Unicode's White_Space set, spelled out,
# since "\s" means another set in each engine that reads the pattern (pydantic's Rust regex,
# Python's re, the ECMA-262 regex of JSON Schema tools).
ID_PATTERN = r"^[^\x00-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
Id = Annotated[str, Field(min_length=1, max_length=256, pattern=ID_PATTERN)]


def _integral_float_as_int(value: Any) -> Any:
    """JSON has one kind of number: ``5.0`` is the integer 5 there (JSON Schema agrees), as some
    encoders write it; strict validation still refuses ``5.5``, strings and booleans."""
    return int(value) if type(value) is float and value.is_integer() else value


TimestampMs = Annotated[int, Field(ge=0, le=10**14), BeforeValidator(_integral_float_as_int)]
ActionName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class InvalidEvent(ValueError):
    """A message that cannot be accepted; ``reason`` says precisely why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Event(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    v: Literal[1] = 1

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=False).encode()


class Engagement(_Event):
    """A user engaged with an item (view, click, like, save, ...)."""

    type: Literal["engagement"] = "engagement"
    event_id: Id
    user_id: Id
    item_id: Id
    action: ActionName
    # The JSON schema states what the validator below enforces (JSON has no NaN or Infinity).
    weight: Annotated[float, Field(json_schema_extra={"minimum": 0})] | None = None
    ts: TimestampMs

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, w: float | None) -> float | None:
        if w is not None and (not math.isfinite(w) or w < 0):
            raise ValueError("weight must be a finite number >= 0")
        return w

    @property
    def key(self) -> bytes:
        return self.user_id.encode()


class Item(_Event):
    """A new or changed catalogue item; ``embedding`` (optional) bypasses the encoder."""

    type: Literal["item"] = "item"
    item_id: Id
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] = ""
    category: Annotated[str, Field(max_length=256)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=256)]], Field(max_length=64)] = []
    embedding: (
        Annotated[
            list[float],
            Field(
                min_length=1,
                max_length=MAX_EMBEDDING_DIM,
                json_schema_extra={"not": {"items": {"const": 0}}},  # not all zeros
            ),
        ]
        | None
    ) = None
    ts: TimestampMs

    @field_validator("embedding")
    @classmethod
    def _finite_embedding(cls, e: list[float] | None) -> list[float] | None:
        if e is not None:
            arr = np.asarray(e, dtype=np.float64)
            if not np.all(np.isfinite(arr)):
                raise ValueError("embedding must contain only finite numbers")
            if not np.any(arr):
                raise ValueError("embedding must not be all zeros")
        return e

    @property
    def key(self) -> bytes:
        return self.item_id.encode()


class ItemDeleted(_Event):
    type: Literal["item_deleted"] = "item_deleted"
    item_id: Id
    ts: TimestampMs

    @property
    def key(self) -> bytes:
        return self.item_id.encode()


class UserDeleted(_Event):
    """Forget the user everywhere."""

    type: Literal["user_deleted"] = "user_deleted"
    user_id: Id
    ts: TimestampMs

    @property
    def key(self) -> bytes:
        return self.user_id.encode()


class ItemEmbedding(_Event):
    """Value of the compacted ``item-embeddings`` topic."""

    type: Literal["item_embedding"] = "item_embedding"
    item_id: Id
    vector: str  # base64 of little-endian float32 or float16
    dtype: Literal["float32", "float16"] = "float32"
    dim: Annotated[int, Field(ge=1, le=MAX_EMBEDDING_DIM)]
    encoder_version: Annotated[str, Field(min_length=1, max_length=256)]
    source_ts: TimestampMs
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] = ""
    category: str | None = None
    tags: list[str] = []

    @classmethod
    def from_vector(
        cls,
        item_id: str,
        vector: np.ndarray,
        *,
        encoder_version: str,
        source_ts: int,
        dtype: Literal["float32", "float16"] = "float32",
        text: str = "",
        category: str | None = None,
        tags: list[str] | None = None,
    ) -> ItemEmbedding:
        vec = np.ascontiguousarray(vector, dtype=np.dtype(dtype).newbyteorder("<"))
        return cls(
            item_id=item_id,
            vector=pybase64.b64encode(vec.tobytes()).decode(),
            dtype=dtype,
            dim=int(vec.shape[0]),
            encoder_version=encoder_version,
            source_ts=source_ts,
            text=text[:MAX_TEXT_CHARS],
            category=category,
            tags=list(tags or []),
        )

    def array(self) -> np.ndarray:
        """The vector as float32 (decoded, checked against ``dim``, finite and non-zero)."""
        raw = pybase64.b64decode(self.vector, validate=True)
        vec = np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))
        if vec.shape[0] != self.dim:
            raise InvalidEvent(f"vector has {vec.shape[0]} values, dim says {self.dim}")
        out = vec.astype(np.float32)
        # Readers normalize and cluster these vectors: a zero or non-finite one cannot be used.
        if not np.isfinite(out).all() or not out.any():
            raise InvalidEvent("vector must be finite and non-zero")
        return out

    @property
    def key(self) -> bytes:
        return self.item_id.encode()


class InterestSummary(BaseModel):
    """One interest of a ``user-interests`` record: the validated wire form of what the engine
    publishes (``InterestClusters.published``)."""

    model_config = ConfigDict(frozen=True)

    medoid: str
    importance: float
    size: int
    members: list[str] = []


class UserActions(BaseModel):
    """The actions a user's interests are made of, one column per field: entry ``n`` of each
    list is the ``n``-th action the engine keeps, in the order it applied them."""

    model_config = ConfigDict(strict=True, frozen=True)

    # Plain lists (per-element constraints cost 4x as much, and a replica decodes every
    # record); ``UserInterests`` checks ``interest`` against its interests as a whole.
    items: list[str]
    ts: list[int]  # as the engagements carried them (checked there)
    interest: list[int]

    @model_validator(mode="after")
    def _equally_long(self) -> UserActions:
        if not len(self.items) == len(self.ts) == len(self.interest):
            raise ValueError(
                f"items, ts and interest differ in length ({len(self.items)}, "
                f"{len(self.ts)}, {len(self.interest)})"
            )
        return self


class UserInterests(_Event):
    """Value of the compacted ``user-interests`` topic: a user's current interests, and what
    readers need of the actions behind them (so no reader depends on the engine's state bytes).

    - ``interests``: the most important interests (the worker publishes 10), most important
      first: medoid (an item id), importance (the decayed sum of the cluster's action weights,
      at ``last_event_ts``), size (actions in the cluster) and ``members`` (the cluster's most
      recently engaged distinct items, newest first; the worker publishes 5).
    - ``n_actions``: actions the engine keeps for the user (by default those of the last 90
      days, at most 500).
    - ``last_event_id`` / ``last_event_ts``: the newest engagement applied (id, event time ms).
    - ``updated_ms``: wall clock (ms) when the worker published the record.
    - ``actions`` (optional; records of older workers lack it): every kept action, columnar, in
      the order the engine applied them: ``items`` (item id), ``ts`` (event time, ms) and
      ``interest`` (the position in ``interests`` of the action's cluster, or -1 when that
      cluster is not among the published interests). Serving derives the user's seen items
      (the set of ``items``) and the dashboard's projection from it; without it, the
      interests' medoids and members are all a reader knows.
    - ``state`` (optional): the engine's own state bytes (base64), for tools that replay the
      engine (``--published-state view|full``; ``InterestClusters.from_bytes`` reads both);
      readers of the record do not need it.

    Adding an optional field keeps the record at version 1: readers ignore fields they do not
    know, and one that lacks a field gets its default.
    """

    type: Literal["user_interests"] = "user_interests"
    user_id: Id
    interests: list[InterestSummary]
    n_actions: int
    last_event_id: str | None = None
    last_event_ts: TimestampMs
    updated_ms: TimestampMs
    actions: UserActions | None = None
    state: str | None = None

    @model_validator(mode="after")
    def _actions_point_at_interests(self) -> UserInterests:
        interest = self.actions.interest if self.actions is not None else None
        if interest and not -1 <= min(interest) <= max(interest) < len(self.interests):
            raise ValueError(
                f"actions.interest must be -1 or a position in interests (0 to "
                f"{len(self.interests) - 1}): holds {min(interest)} to {max(interest)}"
            )
        return self

    @property
    def key(self) -> bytes:
        return self.user_id.encode()


Ints = Sequence[int] | np.ndarray
Actions = tuple[Sequence[str], Ints, Ints]
"""A user's kept actions as ``user_interests_json`` takes them: (items, ts, interest)."""


def _ints(values: Ints) -> np.ndarray | list[int]:
    """What orjson writes as a list of integers: an array as it is (OPT_SERIALIZE_NUMPY, ~4x
    faster than ``tolist``) or a list."""
    if isinstance(values, np.ndarray):
        return np.ascontiguousarray(values, dtype=np.int64)
    return list(values)


def user_interests_json(
    *,
    user_id: str,
    interests: Sequence[tuple[str, float, int, Sequence[str]]],
    n_actions: int,
    last_event_id: str | None,
    last_event_ts: int,
    updated_ms: int,
    actions: Actions | None = None,
    state: bytes | None = None,
) -> bytes:
    """``UserInterests(...).to_json()`` without building the models: the same JSON, ~10x
    cheaper (the interests worker writes one for every update). ``interests`` are
    (medoid, importance, size, members); ``actions`` are (items, ts, interest), numpy arrays
    or sequences; ``state`` is raw bytes (base64-encoded here)."""
    return orjson.dumps(
        {
            "v": SCHEMA_VERSION,
            "type": "user_interests",
            "user_id": user_id,
            "interests": [
                {"medoid": m, "importance": float(imp), "size": int(size), "members": list(mem)}
                for m, imp, size, mem in interests
            ],
            "n_actions": int(n_actions),
            "last_event_id": last_event_id,
            "last_event_ts": int(last_event_ts),
            "updated_ms": int(updated_ms),
            "actions": None
            if actions is None
            else {
                "items": actions[0] if isinstance(actions[0], list | tuple) else list(actions[0]),
                "ts": _ints(actions[1]),
                "interest": _ints(actions[2]),
            },
            "state": None if state is None else pybase64.b64encode(state).decode("ascii"),
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


class DeadLetter(BaseModel):
    """Value of ``dead-letters``: the original bytes (base64) and why they were rejected.

    A letter has a bounded size (``streams.deadletters``): of an original too large for it,
    ``value_b64`` holds the first bytes only and ``truncated`` is set; ``original_size`` and
    ``original_sha256`` always describe the whole original (None for a null value, and in
    letters written before they existed). ``key_truncated``: ``key_b64`` holds a prefix.
    """

    model_config = ConfigDict(frozen=True)

    type: Literal["dead_letter"] = "dead_letter"
    v: Literal[1] = 1
    reason: str
    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key_b64: str | None = None
    value_b64: str
    rejected_by: str
    rejected_ms: int
    original_size: int | None = None
    original_sha256: str | None = None  # hex
    truncated: bool = False
    key_truncated: bool = False

    def original(self) -> bytes:
        return pybase64.b64decode(self.value_b64)


TYPES_BY_TOPIC: dict[str, tuple[str, ...]] = {
    "engagements": ("engagement", "user_deleted"),
    "items": ("item", "item_deleted"),
    "item-embeddings": ("item_embedding",),
    "user-interests": ("user_interests",),
}
_MODELS: dict[str, type[_Event]] = {
    m.model_fields["type"].default: m
    for m in (Engagement, UserDeleted, Item, ItemDeleted, ItemEmbedding, UserInterests)
}


def _describe(err: ValidationError) -> str:
    """One precise sentence for the first problem pydantic found."""
    e = err.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in _MODELS))
    kind = e["type"]
    if kind == "missing":
        return f"missing field '{loc}'"
    if kind == "json_invalid":
        return f"not JSON: {e['msg']}"
    return f"invalid field '{loc}': {e['msg']}" if loc else e["msg"]


def decode_event(raw: bytes | None, *, allowed: tuple[str, ...] | None = None) -> Any:
    """Parse and validate one message; raise ``InvalidEvent`` with a precise reason."""
    if raw is None:
        raise InvalidEvent("empty message (null value)")
    if not raw:
        raise InvalidEvent("empty message (zero-length value)")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidEvent(f"message too large: {len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)  # ~3x json.loads, but strict: no NaN, integers of 64 bits
    except orjson.JSONDecodeError:
        # What Python's json writes (NaN, big integers) gets the validators' precise reason.
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"not a JSON object (got {type(obj).__name__})")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise InvalidEvent("missing field 'type'" if kind is None else "invalid field 'type'")
    if kind not in _MODELS:
        raise InvalidEvent(f"unknown event type {kind!r}")
    if allowed is not None and kind not in allowed:
        raise InvalidEvent(
            f"event type {kind!r} does not belong here (expected {', '.join(allowed)})"
        )
    version = obj.get("v", SCHEMA_VERSION)
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise InvalidEvent(
            f"unknown schema version {version!r} for {kind!r} (supported: "
            f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))})"
        )
    try:
        return _MODELS[kind].model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent(_describe(exc)) from None


def decode_for_topic(topic: str, raw: bytes | None) -> Any:
    return decode_event(raw, allowed=TYPES_BY_TOPIC.get(topic))


def tombstone_key(key: bytes | None) -> str:
    """The id a tombstone (null value on a compacted topic) deletes: its key, which must be
    there and be UTF-8; else ``InvalidEvent``."""
    if not key:
        raise InvalidEvent("empty message (tombstone without a key)")
    try:
        return key.decode()
    except UnicodeDecodeError:
        raise InvalidEvent("tombstone key is not UTF-8") from None


def parse_event_obj(obj: dict[str, Any]) -> Any:
    """Validate an already-parsed JSON object (e.g. from an HTTP body or a JSONL line)."""
    return decode_event(json.dumps(obj).encode())


def topic_for(event: Any) -> str:
    for topic, kinds in TYPES_BY_TOPIC.items():
        if event.type in kinds:
            return topic
    raise ValueError(f"no topic carries events of type {event.type!r}")
