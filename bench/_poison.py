"""Malformed messages from a foreign client, and the dead letters they must each get.

``PoisonBurst`` sends ``n`` malformed messages to each input topic (``engagements``, ``items``)
through confluent-kafka (librdkafka: another client than any recstream role uses), spread over
``seconds`` so they mix with the valid load. Each message is unique (it carries its number), so
its dead letter can be matched to it by the original bytes the letter holds.

``check_dead_letters`` reads ``dead-letters`` and says which of them got a letter (with a
reason, from the topic they were sent to), which got more than one, and which none.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams.replay import read_topic
from streams.schemas import DeadLetter
from streams.settings import KafkaSettings
from streams.topics import DEAD_LETTERS, ENGAGEMENTS, ITEMS


def _engagement(n: int, **changes: Any) -> dict[str, Any]:
    ev = {
        "type": "engagement",
        "v": 1,
        "event_id": f"poison-{n}",
        "user_id": f"u{n % 50}",
        "item_id": "i1",
        "action": "click",
        "ts": 1_700_000_000_000 + n,
    }
    ev.update(changes)
    return {k: v for k, v in ev.items() if v is not None}


def _item(n: int, **changes: Any) -> dict[str, Any]:
    it = {"type": "item", "v": 1, "item_id": f"poison-{n}", "text": f"poison {n}", "ts": 1}
    it.update(changes)
    return {k: v for k, v in it.items() if v is not None}


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


# Kind -> message number -> bytes. Each kind is a way a producer gets a message wrong.
Maker = Callable[[int], bytes]
MALFORMED: dict[str, dict[str, Maker]] = {
    ENGAGEMENTS.name: {
        "not JSON": lambda n: b"not json at all %d" % n,
        "truncated JSON": lambda n: _json(_engagement(n))[:-7],
        "a JSON array": lambda n: _json([n, "engagement"]),
        "a missing field": lambda n: _json(_engagement(n, item_id=None)),
        "a wrong type": lambda n: _json(_engagement(n, ts=f"yesterday {n}")),
        "an unknown version": lambda n: _json(_engagement(n, v=99)),
        "another topic's event": lambda n: _json(_item(n)),
        "an id with whitespace": lambda n: _json(_engagement(n, user_id=f"user {n}")),
        "a negative weight": lambda n: _json(_engagement(n, weight=-1.5)),
        "bytes that are not UTF-8": lambda n: b"\xff\xfe\x00" + n.to_bytes(4, "little"),
    },
    ITEMS.name: {
        "not JSON": lambda n: b"<item>%d</item>" % n,
        "truncated JSON": lambda n: _json(_item(n))[:-5],
        "a JSON number": lambda n: str(n).encode(),
        "a missing field": lambda n: _json(_item(n, item_id=None)),
        "a wrong type": lambda n: _json(_item(n, tags=f"tag-{n}")),
        "an unknown version": lambda n: _json(_item(n, v=0)),
        "another topic's event": lambda n: _json(_engagement(n)),
        "an all-zero embedding": lambda n: _json(_item(n, embedding=[0.0, 0.0, 0.0])),
        "an unknown type": lambda n: _json(_item(n, type="itme")),
        "bytes that are not UTF-8": lambda n: b"\xc3\x28" + n.to_bytes(4, "little"),
    },
}


@dataclass
class PoisonBurst:
    """``n`` malformed messages per input topic, from confluent-kafka, over ``seconds``."""

    bootstrap_servers: str
    n: int
    seconds: float = 5.0
    seed: int = 0
    sent: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # bytes -> (topic, kind)
    handed_over_s: float = 0.0  # until the last message was handed to the client
    confirmed_s: float = 0.0  # until the broker had confirmed every one

    def messages(self) -> list[tuple[str, bytes | None, bytes, str]]:
        """(topic, key, value, kind), topics interleaved, in sending order."""
        rng = random.Random(self.seed)
        out: list[tuple[str, bytes | None, bytes, str]] = []
        for topic, makers in MALFORMED.items():
            kinds = sorted(makers)
            for i in range(self.n):
                kind = kinds[i % len(kinds)]
                value = makers[kind](i)
                # Some keyed as real messages are, some without a key.
                key = None if i % 3 == 0 else f"k{rng.randrange(1000)}".encode()
                out.append((topic, key, value, kind))
        rng.shuffle(out)
        return out

    def send(self) -> float:
        """Send them all (paced), wait until the broker confirmed every one; returns when the
        last was confirmed (monotonic). Raises if any was not delivered."""
        from confluent_kafka import Producer

        errors: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "client.id": "chaos-foreign-client",
                "linger.ms": 20,
                "acks": "all",
                "enable.idempotence": False,
                "log_level": 3,
            }
        )
        messages = self.messages()
        t0 = time.monotonic()
        for i, (topic, key, value, kind) in enumerate(messages):
            due = t0 + self.seconds * i / max(len(messages), 1)
            delay = due - time.monotonic()
            if delay > 0.01:
                time.sleep(delay)
            producer.produce(topic, value=value, key=key, on_delivery=delivered)
            producer.poll(0)
            self.sent[value] = (topic, kind)
        self.handed_over_s = time.monotonic() - t0
        left = producer.flush(180)
        if left or errors:
            raise RuntimeError(f"{left} poison messages unsent, {len(errors)} failed: {errors[:3]}")
        done = time.monotonic()
        self.confirmed_s = done - t0
        return done


@dataclass
class DeadLetterCheck:
    expected: int
    found: int  # distinct malformed messages with a letter that has a reason
    duplicated: int  # letters beyond the first for a message (dead letters are at-least-once)
    missing_by_kind: dict[str, int]
    wrong_topic: int  # letters whose source topic is not where the message was sent
    without_reason: int
    other_letters: dict[str, int]  # letters for messages not ours, by reason (first 60 chars)
    reasons_by_kind: dict[str, str]  # one reason seen per kind, as an example

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_dead_letters(
    settings: KafkaSettings, sent: dict[bytes, tuple[str, str]]
) -> DeadLetterCheck:
    letters_per: Counter[bytes] = Counter()
    wrong_topic = without_reason = 0
    other: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    for rec in read_topic(settings, DEAD_LETTERS.name, idle_timeout_s=2.0):
        if rec.value is None:
            continue
        letter = DeadLetter.model_validate_json(rec.value)
        original = base64.b64decode(letter.value_b64)
        where = sent.get(original)
        if where is None:
            other[letter.reason[:60]] += 1
            continue
        topic, kind = where
        if letter.source_topic != topic:
            wrong_topic += 1
            continue
        if not letter.reason.strip():
            without_reason += 1
            continue
        letters_per[original] += 1
        reasons.setdefault(f"{topic}: {kind}", letter.reason)
    missing: Counter[str] = Counter()
    for value, (topic, kind) in sent.items():
        if value not in letters_per:
            missing[f"{topic}: {kind}"] += 1
    return DeadLetterCheck(
        expected=len(sent),
        found=len(letters_per),
        duplicated=sum(letters_per.values()) - len(letters_per),
        missing_by_kind=dict(missing),
        wrong_topic=wrong_topic,
        without_reason=without_reason,
        other_letters=dict(other),
        reasons_by_kind=dict(sorted(reasons.items())),
    )
