"""``recstream eval --through-kafka``: the PinnerSage states come from the real interests worker.

The in-process replay (``serving.evaluation.replay``) runs the interests engine itself. This
module runs the same replay through the embedded broker and a ``recstream worker interests``
process instead:

1. the catalogue's vectors go to ``item-embeddings`` (float32, exactly the evaluation's);
2. the training-period positive engagements go to ``engagements`` in one bulk, and the worker's
   ``user-interests`` record after each user's last training event is awaited;
3. the test-period positive engagements go in rounds, round ``r`` holding each user's ``r``-th
   test event; the records of a round are awaited before the next one is published, so each
   record the worker publishes reflects exactly one more event.

Every record carries the user's serialized state and the id of the last event in it, so the
result maps event id -> the worker's state right after that event; ``CapturedPinnerSage``
answers the replay's queries from it. Nothing else changes, so the numbers must equal the
in-process replay's (``tests/test_evaluation.py`` checks that they do).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import pybase64

from serving.evaluation.data import ReplayData
from streams.interests import InterestConfig
from streams.schemas import Engagement, ItemEmbedding, UserInterests
from streams.settings import KafkaSettings

if TYPE_CHECKING:
    from streams.publish import Publisher

log = logging.getLogger(__name__)

# Engine settings the worker takes as command-line flags (the others keep their defaults).
WORKER_FLAGS = (
    "window_days",
    "max_actions",
    "merge_threshold",
    "max_clusters",
    "decay_per_day",
    "recluster_every",
)


def worker_flags(engine: InterestConfig) -> list[str]:
    """``recstream worker interests`` flags for ``engine``; refuses settings it cannot pass."""
    default = InterestConfig()
    passed = set(WORKER_FLAGS) | {"action_weights", "default_weight", "remembered_event_ids"}
    for f in fields(engine):
        if f.name not in passed and getattr(engine, f.name) != getattr(default, f.name):
            raise ValueError(f"the interests worker has no flag for engine setting {f.name!r}")
    flags: list[str] = []
    for name in WORKER_FLAGS:
        flags += [f"--{name.replace('_', '-')}", str(getattr(engine, name))]
    return flags


def capture_worker_states(
    data: ReplayData,
    engine: InterestConfig,
    split_ts: int,
    *,
    work_dir: Path | None = None,
    timeout_s: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, bytes]:
    """Event id -> the interests worker's state blob right after it (see the module docstring).

    Explicit weights are published with every event (``data.weight``), so the worker weighs
    actions exactly as the replay does whatever its action weights.
    """
    from streams.broker import EmbeddedBroker
    from streams.publish import Publisher
    from streams.topics import ensure_topics

    say = progress or log.info
    training, rounds = _plan(data, split_ts)
    last_training = {e.user_id: e.event_id for e in training}
    wanted = set(last_training.values()) | {e.event_id for events in rounds for e in events}
    with tempfile.TemporaryDirectory(prefix="recstream-eval-") as tmp:
        root = Path(work_dir or tmp)
        with EmbeddedBroker() as broker:
            settings = broker.settings()
            ensure_topics(settings)
            _publish_vectors(settings, data)
            worker = _start_worker(broker.bootstrap_servers, root, engine)
            try:
                with _Records(settings, wanted) as records, Publisher(settings, linger_ms=0) as pub:
                    say(f"through Kafka: {len(training)} training events in one bulk")
                    deadline = time.monotonic() + timeout_s
                    states = _publish_and_await(pub, records, training, worker, deadline)
                    say(f"through Kafka: {len(rounds)} rounds of test events")
                    for r, events in enumerate(rounds):
                        states |= _publish_and_await(pub, records, events, worker, deadline)
                        if progress is not None and (r + 1) % 10 == 0:
                            progress(f"through Kafka: round {r + 1}/{len(rounds)}")
            finally:
                _stop(worker)
    return states


def _plan(data: ReplayData, split_ts: int) -> tuple[list[Engagement], list[list[Engagement]]]:
    """(training positives, test positives in rounds of at most one event per user)."""
    training: list[Engagement] = []
    per_user: dict[str, list[Engagement]] = {}
    for pos, event in enumerate(data.events):
        if not data.positive[pos]:
            continue
        weighted = event.model_copy(update={"weight": float(data.weight[pos])})
        if event.ts < split_ts:
            training.append(weighted)
        else:
            per_user.setdefault(event.user_id, []).append(weighted)
    depth = max((len(v) for v in per_user.values()), default=0)
    rounds = [[evs[r] for evs in per_user.values() if r < len(evs)] for r in range(depth)]
    return training, rounds


def _publish_vectors(settings: KafkaSettings, data: ReplayData) -> None:
    from streams.publish import Publisher
    from streams.topics import ITEM_EMBEDDINGS

    with Publisher(settings) as pub:
        for item_id, vector in zip(data.item_ids, data.vectors, strict=True):
            rec = ItemEmbedding.from_vector(item_id, vector, encoder_version="eval", source_ts=0)
            pub.send(ITEM_EMBEDDINGS.name, rec.to_json(), key=rec.key)


def _start_worker(bootstrap: str, root: Path, engine: InterestConfig) -> subprocess.Popen[bytes]:
    from streams.broker import EMBEDDED_ENV

    log_file = open(root / "interests-worker.log", "ab")  # noqa: SIM115 (lives with the process)
    cmd = [sys.executable, "-m", "serving.cli", "worker", "interests"]
    cmd += ["--bootstrap-servers", bootstrap, "--data-dir", str(root / "interests-worker")]
    cmd += worker_flags(engine)
    # Full states: their centroids are the in-process engine's to the bit (views round them).
    cmd += ["--published-state", "full"]
    return subprocess.Popen(
        cmd, env={**os.environ, **EMBEDDED_ENV}, stdout=log_file, stderr=subprocess.STDOUT
    )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


class _Records:
    """Tails ``user-interests``; keeps the states whose last event is one of ``wanted``."""

    def __init__(self, settings: KafkaSettings, wanted: set[str]) -> None:
        from streams.consumer import ValidatingConsumer
        from streams.topics import USER_INTERESTS

        self._consumer = ValidatingConsumer(
            settings, [USER_INTERESTS.name], rejected_by="eval-through-kafka"
        )
        self.wanted = wanted
        self.by_event: dict[str, bytes] = {}

    def poll(self) -> None:
        for rec in self._consumer.poll(timeout_ms=20):
            interests = rec.event
            if not isinstance(interests, UserInterests):
                continue  # a tombstone
            if interests.last_event_id in self.wanted:
                if interests.state is None:
                    raise RuntimeError("the interests worker publishes no state")
                self.by_event[interests.last_event_id] = pybase64.b64decode(interests.state)

    def __enter__(self) -> _Records:
        return self

    def __exit__(self, *exc: object) -> None:
        self._consumer.close()


def _publish_and_await(
    pub: Publisher,
    records: _Records,
    events: list[Engagement],
    worker: subprocess.Popen[bytes],
    deadline: float,
) -> dict[str, bytes]:
    """Publish ``events``; return the state after each user's last one once all have arrived."""
    last: dict[str, str] = {}
    for event in events:
        pub.publish(event)
        last[event.user_id] = event.event_id
    pub.flush()
    wanted = set(last.values())
    while not wanted <= records.by_event.keys():
        if worker.poll() is not None:
            raise RuntimeError(f"the interests worker exited with code {worker.returncode}")
        if time.monotonic() > deadline:
            missing = len(wanted - records.by_event.keys())
            raise TimeoutError(f"the interests worker did not publish {missing} states in time")
        records.poll()
    return {event_id: records.by_event[event_id] for event_id in wanted}
