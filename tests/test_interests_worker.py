"""The faust interests worker against the real broker, as real processes."""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.datasets.generated import generate
from stores import StateDB
from streams.broker import EmbeddedBroker, free_port
from streams.deadletters import MAX_ORIGINAL_BYTES
from streams.faust_runtime.event_loop import use_event_loop
from streams.interests import InterestClusters
from streams.publish import Publisher
from streams.replay import read_topic
from streams.schemas import DeadLetter, Engagement, UserDeleted
from streams.settings import KafkaSettings
from streams.topics import DEAD_LETTERS, ENGAGEMENTS, ITEM_EMBEDDINGS
from tests._streaming import (
    offline_states,
    publish_item_vectors,
    start_interests_worker,
    state_differences,
    stop,
    table_states,
    topic_vectors,
    wait_for,
    worker_states,
)

# These tests compare the states the worker publishes with the offline engine's: they ask for
# the state views in the records (the worker publishes none by default).
VIEWS = ("--published-state", "view")


@pytest.mark.parametrize("engine", ["process", "local"])
def test_worker_matches_the_offline_engine_and_handles_bad_and_deleted(
    fresh_broker: EmbeddedBroker, tmp_path: Path, engine: str
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
    proc = start_interests_worker(
        fresh_broker.bootstrap_servers, tmp_path / "w", extra=[*VIEWS, "--engine", engine]
    )
    try:
        wait_for(
            lambda: worker_states(settings) == expected,
            90,
            what="states equal offline",
            explain=lambda: state_differences(worker_states(settings), expected),
            alive=[proc],
        )
        # Published views are smaller; the table holds the full states, bit for bit.
        full = offline_states(data.engagements, vectors, view=False)
        full.pop("u0", None)
        assert table_states(settings) == full
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
            fresh_broker.bootstrap_servers,
            tmp_path / f"w{i}",
            extra=[*VIEWS, "--metrics-port", str(p)],
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
            explain=lambda: state_differences(worker_states(settings), expected),
            alive=workers,
        )
        applied = [_metric(p, "recstream_interest_events_total", outcome="applied") for p in ports]
        assert all(n > 0 for n in applied) and sum(applied) == len(data.engagements), applied
    finally:
        for w in workers:
            stop(w)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert all("Traceback" not in log for log in logs), logs


class MetricSampler:
    """Samples one metric every 50 ms in a thread, while the ``with`` block runs."""

    def __init__(self, port: int, name: str) -> None:
        self.port, self.name = port, name
        self.values: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.05):
            self.values.append(_metric(self.port, self.name))

    def __enter__(self) -> list[float]:
        self._thread.start()
        return self.values

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


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
    port = free_port()
    proc = start_interests_worker(
        fresh_broker.bootstrap_servers, tmp_path / "w", extra=[*VIEWS, "--metrics-port", str(port)]
    )
    try:
        # Kill once part of the log is applied: watched on the metrics endpoint, which answers
        # in milliseconds (reading user-interests takes a second, time enough to finish).
        wait_for(
            lambda: _metric(port, "recstream_interest_events_total", outcome="applied") >= 25_000,
            90,
            interval_s=0.05,
            what="part of the log applied",
            alive=[proc],
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert worker_states(settings) != expected
        proc = start_interests_worker(
            fresh_broker.bootstrap_servers,
            tmp_path / "w",
            extra=[*VIEWS, "--metrics-port", str(port)],
        )
        with MetricSampler(port, "recstream_interest_consumer_lag") as lags:
            wait_for(
                lambda: worker_states(settings) == expected,
                240,
                what="states equal offline",
                explain=lambda: state_differences(worker_states(settings), expected),
                alive=[proc],
            )
        assert table_states(settings) == offline_states(data.engagements, vectors, view=False)
        # The lag gauge saw the backlog the restarted worker had to work through, then none.
        assert max(lags) > 0, lags
        wait_for(
            lambda: (
                _metric(port, "recstream_interest_consumer_lag") == 0
                and _metric(port, "recstream_interest_partitions") == 8
            ),
            10,
            what="lag back to 0",
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
    proc = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "w", extra=VIEWS)
    try:
        only_early = offline_states([e for e in data.engagements if e.item_id in early], vectors)
        wait_for(lambda: worker_states(settings) == only_early, 90, what="early items applied")
        # The parked events live only in the worker's parked table (and its changelog) now.
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "w", extra=VIEWS)
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


