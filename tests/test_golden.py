"""Replay-based golden test: recorded logs in, the interests worker's output against a golden file.

``tests/golden/`` holds two logs written by ``recstream record`` (item embeddings and
engagements, with a malformed message among them) and the user interests they must produce. The
test replays the logs into a fresh broker as ``recstream replay`` does, runs the interests worker,
records ``user-interests`` and compares it with the golden file. After an intended change of the
engine, regenerate with ``RECSTREAM_REGENERATE_GOLDEN=1 pytest tests/test_golden.py`` and review
the diff of ``tests/golden/user-interests.golden.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from serving.datasets.generated import generate
from streams.broker import EmbeddedBroker
from streams.publish import Publisher
from streams.replay import read_log, record, replay
from streams.schemas import UserInterests
from streams.topics import DEAD_LETTERS, ENGAGEMENTS, ITEM_EMBEDDINGS, USER_INTERESTS, ensure_topics
from tests._streaming import publish_item_vectors, start_interests_worker, stop, topic_vectors
from tests._streaming import wait_for as wait

GOLDEN = Path(__file__).parent / "golden"
LOGS = {
    ITEM_EMBEDDINGS.name: GOLDEN / "item-embeddings.log.jsonl",
    ENGAGEMENTS.name: GOLDEN / "engagements.log.jsonl",
}
EXPECTED = GOLDEN / "user-interests.golden.json"
REGENERATE = os.environ.get("RECSTREAM_REGENERATE_GOLDEN") == "1"


def canonical(records: list[UserInterests]) -> dict[str, Any]:
    """What must not change: each user's clusters (medoid, size, importance), counts, last id."""
    return {
        r.user_id: {
            "n_actions": r.n_actions,
            "last_event_id": r.last_event_id,
            "interests": [[i.medoid, i.size, round(i.importance, 4)] for i in r.interests],
        }
        for r in sorted(records, key=lambda r: r.user_id)
    }


def matches(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Equal, but for importances within 1e-4 (float sums may differ across CPUs)."""
    if got.keys() != expected.keys():
        return False
    for user, want in expected.items():
        have = got[user]
        if (have["n_actions"], have["last_event_id"]) != (want["n_actions"], want["last_event_id"]):
            return False
        if [i[:2] for i in have["interests"]] != [i[:2] for i in want["interests"]]:
            return False
        if any(
            abs(h[2] - w[2]) > 1e-4 * max(1.0, abs(w[2]))
            for h, w in zip(have["interests"], want["interests"], strict=True)
        ):
            return False
    return True


def _record_inputs() -> None:
    """Write the input logs (once; they are committed)."""
    data = generate(users=12, items=80, events=600, seed=21)
    with EmbeddedBroker() as b:
        settings = b.settings()
        ensure_topics(settings)
        publish_item_vectors(settings, topic_vectors(data.truth, dim=16, seed=21))
        with Publisher(settings) as pub:
            pub.publish_many(data.engagements[:300])
            pub.send(ENGAGEMENTS.name, b'{"type":"engagement","v":1,"user_id":"u1"}', key=b"u1")
            pub.publish_many(data.engagements[300:])
        for topic, path in LOGS.items():
            record(settings, topic, path, timeout_s=1.0, progress=False)


def _latest(path: Path) -> list[UserInterests]:
    latest: dict[bytes, UserInterests | None] = {}
    for rec in read_log(path):
        assert rec.key is not None
        latest[rec.key] = (
            None if rec.value is None else UserInterests.model_validate_json(rec.value)
        )
    return [r for r in latest.values() if r is not None]


def test_replayed_logs_give_the_golden_user_interests(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    if REGENERATE and not all(p.exists() for p in LOGS.values()):
        _record_inputs()
    settings = fresh_broker.settings()
    for path in LOGS.values():
        replay(settings, path, progress=False)
    expected = None if REGENERATE else json.loads(EXPECTED.read_text())
    out = tmp_path / "user-interests.log.jsonl"
    proc = start_interests_worker(fresh_broker.bootstrap_servers, tmp_path / "w")
    try:

        def settled() -> bool:
            record(settings, USER_INTERESTS.name, out, timeout_s=0.5, progress=False)
            got = canonical(_latest(out))
            return matches(got, expected) if expected is not None else len(got) == 12

        wait(settled, 90, what="the golden user interests", alive=[proc])
    finally:
        stop(proc)
    if REGENERATE:
        EXPECTED.write_text(json.dumps(canonical(_latest(out)), indent=1, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {EXPECTED}")
    letters = [json.loads(r.value or b"") for r in read_log(_dead(settings, tmp_path))]
    assert len(letters) == 1 and "missing field 'event_id'" in letters[0]["reason"], letters


def _dead(settings: Any, tmp_path: Path) -> Path:
    path = tmp_path / "dead-letters.log.jsonl"
    record(settings, DEAD_LETTERS.name, path, timeout_s=0.5, progress=False)
    return path
