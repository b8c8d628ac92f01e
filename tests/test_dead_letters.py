"""Dead letters always fit, and one that is refused is never lost silently.

The bound is checked on the letters themselves; the refusals with real clients (kafka-python for
the validating consumers and serving, aiokafka as faust's producer for the interests worker)
against the real broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer
from kafka.record.default_records import DefaultRecordBatchBuilder
from prometheus_client import CollectorRegistry

from streams.broker import EmbeddedBroker
from streams.deadletters import (
    LETTER_MAX_BYTES,
    MAX_KEY_BYTES,
    MAX_ORIGINAL_BYTES,
    MAX_REASON_CHARS,
    DeadLetters,
    dead_letter,
    letter_bytes,
    letter_key,
    without_original,
)
from streams.replay import read_topic
from streams.schemas import DeadLetter
from streams.topics import DEAD_LETTER_MAX_BYTES, DEAD_LETTERS, ENGAGEMENTS
from streams.workers.interests.delivery import Delivery
from streams.workers.interests.metrics import WorkerMetrics

REASON = "invalid field 'item_id': String should have at most 256 characters"


def _letter(raw: bytes | None, reason: str = REASON, key: bytes | None = b"u1") -> DeadLetter:
    return dead_letter(
        raw,
        reason,
        source_topic=ENGAGEMENTS.name,
        partition=3,
        offset=41,
        key=key,
        rejected_by="test",
    )


def _record_size(letter: DeadLetter) -> int:
    """The letter as a producer sizes it against max_request_size: one record in its batch."""
    return int(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(
            letter_key(letter), letter_bytes(letter), []
        )
    )


def test_the_bound_leaves_room_under_the_smallest_limit() -> None:
    assert DEAD_LETTER_MAX_BYTES == 1_000_000  # faust's default max_request_size: the smallest
    assert LETTER_MAX_BYTES == DEAD_LETTER_MAX_BYTES - 64 * 1024 == 934_464
    assert MAX_ORIGINAL_BYTES == 688_560
    assert DEAD_LETTERS.config["max.message.bytes"] == str(DEAD_LETTER_MAX_BYTES)


@pytest.mark.parametrize(
    "size", [0, 1024, MAX_ORIGINAL_BYTES, MAX_ORIGINAL_BYTES + 1, 900_000, 5 * 1024 * 1024]
)
def test_a_letter_fits_whatever_the_size_of_the_original(size: int) -> None:
    raw = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    letter = _letter(raw)
    encoded = letter_bytes(letter)
    assert len(encoded) <= LETTER_MAX_BYTES
    assert _record_size(letter) <= DEAD_LETTER_MAX_BYTES
    back = DeadLetter.model_validate_json(encoded)
    assert back.reason == REASON
    assert back.original_size == size
    assert back.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert back.truncated is (size > MAX_ORIGINAL_BYTES)
    assert back.original() == raw[:MAX_ORIGINAL_BYTES]
    assert (back.partition, back.offset, back.key_b64, back.key_truncated) == (3, 41, "dTE=", False)


def test_a_null_value_has_no_size_nor_digest() -> None:
    letter = _letter(None, "empty message (null value)")
    assert (letter.value_b64, letter.original_size, letter.original_sha256) == ("", None, None)
    assert letter.truncated is False


def test_a_2_mb_reason_and_a_huge_key_are_cut_and_the_letter_still_fits() -> None:
    # Control characters are the worst case: JSON escapes each as 6 bytes. A lone surrogate
    # cannot be JSON at all.
    reason = "\x01" * (2 * 1024 * 1024 - 1) + "\ud800"
    key = b"k" * 100_000
    letter = _letter(b"y" * (5 * 1024 * 1024), reason, key)
    encoded = letter_bytes(letter)
    assert len(encoded) <= LETTER_MAX_BYTES
    assert _record_size(letter) <= DEAD_LETTER_MAX_BYTES
    note = "... (reason cut from 2097152 characters)"
    assert letter.reason == "\x01" * (MAX_REASON_CHARS - len(note)) + note
    assert len(letter.reason) == MAX_REASON_CHARS
    assert letter.key_truncated is True and letter.key_b64 == "a2tr" * (MAX_KEY_BYTES // 3) + "aw=="
    assert letter.truncated is True and letter.original_size == 5 * 1024 * 1024


def test_a_letter_without_the_original_keeps_its_size_digest_and_position() -> None:
    raw = b"z" * 5000
    stand_in = without_original(_letter(raw), ValueError("too big"))
    assert stand_in.value_b64 == "" and stand_in.truncated is True
    assert stand_in.original_size == 5000
    assert stand_in.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert (stand_in.partition, stand_in.offset) == (3, 41)
    assert stand_in.reason == (
        f"{REASON} [sent without the original's bytes: the letter was refused: ValueError: too big]"
    )


def _letters(broker: EmbeddedBroker) -> list[DeadLetter]:
    records = read_topic(broker.settings(), DEAD_LETTERS.name, idle_timeout_s=0.5)
    return [DeadLetter.model_validate_json(r.value or b"") for r in records]


def test_a_letter_the_producer_refuses_goes_without_the_original(
    fresh_broker: EmbeddedBroker,
) -> None:
    # A producer that refuses the whole letter (6.8 KB) but takes one without the bytes.
    producer = KafkaProducer(**fresh_broker.settings().kafka_python(), max_request_size=4096)
    lost: list[DeadLetter] = []
    letters = DeadLetters(producer, rejected_by="test", on_lost=lost.append)
    raw = b"q" * 5000
    try:
        letters.reject(raw, REASON, source_topic=ENGAGEMENTS.name, partition=1, offset=7)
        letters.settle()
    finally:
        producer.close()
    assert (letters.count, letters.lost, lost) == (1, 0, [])
    [got] = _letters(fresh_broker)
    assert got.value_b64 == "" and got.truncated is True
    assert (got.original_size, got.original_sha256) == (5000, hashlib.sha256(raw).hexdigest())
    assert (got.partition, got.offset, got.rejected_by) == (1, 7, "test")
    assert got.reason.startswith(f"{REASON} [sent without the original's bytes: ")
    assert "MessageSizeTooLargeError" in got.reason


def test_a_letter_refused_even_without_the_original_is_logged_counted_and_never_raises(
    fresh_broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    producer = KafkaProducer(**fresh_broker.settings().kafka_python(), max_request_size=200)
    lost: list[DeadLetter] = []
    letters = DeadLetters(producer, rejected_by="test", on_lost=lost.append)
    raw = b"q" * 5000
    try:
        with caplog.at_level(logging.ERROR, logger="streams.deadletters"):
            letters.reject(raw, REASON, source_topic=ENGAGEMENTS.name, partition=1, offset=7)
            letters.settle()
    finally:
        producer.close()
    assert (letters.count, letters.lost) == (1, 1)
    assert [(x.partition, x.offset, x.original_size) for x in lost] == [(1, 7, 5000)]
    assert _letters(fresh_broker) == []
    [refused, gone] = [
        r.getMessage()
        for r in caplog.records
        if r.name == "streams.deadletters" and r.levelname == "ERROR"
    ]
    digest = hashlib.sha256(raw).hexdigest()
    assert refused.startswith(f"dead letter for engagements[1]@7 (5000 bytes, sha256 {digest})")
    assert gone.startswith(f"DEAD LETTER LOST for engagements[1]@7 (5000 bytes, sha256 {digest})")


class _AiokafkaTopic:
    """faust's ``Topic.send`` on aiokafka (as the interests worker's app has it), no faust app."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def send(self, *, key: bytes, value: bytes) -> Any:
        return await self._producer.send(DEAD_LETTERS.name, value, key=key)


