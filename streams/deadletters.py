"""Routing rejected messages to ``dead-letters``: original bytes, reason, and where they came from.

Nothing is dropped silently: every consumer in recstream hands a message it cannot accept to a
``DeadLetters`` sink (the interests worker: to its ``Delivery``, on faust's producer) and goes
on with the next one.

A letter always fits: its JSON stays within ``LETTER_MAX_BYTES`` whatever the size of the
original, its key and the reason (``dead_letter``). Should a producer or the broker still refuse
one, the same letter without the original's bytes (``without_original``: reason, size, digest,
position) goes in its place; should that be refused too, the loss is logged at ERROR with all
that identifies the original on its topic, and counted. Sending a letter never raises.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from streams.schemas import DeadLetter
from streams.settings import KafkaSettings
from streams.topics import DEAD_LETTER_MAX_BYTES, DEAD_LETTERS

LETTER_MAX_BYTES = DEAD_LETTER_MAX_BYTES - 64 * 1024
"""Largest letter (its JSON): the 64 KiB left under the limit hold the record's key and the
record and batch framing many times over."""
MAX_REASON_CHARS = 2_000
MAX_KEY_BYTES = 1_024  # ids are at most 256 characters: a longer key is kept as a prefix
_ENVELOPE_MAX_BYTES = 16 * 1024
"""Everything of a letter but ``value_b64``, at worst: the reason JSON-escaped at 6 bytes a
character (12,000), the key's prefix in base64 (1,368), the digest and the other fields."""
MAX_ORIGINAL_BYTES = (LETTER_MAX_BYTES - _ENVELOPE_MAX_BYTES) // 4 * 3
"""Originals up to this size (688,560 bytes) travel whole, in base64 (4 bytes for every 3); of a
larger one, this many first bytes."""

# kafka-python gives up on a record after its delivery timeout (120 s), but a flush can hang
# past it when the broker dies mid-request: a letter not confirmed by then is taken as refused.
_SETTLE_TIMEOUT_S = 130.0

log = logging.getLogger(__name__)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def bounded_reason(reason: str) -> str:
    """``reason`` as JSON can carry it (a lone surrogate becomes "?"), cut to
    ``MAX_REASON_CHARS`` with a note saying so."""
    reason = reason.encode("utf-8", "replace").decode("utf-8")
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    note = f"... (reason cut from {len(reason)} characters)"
    return reason[: MAX_REASON_CHARS - len(note)] + note


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
    """The letter for one rejected message; its JSON is at most ``LETTER_MAX_BYTES``."""
    value = b"" if raw is None else raw
    kept_key = None if key is None else key[:MAX_KEY_BYTES]
    return DeadLetter(
        reason=bounded_reason(reason),
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key_b64=None if kept_key is None else _b64(kept_key),
        value_b64=_b64(value[:MAX_ORIGINAL_BYTES]),
        rejected_by=rejected_by,
        rejected_ms=int(time.time() * 1000),
        original_size=None if raw is None else len(raw),
        original_sha256=None if raw is None else hashlib.sha256(raw).hexdigest(),
        truncated=len(value) > MAX_ORIGINAL_BYTES,
        key_truncated=key is not None and len(key) > MAX_KEY_BYTES,
    )


def without_original(letter: DeadLetter, why: BaseException) -> DeadLetter:
    """``letter`` without the original's bytes (its size and digest stay), the reason saying why:
    what is sent when the whole letter was refused."""
    return letter.model_copy(
        update={
            "value_b64": "",
            "truncated": bool(letter.original_size),
            "reason": bounded_reason(
                f"{letter.reason} [sent without the original's bytes: the letter was refused: "
                f"{type(why).__name__}: {why}]"
            ),
        }
    )


def letter_bytes(letter: DeadLetter) -> bytes:
    return letter.model_dump_json().encode()


def letter_key(letter: DeadLetter) -> bytes:
    return letter.source_topic.encode()


def describe(letter: DeadLetter) -> str:
    """What identifies a letter's original on its topic, for the log."""
    return (
        f"{letter.source_topic}[{letter.partition}]@{letter.offset} "
        f"({letter.original_size} bytes, sha256 {letter.original_sha256})"
    )


def log_refused(letter: DeadLetter, error: BaseException) -> None:
    log.error(
        "dead letter for %s refused (%s: %s); sending it without the original's bytes",
        describe(letter),
        type(error).__name__,
        error,
    )


def log_lost(letter: DeadLetter, error: BaseException) -> None:
    log.error(
        "DEAD LETTER LOST for %s, rejected because %r: even without the original's bytes it was "
        "refused (%s: %s); the original stays on its topic at that offset",
        describe(letter),
        letter.reason,
        type(error).__name__,
        error,
    )


class LetterProducer(Protocol):
    """What ``DeadLetters`` needs of a producer (kafka-python's ``KafkaProducer``)."""

    def send(self, topic: str, value: bytes | None = ..., key: bytes | None = ...) -> Any: ...

    def flush(self, timeout: float | None = ...) -> None: ...


def letter_producer(settings: KafkaSettings) -> Any:
    """A kafka-python producer for letters, allowed requests of ``DEAD_LETTER_MAX_BYTES``."""
    from kafka import KafkaProducer

    return KafkaProducer(
        **settings.kafka_python(), linger_ms=5, max_request_size=DEAD_LETTER_MAX_BYTES
    )


class DeadLetters:
    """Writes rejected messages to the dead-letters topic through a kafka-python producer.

    ``reject`` sends a letter; ``settle`` returns once the broker has every letter sent since the
    last call (or its stand-in without the original's bytes, or the loss is logged), so a
    consumer that settles before it commits never commits past a letter still in flight.
    """

    def __init__(
        self,
        producer: LetterProducer,
        *,
        rejected_by: str,
        on_lost: Callable[[DeadLetter], None] | None = None,
    ):
        self._producer = producer
        self.rejected_by = rejected_by
        self._on_lost = on_lost
        self.count = 0  # messages rejected
        self.lost = 0  # of them, messages whose letter was refused even without their bytes
        self._in_flight: list[tuple[DeadLetter, Any, bool]] = []  # (letter, future, stand-in)

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
        self.count += 1
        log.warning("dead-lettered %s[%s]@%s: %s", source_topic, partition, offset, letter.reason)
        self._send(letter, stand_in=False)
        return letter

    def settle(self) -> None:
        """Wait until every letter sent is written or replaced (see the class); never raises."""
        while self._in_flight:
            try:
                self._producer.flush(timeout=_SETTLE_TIMEOUT_S)
            except Exception:  # the futures below say what failed
                log.debug("flushing dead letters failed", exc_info=True)
            in_flight, self._in_flight = self._in_flight, []
            for letter, future, stand_in in in_flight:
                try:
                    future.get(timeout=0)
                except Exception as exc:
                    self._refused(letter, exc, stand_in)

    def _send(self, letter: DeadLetter, *, stand_in: bool) -> None:
        try:
            future = self._producer.send(
                DEAD_LETTERS.name, value=letter_bytes(letter), key=letter_key(letter)
            )
        except Exception as exc:  # refused by the producer itself (size, metadata, buffer)
            self._refused(letter, exc, stand_in)
            return
        self._in_flight.append((letter, future, stand_in))

    def _refused(self, letter: DeadLetter, error: BaseException, stand_in: bool) -> None:
        if not stand_in:
            log_refused(letter, error)
            self._send(without_original(letter, error), stand_in=True)
            return
        self.lost += 1
        log_lost(letter, error)
        if self._on_lost is not None:
            self._on_lost(letter)
