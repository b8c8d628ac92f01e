"""Routing rejected messages to ``dead-letters``: original bytes, reason, and where they came from.

Nothing is dropped silently: every consumer in recstream hands a message it cannot accept to a
``DeadLetters`` sink and goes on with the next one.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any, Protocol

from streams.schemas import DeadLetter
from streams.topics import DEAD_LETTER_MAX_BYTES, DEAD_LETTERS

# Room for the envelope around the base64 (4/3 larger) original bytes.
_MAX_ORIGINAL = (DEAD_LETTER_MAX_BYTES - 64 * 1024) * 3 // 4

log = logging.getLogger(__name__)


class RawSender(Protocol):
    def send(self, topic: str, value: bytes | None, *, key: bytes | None) -> Any: ...


def dead_letter(
    raw: bytes | None,
    reason: str,
    *,
    source_topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | None,
    rejected_by: str,
) -> DeadLetter:
    raw = raw or b""
    if len(raw) > _MAX_ORIGINAL:
        reason = f"{reason} (original truncated from {len(raw)} to {_MAX_ORIGINAL} bytes)"
        raw = raw[:_MAX_ORIGINAL]
    return DeadLetter(
        reason=reason,
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key_b64=base64.b64encode(key).decode() if key is not None else None,
        value_b64=base64.b64encode(raw).decode(),
        rejected_by=rejected_by,
        rejected_ms=int(time.time() * 1000),
    )


class DeadLetters:
    """Writes rejected messages to the dead-letters topic through any sender."""

    def __init__(self, sender: RawSender, *, rejected_by: str):
        self._sender = sender
        self.rejected_by = rejected_by
        self.topic = DEAD_LETTERS.name
        self.count = 0

    def reject(
        self,
        raw: bytes | None,
        reason: str,
        *,
        source_topic: str,
        partition: int | None = None,
        offset: int | None = None,
        key: bytes | None = None,
    ) -> DeadLetter:
        letter = dead_letter(
            raw,
            reason,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            key=key,
            rejected_by=self.rejected_by,
        )
        self._sender.send(self.topic, letter.model_dump_json().encode(), key=source_topic.encode())
        self.count += 1
        log.warning("dead-lettered %s[%s]@%s: %s", source_topic, partition, offset, reason)
        return letter