def test_deleted_items_are_swept_from_stored_states_and_parking_is_bounded(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    rng = np.random.default_rng(5)
    vectors = {f"i{n}": v / np.linalg.norm(v) for n, v in enumerate(rng.normal(size=(6, 32)))}
    vectors = {i: v.astype(np.float32) for i, v in vectors.items()}
    publish_item_vectors(settings, {i: vectors[i] for i in ("i0", "i1", "i2", "i3")})
    t0 = 1_700_000_000_000
    known = [_engagement(n, f"i{n}", t0 + n) for n in range(3)]
    # Five engagements on items nobody embedded, with room for three of them in the parking.
    unknown = [_engagement(10 + n, f"x{n}", t0 + 10 + n) for n in range(5)]
    with Publisher(settings) as pub:
        pub.publish_many(known + unknown)
    port = free_port()
    proc = start_interests_worker(
        fresh_broker.bootstrap_servers,
        tmp_path / "w",
        extra=[*VIEWS, "--metrics-port", str(port), "--max-parked-per-user", "3"],
    )

    def seen() -> set[str]:
        return _seen_items(settings, vectors)

    try:
        wait_for(lambda: seen() == {"i0", "i1", "i2"}, 60, what="known items applied", alive=[proc])
        wait_for(
            lambda: (
                _metric(port, "recstream_interest_parked_events") == 3
                and _metric(port, "recstream_interest_dead_letters_total") == 2
            ),
            20,
            what="three parked, two dead-lettered",
        )
        letters = [
            json.loads(r.value or b"")
            for r in read_topic(settings, DEAD_LETTERS.name, idle_timeout_s=1.0)
        ]
        overflow = [d for d in letters if "parked too long" in d["reason"]]
        assert sorted(
            json.loads(base64.b64decode(d["value_b64"]))["item_id"] for d in overflow
        ) == [
            "x0",
            "x1",
        ]
        # All eight events counted: their batches' update latencies are observed.
        wait_for(
            lambda: (
                _metric(port, "recstream_interest_events_total", outcome="applied") == 3
                and _metric(port, "recstream_interest_events_total", outcome="parked") == 5
            ),
            20,
            what="every event counted",
        )
        updates = _metric(port, "recstream_interest_update_seconds_count")
        assert updates >= 1
        # i1 is deleted: the worker sweeps it from the stored state and publishes the user's
        # record again, without waiting for the user's next event.
        with Publisher(settings) as pub:
            pub.send(ITEM_EMBEDDINGS.name, None, key=b"i1")
        wait_for(lambda: seen() == {"i0", "i2"}, 20, what="i1 swept", alive=[proc])
        assert _metric(port, "recstream_interest_swept_states_total") == 1
        # A sweep applies no engagement: it is no update latency.
        assert _metric(port, "recstream_interest_update_seconds_count") == updates
        # x2 is deleted too (it never had an embedding): its parked engagement waits no more.
        with Publisher(settings) as pub:
            pub.send(ITEM_EMBEDDINGS.name, None, key=b"x2")
        wait_for(
            lambda: _metric(port, "recstream_interest_parked_events") == 2,
            20,
            what="the parked engagement on x2 dropped",
        )
        with Publisher(settings) as pub:
            pub.publish(_engagement(20, "i3", t0 + 20))
        wait_for(lambda: seen() == {"i0", "i2", "i3"}, 30, what="the next event", alive=[proc])
        # i2 leaves the item store while the worker is down, as when a crash cut a sweep short:
        # the restarted worker checks the recovered states against the item store.
        stop(proc)
        with StateDB(tmp_path / "w" / "items") as items:
            items.items.delete("i2")
        proc = start_interests_worker(
            fresh_broker.bootstrap_servers,
            tmp_path / "w",
            extra=[*VIEWS, "--metrics-port", str(port)],
        )
        wait_for(
            lambda: seen() == {"i0", "i3"}, 60, what="i2 swept after the restart", alive=[proc]
        )
    finally:
        stop(proc)


def test_an_item_embedding_of_another_dimension_is_skipped_and_its_engagement_waits(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    rng = np.random.default_rng(9)
    vectors = {f"i{n}": v.astype(np.float32) for n, v in enumerate(rng.normal(size=(3, 32)))}
    wide = {"wide": rng.normal(size=48).astype(np.float32)}  # another encoder's dimension
    publish_item_vectors(settings, vectors)
    publish_item_vectors(settings, wide)
    t0 = 1_700_000_000_000
    with Publisher(settings) as pub:
        pub.publish_many(
            [_engagement(0, "i0", t0), _engagement(1, "wide", t0 + 1), _engagement(2, "i1", t0 + 2)]
        )
    port = free_port()
    proc = start_interests_worker(
        fresh_broker.bootstrap_servers, tmp_path / "w", extra=[*VIEWS, "--metrics-port", str(port)]
    )

    def seen() -> set[str]:
        return _seen_items(settings, vectors)

    try:
        wait_for(lambda: seen() == {"i0", "i1"}, 60, what="the other items applied", alive=[proc])
        # The store keeps one dimension: that item never got a vector here, so its engagement
        # is parked like any other engagement on an item without an embedding.
        assert _metric(port, "recstream_interest_parked_events") == 1
        wait_for(
            lambda: _metric(port, "recstream_interest_item_vectors") == 3,
            20,
            what="three item vectors stored",
            alive=[proc],
        )
    finally:
        stop(proc)
    assert "skipping item embedding wide: 48-d" in (tmp_path / "w.log").read_text()


def _seen_items(settings: KafkaSettings, vectors: dict[str, np.ndarray]) -> set[str]:
    """The items user "u"'s published state holds (empty before it has one)."""
    blob = worker_states(settings).get("u")
    if blob is None:
        return set()
    return set(InterestClusters.from_bytes(blob, lambda ids: _lookup(vectors, ids)).seen_items)


def _engagement(n: int, item_id: str, ts: int) -> Engagement:
    return Engagement(event_id=f"e{n}", user_id="u", item_id=item_id, action="click", ts=ts)


def test_an_oversized_and_empty_engagements_from_a_foreign_client_get_one_letter_each(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """A 900 KB engagement (its letter would be 1.2 MB whole), a zero-length one and a null one,
    sent by librdkafka among valid ones: one bounded letter each, and the worker goes on."""
    from confluent_kafka import Producer

    settings = fresh_broker.settings()
    rng = np.random.default_rng(6)
    vectors = {f"i{n}": v / np.linalg.norm(v) for n, v in enumerate(rng.normal(size=(3, 32)))}
    vectors = {i: v.astype(np.float32) for i, v in vectors.items()}
    publish_item_vectors(settings, vectors)
    t0 = 1_700_000_000_000
    valid = [_engagement(n, f"i{n % 3}", t0 + n) for n in range(4)]
    head = b'{"type":"engagement","event_id":"big","user_id":"u","action":"click","ts":1,'
    head += b'"item_id":"'
    big = head + b"x" * (900_000 - len(head) - 2) + b'"}'
    values = [valid[0].to_json(), big, valid[1].to_json(), b"", valid[2].to_json(), None]
    values.append(valid[3].to_json())
    # murmur2, as Kafka's Java client and kafka-python: keys land where recstream puts them.
    producer = Producer(
        {"bootstrap.servers": fresh_broker.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    reports: list[tuple[Any, int, int]] = []
    for value in values:
        producer.produce(
            ENGAGEMENTS.name,
            value=value,
            key=b"u",
            on_delivery=lambda err, msg: reports.append((err, msg.partition(), msg.offset())),
        )
    assert producer.flush(10) == 0
    assert [err for err, _, _ in reports] == [None] * len(values)
    partition, first = reports[0][1], reports[0][2]
    assert [(p, o - first) for _, p, o in reports] == [(partition, n) for n in range(len(values))]
    port = free_port()
    proc = start_interests_worker(
        fresh_broker.bootstrap_servers, tmp_path / "w", extra=[*VIEWS, "--metrics-port", str(port)]
    )
    try:
        expected = offline_states(valid, vectors)
        wait_for(
            lambda: (
                worker_states(settings) == expected
                and _metric(port, "recstream_interest_dead_letters_total") == 3
            ),
            60,
            what="the valid events applied and three letters",
            alive=[proc],
        )
        assert _metric(port, "recstream_interest_events_total", outcome="applied") == 4
        assert _metric(port, "recstream_interest_dead_letters_lost_total") == 0
        assert proc.poll() is None
    finally:
        stop(proc)
    letters = sorted(
        (
            DeadLetter.model_validate_json(r.value or b"")
            for r in read_topic(settings, DEAD_LETTERS.name, idle_timeout_s=1.0)
        ),
        key=lambda letter: letter.offset or 0,
    )
    got = [(x.offset, x.reason, x.original_size, x.original_sha256, x.truncated) for x in letters]
    assert got == [
        (
            first + 1,
            "invalid field 'item_id': String should have at most 256 characters",
            900_000,
            hashlib.sha256(big).hexdigest(),
            True,
        ),
        (first + 3, "empty message (zero-length value)", 0, hashlib.sha256(b"").hexdigest(), False),
        (first + 5, "empty message (null value)", None, None, False),
    ]
    assert letters[0].original() == big[:MAX_ORIGINAL_BYTES]
    assert [x.original() for x in letters[1:]] == [b"", b""]
    assert {(x.partition, x.key_b64, x.rejected_by) for x in letters} == {
        (partition, "dQ==", "interests-worker")
    }
    log = (tmp_path / "w.log").read_text()
    assert "Traceback" not in log
    for n, reason in ((1, "invalid field 'item_id'"), (3, "empty message"), (5, "empty message")):
        assert f"dead-lettered engagements[{partition}]@{first + n}: {reason}" in log


def test_the_worker_runs_on_uvloop_and_refuses_unknown_loops() -> None:
    # In a child process: the event loop policy is process-wide.
    code = (
        "import asyncio; from streams.faust_runtime.event_loop import use_event_loop; "
        "print(use_event_loop('uvloop'), type(asyncio.new_event_loop()).__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["uvloop", "uvloop"]
    with pytest.raises(ValueError, match="unknown event loop"):
        use_event_loop("trio")


def test_the_workers_faust_app_books_no_message_in_fausts_monitor() -> None:
    import faust

    from streams.faust_runtime.monitor import without_faust_monitor

    app = faust.App("monitor-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    without_faust_monitor(app)
    services = list(app.on_init_dependencies())
    assert services  # faust's own services still start
    assert app.monitor not in list(app.sensors)
    plain = faust.App("monitor-test-plain", broker="kafka://127.0.0.1:1", web_enabled=False)
    plain.on_init_dependencies()
    assert plain.monitor in list(plain.sensors)
