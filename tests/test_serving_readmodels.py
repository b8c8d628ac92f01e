"""Serving read models on the real broker: materialize, stay live, delete, restart from snapshot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from confluent_kafka import Producer

from serving.readmodels import ReadModels
from stores import ItemIndex
from streams.broker import EMBEDDED_ENV, EmbeddedBroker, free_port
from streams.publish import Publisher
from streams.replay import read_topic
from streams.schemas import DeadLetter, Engagement
from streams.topics import (
    DEAD_LETTERS,
    ENGAGEMENTS,
    ITEM_EMBEDDINGS,
    RESENT_HEADER,
    USER_INTERESTS,
)
from tests._serving import (
    embedding_record,
    engage,
    interests_record,
    make_world,
    publish_users,
    publish_world,
    read_models,
    wait_until,
)
from tests._streaming import wait_for


def _recommend(rm: ReadModels, user_id: str, k: int = 10) -> list[str]:
    assert rm.recommender is not None
    return [r.item_id for r in rm.recommender.recommend(rm.profile(user_id), k).items]


def test_read_models_materialize_topics_and_follow_updates_and_deletes(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    world = make_world()
    publish_world(settings, world)
    with read_models(settings, tmp_path / "r") as rm:
        assert rm.wait_ready(30), rm.status()
        assert len(rm.catalog) == len(world.data.items) and rm.index is not None
        user = max(world.states, key=lambda u: world.states[u].n_actions)
        profile = rm.profile(user)
        assert profile is not None and profile.seen == world.states[user].seen_items
        recs = _recommend(rm, user)
        assert len(recs) == 10 and not set(recs) & profile.seen

        # The user engages with items of a topic they never touched: their recs follow.
        topics_seen = {world.topic_of(i) for i in world.states[user].seen_items}
        fresh_topic = next(t for t in range(24) if t not in topics_seen)
        new_items = [i for i in world.vectors if world.topic_of(i) == fresh_topic][:6]
        engage(world, user, new_items, ts=world.states[user].last_ts + 1000)
        rec = interests_record(user, world.states[user])
        with Publisher(settings) as pub:
            pub.send(USER_INTERESTS.name, rec.to_json(), key=rec.key)
        wait_until(
            lambda: any(world.topic_of(i) == fresh_topic for i in _recommend(rm, user, 20)),
            5,
            "recommendations from the new interest",
        )
        assert rm.profile(user).applied_ms > 0  # type: ignore[union-attr]

        # Many users updated at once (records on every partition): every cached profile follows.
        for u in world.states:  # each profile is cached now
            assert rm.profile(u).n_actions == world.states[u].n_actions  # type: ignore[union-attr]
        for u in world.states:
            engage(world, u, ["i7"], ts=world.states[u].last_ts + 1)
        publish_users(settings, world)
        wait_until(
            lambda: all(
                rm.profile(u).n_actions == world.states[u].n_actions  # type: ignore[union-attr]
                for u in world.states
            ),
            5,
            "every user's new interests",
        )
        assert set(rm.recent_users) == set(world.states)

        # A deleted item disappears at once, and its cached neighbourhoods are corrected.
        victim = _recommend(rm, user)[0]
        with Publisher(settings) as pub:
            pub.send(ITEM_EMBEDDINGS.name, None, key=victim.encode())
        wait_until(lambda: victim not in rm.catalog, 5, "the delete")
        assert victim not in _recommend(rm, user, 50)
        assert rm.index is not None and victim not in rm.index


def test_empty_and_keyless_records_are_dead_lettered_and_the_replica_goes_on(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    world = make_world(users=5, items=60, events=300)
    publish_world(settings, world)
    # From librdkafka, which sends a null value with a null key (kafka-python refuses to).
    producer = Producer({"bootstrap.servers": fresh_broker.bootstrap_servers})
    for topic in (ITEM_EMBEDDINGS.name, USER_INTERESTS.name):
        producer.produce(topic, value=b"", key=b"k")
        producer.produce(topic, value=None, key=None)
        producer.produce(topic, value=None, key=b"\xff")
    # Counted as invalid only: the interests worker dead-letters engagements.
    producer.produce(ENGAGEMENTS.name, value=b"", key=b"u0")
    producer.produce(ENGAGEMENTS.name, value=None, key=b"u0")
    assert producer.flush(10) == 0
    # Another encoder's dimension (after 32-d records in its partition: the index has 32).
    wide = embedding_record("wide", np.ones(48, dtype=np.float32))
    with Publisher(settings) as pub:
        pub.send(ITEM_EMBEDDINGS.name, wide.to_json(), key=wide.key)
    with read_models(settings, tmp_path / "r") as rm:
        assert rm.wait_ready(30), rm.status()
        assert len(rm.catalog) == len(world.data.items) and "wide" not in rm.catalog
        assert all(rm.profile(u) is not None for u in world.states)
        labels = {"topic": ENGAGEMENTS.name, "outcome": "invalid"}
        assert rm.metrics.registry.get_sample_value("recstream_serving_records_total", labels) == 2
    letters = [
        DeadLetter.model_validate_json(r.value or b"")
        for r in read_topic(settings, DEAD_LETTERS.name, idle_timeout_s=1.0)
    ]
    expected = [
        (topic, reason, "serving")
        for topic in (ITEM_EMBEDDINGS.name, USER_INTERESTS.name)
        for reason in (
            "empty message (zero-length value)",
            "empty message (tombstone without a key)",
            "tombstone key is not UTF-8",
        )
    ]
    expected.append(
        (ITEM_EMBEDDINGS.name, "48-d vector, but the index holds 32-d vectors", "serving")
    )
    assert sorted((x.source_topic, x.reason, x.rejected_by) for x in letters) == sorted(expected)


def test_restart_restores_the_snapshot_and_replays_only_the_tail(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    world = make_world(users=10, items=200, events=800)
    publish_world(settings, world)
    with read_models(settings, tmp_path / "r") as rm:
        assert rm.wait_ready(30)
    # While the replica is down: one new item, one deleted item, one engagement.
    new = embedding_record("brand-new", world.vectors["i0"], "brand new thing", "fresh")
    with Publisher(settings) as pub:
        pub.send(ITEM_EMBEDDINGS.name, new.to_json(), key=new.key)
        pub.send(ITEM_EMBEDDINGS.name, None, key=b"i1")
        pub.publish(Engagement(event_id="p1", user_id="zz", item_id="i5", action="view", ts=1))
        pub.publish(Engagement(event_id="p2", user_id="zz", item_id="i6", action="view", ts=1))
        # On an item whose embedding has not come yet: counted, and kept by the snapshot.
        pub.publish(
            Engagement(event_id="p3", user_id="zz", item_id="not-embedded", action="view", ts=1)
        )
        # p1 again, as the interests worker re-sends a parked engagement: counted once.
        p1 = Engagement(event_id="p1", user_id="zz", item_id="i5", action="view", ts=1)
        pub.send(ENGAGEMENTS.name, p1.to_json(), key=p1.key, headers=[RESENT_HEADER])
    rm2 = read_models(settings, tmp_path / "r")
    applied = _count_applied(rm2)
    with rm2:
        assert rm2.wait_ready(30)
        assert "brand-new" in rm2.catalog and rm2.index is not None and "brand-new" in rm2.index
        assert "i1" not in rm2.catalog and "i1" not in rm2.index
        assert len(rm2.catalog) == len(world.data.items)  # +1 new, -1 deleted
        assert rm2.popularity.score("i5", 1) > 0
        assert rm2.popularity.score("i5", 1) == rm2.popularity.score("i6", 1)
        assert sum(applied) == 6  # the tail only, not the 200 items and 10 users again
        assert rm2.profile("u1").n_actions == world.states["u1"].n_actions  # type: ignore[union-attr]
        counted = rm2.popularity.score("i6", 1)
        assert rm2.popularity.score("not-embedded", 1) == counted
    # rm2's closing snapshot keeps the count of the item without an embedding, not the deleted
    # item's.
    with read_models(settings, tmp_path / "r") as rm3:
        assert rm3.popularity.score("not-embedded", 1) == counted
        assert "i1" not in rm3.popularity and "i6" in rm3.popularity


def _positions(rm: ReadModels) -> dict[tuple[str, int], float]:
    """The replica's position gauge, per (topic, partition)."""
    return {
        (s.labels["topic"], int(s.labels["partition"])): s.value
        for family in rm.metrics.registry.collect()
        if family.name == "recstream_serving_position"
        for s in family.samples
    }


