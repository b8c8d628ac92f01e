"""Every Kafka topic recstream uses: names, partition counts and configs, in one place.

Keys: engagements and user-interests are keyed by user id (one user's events stay in order on
one partition, so per-user state has a single writer); items and item-embeddings by item id.
The two read-model topics are compacted: the latest record per key is the state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str
    config: dict[str, str] = field(default_factory=dict)

    @property
    def compacted(self) -> bool:
        return self.config.get("cleanup.policy") == "compact"


_COMPACT = {"cleanup.policy": "compact"}

ENGAGEMENTS = TopicSpec("engagements", 8, key="user_id")
ITEMS = TopicSpec("items", 4, key="item_id")
ITEM_EMBEDDINGS = TopicSpec("item-embeddings", 4, key="item_id", config=dict(_COMPACT))
USER_INTERESTS = TopicSpec("user-interests", 8, key="user_id", config=dict(_COMPACT))
# One size limit for dead letters, whoever sends them: the smallest that any client or broker
# here allows by default (faust's producer: 1,000,000 bytes; Kafka's 1 MiB). Every producer of
# letters is set to it, and so is the topic; a letter's JSON stays 64 KiB under it whatever the
# original (streams.deadletters), so it fits even a dead-letters topic created with defaults.
DEAD_LETTER_MAX_BYTES = 1_000_000
DEAD_LETTERS = TopicSpec(
    "dead-letters", 1, key="source topic", config={"max.message.bytes": str(DEAD_LETTER_MAX_BYTES)}
)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    ENGAGEMENTS,
    ITEMS,
    ITEM_EMBEDDINGS,
    USER_INTERESTS,
    DEAD_LETTERS,
)
BY_NAME = {t.name: t for t in ALL_TOPICS}

_TIMEOUT_S = 30.0  # for ensure_topics: to connect, and for new topics to show in metadata

RESENT_HEADER = ("recstream-resent", b"parked")
"""Header of an engagement the interests worker re-sent to ``engagements`` once its parked item
got an embedding: the same event a second time on the topic, which counters must not count."""


def is_resent(headers: Iterable[tuple[str, bytes]] | None) -> bool:
    return RESENT_HEADER in (headers or ())


def ensure_topics(settings: KafkaSettings) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Idempotent.

    Replication factor 1: a cluster with several brokers gets its topics made beforehand
    (docs/embedded-broker.md).
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + _TIMEOUT_S
    admin = KafkaAdminClient(**settings.kafka_python(), request_timeout_ms=int(_TIMEOUT_S * 1000))
    try:
        existing = set(admin.list_topics())
        missing = [s for s in ALL_TOPICS if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            spec.name,
                            spec.partitions,
                            replication_factor=1,
                            topic_configs=spec.config,
                        )
                    ]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another process won the race: fine
        # Topic creation is asynchronous on real clusters: wait until metadata shows every topic.
        while True:
            if {s.name for s in ALL_TOPICS} <= set(admin.list_topics()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"topics not visible after {_TIMEOUT_S}s: {[s.name for s in ALL_TOPICS]}"
                )
            time.sleep(0.1)
        if created:
            log.info("created topics %s", ", ".join(created))
        return created
    finally:
        admin.close()
