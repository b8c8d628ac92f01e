"""The faust interests worker against the real broker, as real processes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from streams.broker import EmbeddedBroker
from streams.generate import generate
from streams.publish import Publisher
from streams.replay import read_topic
from streams.schemas import UserDeleted
from streams.topics import DEAD_LETTERS, ENGAGEMENTS
from tests._streaming import (
    offline_states,
    publish_item_vectors,
    start_interests_worker,
    stop,
    topic_vectors,
    wait_for,
    worker_states,
)


def test_worker_matches_the_offline_engine_and_handles_bad_and_deleted(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    data = generate(users=40, items=200, events=3000, seed=11)
    vectors = topic_vectors(data.truth)
    publish_item_vectors(settings, vectors)
    with Publisher(settings) as pub:
        pub.publish_many(data.engagements)
        pub.send(ENGAGEMENTS.name, b"not json at all", key=b"u1")
        pub.publish(UserDeleted(user_id="u0", ts=data.engagements[-1].ts + 1))
    expected = offline_states(data.engagements, vectors)
    expected.pop("u0", None)
    proc = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "w")
    try:
        wait_for(
            lambda: worker_states(settings) == expected,
            90,
            what="states equal offline",
            alive=[proc],
        )
    finally:
        stop(proc)
    letters = list(read_topic(settings, DEAD_LETTERS.name, idle_timeout_s=1.0))
    assert any(
        b"not json at all" in (r.value or b"") or b"bm90IGpzb24" in (r.value or b"")
        for r in letters
    )


def test_two_workers_split_partitions_and_agree_with_one(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    data = generate(users=60, items=200, events=4000, seed=12)
    vectors = topic_vectors(data.truth)
    publish_item_vectors(settings, vectors)
    expected = offline_states(data.engagements, vectors)
    workers = [
        start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / f"w{i}") for i in range(2)
    ]
    try:
        time.sleep(8)  # both join the group before the events arrive
        with Publisher(settings) as pub:
            pub.publish_many(data.engagements)
        wait_for(lambda: worker_states(settings) == expected, 120, what="states equal offline")
        assert all(w.poll() is None for w in workers)
    finally:
        for w in workers:
            stop(w)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert all("Traceback" not in log for log in logs), logs


def test_sigkill_halfway_then_restart_loses_nothing_and_double_counts_nothing(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    data = generate(users=300, items=500, events=50_000, seed=13)
    vectors = topic_vectors(data.truth)
    publish_item_vectors(settings, vectors)
    with Publisher(settings) as pub:
        pub.publish_many(data.engagements)
    expected = offline_states(data.engagements, vectors)
    proc = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "w")
    try:
        # Kill once part of the log is applied (some users published, not all of them final).
        wait_for(
            lambda: len(worker_states(settings)) >= 50, 90, interval_s=0.2, what="first results"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert worker_states(settings) != expected
        proc = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "w")
        wait_for(
            lambda: worker_states(settings) == expected,
            240,
            what="states equal offline",
            alive=[proc],
        )
    finally:
        stop(proc)


def test_parked_engagements_are_applied_when_their_item_embedding_arrives(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    data = generate(users=20, items=100, events=800, seed=14)
    vectors = topic_vectors(data.truth)
    early = {i: v for n, (i, v) in enumerate(sorted(vectors.items())) if n % 2 == 0}
    late = {i: v for i, v in vectors.items() if i not in early}
    publish_item_vectors(settings, early)
    with Publisher(settings) as pub:
        pub.publish_many(data.engagements)
    proc = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "w")
    try:
        only_early = offline_states([e for e in data.engagements if e.item_id in early], vectors)
        wait_for(lambda: worker_states(settings) == only_early, 90, what="early items applied")
        publish_item_vectors(settings, late)

        # Parked events are applied late, with their own timestamps: the clusters must hold
        # every action exactly once.
        def all_applied() -> bool:
            states = worker_states(settings)
            from streams.interests import InterestClusters

            counts = {
                u: InterestClusters.from_bytes(b, lambda ids: _lookup(vectors, ids)).n_actions
                for u, b in states.items()
            }
            want = {}
            for e in data.engagements:
                want[e.user_id] = want.get(e.user_id, 0) + 1
            return counts == want

        wait_for(all_applied, 90, what="parked events applied")
    finally:
        stop(proc)


def _lookup(vectors, ids):  # type: ignore[no-untyped-def]
    import numpy as np

    found = [i for i in ids if i in vectors]
    return found, (np.stack([vectors[i] for i in found]) if found else np.empty((0, 32)))