@pytest.mark.parametrize(("max_request_size", "written"), [(4096, 1), (200, 0)])
def test_the_interests_workers_letters_refused_by_its_producer_never_stop_it(
    fresh_broker: EmbeddedBroker, max_request_size: int, written: int
) -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    raw = b"w" * 5000

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=fresh_broker.bootstrap_servers, max_request_size=max_request_size
        )
        await producer.start()
        try:
            delivery = Delivery(
                outbox=None,  # type: ignore[arg-type]  # dead letters only
                touched=set(),
                dead_letters=_AiokafkaTopic(producer),
                metrics=metrics,
                one_record_batches=True,
            )
            await delivery.dead_letter(raw, REASON, 2, 9, b"u")
            await delivery.settle_letters()
        finally:
            await producer.stop()

    asyncio.run(run())
    assert registry.get_sample_value("recstream_interest_dead_letters_total") == 1
    assert registry.get_sample_value("recstream_interest_dead_letters_lost_total") == 1 - written
    letters = _letters(fresh_broker)
    assert len(letters) == written
    for got in letters:
        assert (got.value_b64, got.original_size, got.offset) == ("", 5000, 9)
        assert got.original_sha256 == hashlib.sha256(raw).hexdigest()
        assert got.rejected_by == "interests-worker"


def test_the_interests_workers_letters_are_settled_when_the_broker_dies(
    fresh_broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused after the send (no confirmation comes): the stand-in is tried, then the loss is
    logged and counted, and settling returns."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=fresh_broker.bootstrap_servers, request_timeout_ms=500
        )
        await producer.start()
        try:
            delivery = Delivery(
                outbox=None,  # type: ignore[arg-type]  # dead letters only
                touched=set(),
                dead_letters=_AiokafkaTopic(producer),
                metrics=metrics,
                one_record_batches=True,
            )
            await delivery.dead_letter(b"first", REASON, 0, 1, b"u")
            await delivery.settle_letters()
            assert fresh_broker.pid is not None
            os.kill(fresh_broker.pid, signal.SIGKILL)
            with caplog.at_level(logging.ERROR, logger="streams.deadletters"):
                await delivery.dead_letter(b"second", REASON, 0, 2, b"u")
                await delivery.settle_letters()
        finally:
            await producer.stop()

    asyncio.run(run())
    assert registry.get_sample_value("recstream_interest_dead_letters_total") == 2
    assert registry.get_sample_value("recstream_interest_dead_letters_lost_total") == 1
    ours = [r for r in caplog.records if r.name == "streams.deadletters" and r.levelname == "ERROR"]
    assert [r.getMessage().split(" (")[0] for r in ours] == [
        "dead letter for engagements[0]@2",
        "DEAD LETTER LOST for engagements[0]@2",
    ]
