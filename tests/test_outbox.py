"""The Outbox against the real broker: records batched per partition, confirmed by flush."""

from __future__ import annotations

import asyncio

import pytest
from kafka.partitioner import murmur2

from streams.broker import EmbeddedBroker
from streams.faust_runtime.outbox import Outbox
from streams.replay import read_topic
from streams.topics import USER_INTERESTS, ensure_topics


def kafka_partition(key: bytes, partitions: int) -> int:
    """The Java client's (and kafka-python's) default partition of a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_records_land_where_kafka_puts_their_keys_and_flush_reports_the_last_offsets(
    fresh_broker: EmbeddedBroker,
) -> None:
    settings = fresh_broker.settings()
    ensure_topics(settings)
    keys = [f"u{n}".encode() for n in range(200)]

    async def send() -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
        outbox = Outbox(settings, max_batch_bytes=4096)  # small: several batches a partition
        await outbox.start([USER_INTERESTS.name])
        try:
            for key in keys:
                outbox.add(USER_INTERESTS.name, key, b"x" * 100 + key)
            assert outbox.pending == len(keys)
            first = await outbox.flush()
            assert outbox.pending == 0
            outbox.add(USER_INTERESTS.name, keys[0], None)  # a tombstone
            outbox.seal()
            outbox.add(USER_INTERESTS.name, keys[0], b"after")
            second = await outbox.flush()
            assert await outbox.flush() == {}  # nothing queued: nothing sent
            return first, second
        finally:
            await outbox.stop()

    first, second = asyncio.run(send())
    records = list(read_topic(settings, USER_INTERESTS.name, idle_timeout_s=1.0))
    assert len(records) == len(keys) + 2
    for rec in records:
        assert rec.key is not None
        assert rec.partition == kafka_partition(rec.key, USER_INTERESTS.partitions)
    per_partition: dict[int, list[int]] = {}
    for rec in records:
        per_partition.setdefault(rec.partition, []).append(rec.offset)
    home = kafka_partition(keys[0], USER_INTERESTS.partitions)
    for (topic, partition), last in first.items():
        assert topic == USER_INTERESTS.name
        expected = max(per_partition[partition]) - (2 if partition == home else 0)
        assert last == expected
    assert second == {(USER_INTERESTS.name, home): max(per_partition[home])}
    tail = [r for r in records if r.partition == home][-2:]
    assert [r.value for r in tail] == [None, b"after"]


def test_an_outbox_that_was_not_started_refuses_records(fresh_broker: EmbeddedBroker) -> None:
    outbox = Outbox(fresh_broker.settings())
    with pytest.raises(RuntimeError, match="not started"):
        outbox.add(USER_INTERESTS.name, b"u1", b"v")


def test_full_batches_sent_early_arrive_before_the_flush_which_still_confirms_them(
    fresh_broker: EmbeddedBroker,
) -> None:
    settings = fresh_broker.settings()
    ensure_topics(settings)
    key = b"u1"  # one partition: its order is what the early sends must keep

    def on_broker() -> list[bytes | None]:
        records = read_topic(settings, USER_INTERESTS.name, idle_timeout_s=1.0)
        return [r.value for r in records if r.key == key]

    async def send() -> tuple[list[bytes | None], dict[tuple[str, int], int]]:
        outbox = Outbox(settings, max_batch_bytes=2048)
        await outbox.start([USER_INTERESTS.name])
        try:
            for n in range(60):  # ~10 full batches of ~200-byte records, and an open one
                outbox.add(USER_INTERESTS.name, key, b"%03d" % n + b"x" * 200)
            await outbox.send_full()
            early: list[bytes | None] = []
            for _ in range(20):  # the producer sends them on its own; no flush yet
                early = await asyncio.to_thread(on_broker)
                if early:
                    break
            for n in range(60, 70):
                outbox.add(USER_INTERESTS.name, key, b"%03d" % n + b"x" * 200)
            return early, await outbox.flush()
        finally:
            await outbox.stop()

    early, last = asyncio.run(send())
    assert 0 < len(early) < 60  # the full batches only: the open one waited for the flush
    values = on_broker()
    assert [v[:3] for v in values if v] == [b"%03d" % n for n in range(70)]
    home = kafka_partition(key, USER_INTERESTS.partitions)
    assert last == {(USER_INTERESTS.name, home): 69}
