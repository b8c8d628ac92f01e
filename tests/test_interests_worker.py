"""The faust interests worker against the real broker, as real processes."""

from __future__ import annotations

import signal
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from streams.broker import EmbeddedBroker, free_port
from streams.generate import generate
from streams.interests import InterestClusters
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
    ports = [free_port(), free_port()]
    workers = [
        start_interests_worker(
            fresh_broker.bootstrap_servers, tmp_path / f"w{i}", extra=["--metrics-port", str(p)]
        )
        for i, p in enumerate(ports)
    ]
    try:
        # Both have joined the group when the partitions are split between them.
        wait_for(
            lambda: all(_metric(p, "recstream_interest_partitions") > 0 for p in ports),
            60,
            what="both workers assigned",
            alive=workers,
        )
        assert sum(_metric(p, "recstream_interest_partitions") for p in ports) == 8
        with Publisher(settings) as pub:
            pub.publish_many(data.engagements)
        wait_for(
            lambda: worker_states(settings) == expected,
            120,
            what="states equal offline",
            alive=workers,
        )
        applied = [_metric(p, "recstream_interest_events_total", outcome="applied") for p in ports]
        assert all(n > 0 for n in applied) and sum(applied) == len(data.engagements), applied
    finally:
        for w in workers:
            stop(w)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert all("Traceback" not in log for log in logs), logs


def _metric(port: int, name: str, **labels: str) -> float:
    """One sample of a worker's Prometheus metrics (0 while the endpoint is not up yet)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


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


def test_parked_engagements_survive_a_crash_and_apply_once_their_item_embedding_arrives(
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
        # The parked events live only in the worker's parked table (and its changelog) now.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "w")
        publish_item_vectors(settings, late)

        # Parked events are applied late, with their own timestamps: every user's clusters hold
        # each of their actions exactly once.
        want: dict[str, Counter[tuple[str, int]]] = {}
        for e in data.engagements:
            want.setdefault(e.user_id, Counter())[(e.item_id, e.ts)] += 1

        def actions_of(blob: bytes) -> Counter[tuple[str, int]]:
            state = InterestClusters.from_bytes(blob, lambda ids: _lookup(vectors, ids))
            ids, _ = state.assignments()
            return Counter(zip(ids, state.action_times().astype(int).tolist(), strict=True))

        wait_for(
            lambda: {u: actions_of(b) for u, b in worker_states(settings).items()} == want,
            90,
            what="parked events applied once",
            alive=[proc],
        )
    finally:
        stop(proc)


def _lookup(vectors: dict[str, np.ndarray], ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
    found = [i for i in ids if i in vectors]
    return found, (np.stack([vectors[i] for i in found]) if found else np.empty((0, 32)))