def test_the_position_gauge_says_exactly_what_the_replica_applied_also_after_a_restart(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    world = make_world(users=10, items=200, events=800)
    publish_world(settings, world)

    def ends() -> dict[tuple[str, int], float]:
        # The log's real ends: the last record's offset + 1 (the embedded broker's reported
        # end offsets trail them by a batch), 0 for an empty partition.
        out: dict[tuple[str, int], float] = {}
        for topic in (ITEM_EMBEDDINGS, USER_INTERESTS, ENGAGEMENTS):
            for p in range(topic.partitions):
                out[topic.name, p] = 0.0
            for rec in read_topic(settings, topic.name, idle_timeout_s=1.0):
                out[topic.name, rec.partition] = float(rec.offset + 1)
        return out

    with read_models(settings, tmp_path / "r") as rm:
        expected = ends()
        assert sum(expected.values()) == len(world.data.items) + len(world.states)
        wait_until(lambda: _positions(rm) == expected, 10, "positions at the ends")
    with Publisher(settings) as pub:
        pub.publish(Engagement(event_id="p1", user_id="zz", item_id="i5", action="view", ts=1))
    expected = ends()
    with read_models(settings, tmp_path / "r") as rm2:
        wait_until(lambda: _positions(rm2) == expected, 10, "positions after the restart")
        assert sum(expected.values()) == len(world.data.items) + len(world.states) + 1


def test_a_restarted_replica_keeps_one_popularity_that_answers_cold_starts_and_learns(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    world = make_world(users=10, items=200, events=800)
    publish_world(settings, world)
    t0 = 1_700_000_000_000

    def engagements(item_id: str, n: int, ts: int) -> None:
        with Publisher(settings) as pub:
            for e in range(n):
                pub.publish(
                    Engagement(
                        event_id=f"{item_id}-{ts}-{e}",
                        user_id=f"fan{e}",
                        item_id=item_id,
                        action="view",
                        ts=ts,
                    )
                )

    def popular(rm: ReadModels, k: int = 3) -> list[str]:
        assert rm.recommender is not None
        recs = rm.recommender.recommend(None, k, user_id="newcomer", now_ms=t0)
        assert recs.cold_start
        return [r.item_id for r in recs.items]

    engagements("i3", 4, t0)
    engagements("i4", 2, t0)
    with read_models(settings, tmp_path / "r") as rm:
        assert rm.wait_ready(30)
        wait_until(lambda: popular(rm) == ["i3", "i4"], 5, "the popular items")
    with read_models(settings, tmp_path / "r") as rm2:
        assert rm2.wait_ready(30)
        assert rm2.recommender is not None and rm2.recommender.popularity is rm2.popularity
        assert popular(rm2) == ["i3", "i4"]  # learned before the restart
        engagements("i9", 6, t0)
        wait_until(lambda: popular(rm2) == ["i9", "i3", "i4"], 5, "an engagement after it")
        with Publisher(settings) as pub:
            pub.send(ITEM_EMBEDDINGS.name, None, key=b"i3")
        wait_until(lambda: "i3" not in rm2.catalog, 5, "the delete")
        assert "i3" not in rm2.popularity and popular(rm2) == ["i9", "i4"]


def test_a_replica_killed_after_a_periodic_snapshot_restores_it_and_replays_only_the_tail(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    world = make_world(users=10, items=200, events=800)
    publish_world(settings, world)
    with _killed_serve(fresh_broker, tmp_path / "r", snapshot_every_s=0.5) as (api, server):
        wait_for(lambda: _ok(f"{api}/readyz"), 60, what="ready", alive=[server])
        wait_for(
            lambda: ItemIndex.restore(tmp_path / "r" / "index") is not None,
            10,
            what="a periodic snapshot",
        )
        new = embedding_record("brand-new", world.vectors["i0"], "brand new thing", "fresh")
        with Publisher(settings) as pub:
            pub.send(ITEM_EMBEDDINGS.name, new.to_json(), key=new.key)
        wait_for(lambda: _ok(f"{api}/items/brand-new"), 10, what="the new item served")
    rm = read_models(settings, tmp_path / "r")
    applied = _count_applied(rm)
    with rm:
        assert rm.wait_ready(30)
        assert "brand-new" in rm.catalog and rm.index is not None and "brand-new" in rm.index
        assert len(rm.catalog) == len(world.data.items) + 1
        assert sum(applied) <= 1  # at most the record after the last snapshot, not 210 again


def test_a_replica_killed_before_purging_a_deleted_user_purges_at_its_next_snapshot(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    world = make_world(users=5, items=60, events=300)
    publish_world(settings, world)
    gone = "u~7f3a9c!gone"  # its core's 4-byte windows occur nowhere else (see test_forget.py)
    record = interests_record(gone, next(iter(world.states.values())))
    with Publisher(settings) as pub:
        pub.send(USER_INTERESTS.name, record.to_json(), key=record.key)
    # Killed before any snapshot, hence before any purge.
    with _killed_serve(fresh_broker, tmp_path / "r", snapshot_every_s=0) as (api, server):
        wait_for(lambda: _ok(f"{api}/users/{gone}/interests"), 60, what="served", alive=[server])
        with Publisher(settings) as pub:
            pub.send(USER_INTERESTS.name, None, key=gone.encode())
        wait_for(lambda: _status(f"{api}/users/{gone}/interests") == 404, 10, what="deleted")

    def holding() -> list[str]:
        files = (p for p in (tmp_path / "r").rglob("*") if p.is_file())
        return sorted(p.name for p in files if b"~7f3a9c!" in p.read_bytes())

    with read_models(settings, tmp_path / "r") as rm:
        assert rm.wait_ready(30) and rm.profile(gone) is None
        assert rm.db.purge_due and holding()  # the deleted record is still in the files
        rm.snapshot()
        assert not rm.db.purge_due and holding() == []


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _killed_serve(
    broker: EmbeddedBroker, data_dir: Path, *, snapshot_every_s: float
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``recstream serve`` in a subprocess, as (its base URL, the process); SIGKILLed after
    the block, as a crash would stop it."""
    port = free_port()
    server = subprocess.Popen(
        [
            *[sys.executable, "-m", "serving.cli", "serve", "--port", str(port)],
            *["--data-dir", str(data_dir), "--snapshot-every-s", str(snapshot_every_s)],
            *["--bootstrap-servers", broker.bootstrap_servers],
        ],
        env={**os.environ, **EMBEDDED_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()


def _count_applied(rm: ReadModels) -> list[int]:
    """Records per applied poll, from now on (the restore replays through ``apply`` too)."""
    applied: list[int] = []
    original_apply = rm.apply

    def counting_apply(batch: dict) -> None:
        applied.append(sum(len(v) for v in batch.values()))
        original_apply(batch)

    rm.apply = counting_apply  # type: ignore[method-assign]
    return applied
