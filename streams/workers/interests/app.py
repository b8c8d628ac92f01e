"""The interests worker's faust app, its topics and its tables.

The app id, the topic names and the table names ("interests", "parked", hence their changelog
topics ``<app id>-interests-changelog`` and ``<app id>-parked-changelog``) are what a running
deployment has on its broker: they do not change.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from streams.faust_runtime.consumer import use_quick_consumer
from streams.faust_runtime.monitor import without_faust_monitor
from streams.settings import KafkaSettings
from streams.topics import DEAD_LETTER_MAX_BYTES, DEAD_LETTERS, ENGAGEMENTS
from streams.workers.interests.config import InterestsWorkerConfig

# Table values: (partition, offset) of the user's last processed engagement, then the state.
STATE_POSITION = struct.Struct("<iq")

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
# bytes values are stored raw; str keys use faust's default (json) key codec.
TABLE: dict[str, Any] = {
    "partitions": ENGAGEMENTS.partitions,
    "key_type": str,
    "value_type": bytes,
}


class InterestsApp(NamedTuple):
    """The faust app and what it declares."""

    app: Any
    engagements: Any  # topic: the agent's input; parked events are re-sent to it
    dead_letters: Any  # topic
    states: Any  # table "interests": user id -> STATE_POSITION + the state's bytes
    parked: Any  # table "parked": user id -> JSON {event id: engagement JSON}


def create_app(settings: KafkaSettings, config: InterestsWorkerConfig, table: type) -> InterestsApp:
    """The worker's faust app, on this project's consumer and without faust's Monitor; its
    tables are of class ``table`` (``streams.faust_runtime.tables.outbox_table``)."""
    import faust

    app = faust.App(
        config.app_id,
        broker=settings.faust_broker(),
        broker_credentials=settings.faust_credentials(),
        store="rocksdb://",
        datadir=str(config.data_dir / "faust"),
        topic_partitions=ENGAGEMENTS.partitions,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000,
        broker_heartbeat_interval=max(settings.session_timeout_ms / 4000, 0.1),
        broker_commit_interval=config.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        # faust's producer carries only dead letters and re-sent parked events (the Outbox
        # carries the rest); parked events come in bursts when their item arrives.
        producer_linger_ms=5,
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=DEAD_LETTER_MAX_BYTES,  # what a letter is bounded by
        # Big polls while catching up make big per-user batches: one state write per user.
        broker_max_poll_records=config.batch_size,
        web_enabled=False,
        stream_wait_empty=False,
        # Room for whole batches in the stream buffer (faust's 4096 cut them to ~800).
        stream_buffer_maxsize=max(4096, 2 * config.batch_size),
        Table=table,
    )
    use_quick_consumer(app)  # no task per message; no event lost around a seek
    without_faust_monitor(app)
    return InterestsApp(
        app,
        engagements=app.topic(ENGAGEMENTS.name, partitions=ENGAGEMENTS.partitions, **RAW),
        dead_letters=app.topic(DEAD_LETTERS.name, **RAW),
        states=app.Table("interests", **TABLE),
        parked=app.Table("parked", **TABLE),
    )
