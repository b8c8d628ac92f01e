"""What endpoints depend on, as FastAPI dependencies: the API key check, the replica's read
models and the publisher of ``POST /events`` (both kept on ``app.state`` by ``create_app``)."""

from __future__ import annotations

import hmac
import os
import threading
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from serving.api.problems import ProblemError
from serving.readmodels import ReadModels
from streams.settings import KafkaSettings

API_KEYS_ENV = "RECSTREAM_API_KEYS"
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description=f"Needed when the server sets {API_KEYS_ENV}."
)


def api_keys_from_env() -> frozenset[str]:
    """The keys in ``RECSTREAM_API_KEYS`` (comma-separated; none = no key needed)."""
    raw = os.environ.get(API_KEYS_ENV, "")
    return frozenset(k.strip() for k in raw.split(",") if k.strip())


async def require_api_key(
    request: Request, key: Annotated[str | None, Depends(API_KEY_HEADER)]
) -> None:
    keys: frozenset[str] = request.app.state.api_keys
    if keys and not (key and any(hmac.compare_digest(key, k) for k in keys)):
        raise ProblemError(401, "Unauthorized", "a valid X-API-Key header is required")


async def read_models(request: Request) -> ReadModels:
    rm: ReadModels = request.app.state.read_models
    return rm


class EventPublisher:
    """Publishes the events of ``POST /events`` to Kafka. The producer is made on first use (an
    API that only answers queries never connects one) and closed with the app."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._publisher: Any = None

    def publish(self, events: list[Any]) -> None:
        """Send ``events`` and wait for the broker's confirmation (blocking: run in a thread)."""
        pub = self._get()
        for ev in events:
            pub.publish(ev)
        pub.flush(timeout_s=10.0)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()

    def _get(self) -> Any:
        with self._lock:
            if self._publisher is None:
                from streams.publish import Publisher

                self._publisher = Publisher(self.settings, linger_ms=2)
            return self._publisher


async def event_publisher(request: Request) -> EventPublisher:
    publisher: EventPublisher = request.app.state.event_publisher
    return publisher


ReadModelsDep = Annotated[ReadModels, Depends(read_models)]
EventPublisherDep = Annotated[EventPublisher, Depends(event_publisher)]
