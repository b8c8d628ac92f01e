"""Shared fixtures: a real Kafka-protocol broker (tansu) for integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.broker import EmbeddedBroker
from streams.settings import KafkaSettings
from streams.topics import ensure_topics


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker for the whole session, with recstream's topics created."""
    with EmbeddedBroker() as b:
        ensure_topics(b.settings())
        yield b


@pytest.fixture(scope="session")
def kafka(broker: EmbeddedBroker) -> KafkaSettings:
    return broker.settings()


@pytest.fixture
def fresh_broker() -> Iterator[EmbeddedBroker]:
    """A broker of its own for a test that needs empty topics (tansu starts in milliseconds)."""
    with EmbeddedBroker() as b:
        ensure_topics(b.settings())
        yield b
