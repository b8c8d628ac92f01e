"""Publishing events to Kafka: the producer SDK behind ``recstream publish`` and ``POST /events``.

>>> with Publisher(KafkaSettings.from_env()) as pub:
...     pub.publish(Engagement(event_id="e1", user_id="u1", item_id="i9", action="click", ts=now))
...     # flush() on exit: returns only when the broker confirmed every event, raises otherwise

Events are keyed by user id (engagements) or item id (items), so each key's events stay in
order on one partition. Sends are batched by kafka-python (``linger_ms``, ``batch_size``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, TextIO

from streams.schemas import InvalidEvent, parse_event_obj, topic_for
from streams.settings import KafkaSettings

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """Some sends were not confirmed by the broker."""


class Publisher:
    """Batched, keyed, confirmed publishing of recstream events (kafka-python)."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        linger_ms: int = 10,
        batch_size: int = 256 * 1024,
        **producer_options: Any,
    ) -> None:
        from kafka import KafkaProducer

        self._producer = KafkaProducer(
            **settings.kafka_python(),
            linger_ms=linger_ms,
            batch_size=batch_size,
            acks="all",
            retries=5,
            max_in_flight_requests_per_connection=1,  # keeps per-key order across retries
            **producer_options,
        )
        self._lock = threading.Lock()
        self._failures: list[BaseException] = []
        self.sent = 0

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._failures.append(exc)

    def send(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None,
        timestamp_ms: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send raw bytes (``value=None`` is a tombstone on a compacted topic)."""
        fut = self._producer.send(
            topic, value=value, key=key, timestamp_ms=timestamp_ms, headers=headers
        )
        fut.add_errback(self._on_error)
        self.sent += 1

    def publish(self, event: Any) -> None:
        """Send one validated event to its topic, keyed by its user or item id."""
        self.send(topic_for(event), event.to_json(), key=event.key)

    def publish_many(self, events: Iterable[Any]) -> int:
        n = 0
        for event in events:
            self.publish(event)
            n += 1
        return n

    def flush(self, timeout_s: float | None = 60.0) -> None:
        """Wait until every send so far is confirmed; raise ``PublishError`` if any failed."""
        self._producer.flush(timeout=timeout_s)
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise PublishError(
                f"{len(failures)} events were not delivered; first error: {failures[0]!r}"
            )

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._producer.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_jsonl_events(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """Yield (line number, validated event); raise ``InvalidEvent`` naming the bad line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidEvent(f"line {lineno}: not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidEvent(f"line {lineno}: not a JSON object")
        try:
            yield lineno, parse_event_obj(obj)
        except InvalidEvent as exc:
            raise InvalidEvent(f"line {lineno}: {exc.reason}") from None


def checked_events(stream: Iterable[str], *, topic: str | None = None) -> Iterator[Any]:
    """The validated events of a JSONL stream; with ``topic``, only events that belong on it."""
    for lineno, event in read_jsonl_events(stream):
        if topic is not None and topic != topic_for(event):
            raise InvalidEvent(
                f"line {lineno}: event type {event.type!r} does not belong on topic {topic!r}"
            )
        yield event


def validate_jsonl(stream: Iterable[str], *, topic: str | None = None) -> int:
    """Check every line of a JSONL stream without sending anything; return the event count."""
    return sum(1 for _ in checked_events(stream, topic=topic))


def publish_jsonl(
    publisher: Publisher, stream: TextIO, *, topic: str | None = None, progress: bool = True
) -> int:
    """Validate and publish every event of a JSONL stream; flush and return the count."""
    from tqdm import tqdm

    n = 0
    with tqdm(desc="publish", unit="ev", disable=not progress, mininterval=0.5) as bar:
        for event in checked_events(stream, topic=topic):
            publisher.publish(event)
            n += 1
            bar.update()
        publisher.flush()
    return n
