"""Foundation against the real broker: publish/consume, dead letters, record/replay, generator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streams.broker import EmbeddedBroker
from streams.consumer import ValidatingConsumer
from streams.deadletters import parse_dead_letter
from streams.generate import generate, write
from streams.publish import Publisher
from streams.replay import LoggedRecord, read_log, read_topic, record, replay
from streams.schemas import Engagement, UserDeleted
from streams.settings import KafkaSettings
from streams.topics import DEAD_LETTERS, ENGAGEMENTS, ensure_topics


def consume_all(settings: KafkaSettings, topic: str) -> list[LoggedRecord]:
    return list(read_topic(settings, topic, idle_timeout_s=3.0))


def test_published_events_are_consumed_keyed_and_in_order(fresh_broker: EmbeddedBroker) -> None:
    settings = fresh_broker.settings()
    events = [
        Engagement(
            event_id=f"e{i}", user_id=f"u{i % 7}", item_id=f"i{i}", action="view", ts=1000 + i
        )
        for i in range(500)
    ]
    with Publisher(settings) as pub:
        pub.publish_many(events)
    got = consume_all(settings, ENGAGEMENTS.name)
    assert len(got) == 500
    by_user: dict[str, list[int]] = {}
    partition_of: dict[bytes, set[int]] = {}
    for rec in got:
        ev = json.loads(rec.value or b"")
        assert rec.key == ev["user_id"].encode()
        by_user.setdefault(ev["user_id"], []).append(ev["ts"])
        partition_of.setdefault(rec.key, set()).add(rec.partition)
    assert all(ts == sorted(ts) for ts in by_user.values())  # per-key order kept
    assert all(len(p) == 1 for p in partition_of.values())  # one partition per key


def test_each_kind_of_bad_message_is_dead_lettered_and_consumer_goes_on(
    fresh_broker: EmbeddedBroker,
) -> None:
    settings = fresh_broker.settings()
    good = Engagement(event_id="ok", user_id="u1", item_id="i1", action="save", ts=5)
    bad = {
        b"{not json": "not JSON",
        json.dumps({"type": "engagement", "v": 1, "user_id": "u1"}).encode(): "missing field",
        json.dumps({**json.loads(good.to_json()), "ts": "now"}).encode(): "invalid field 'ts'",
        json.dumps({**json.loads(good.to_json()), "v": 99}).encode(): "unknown schema version",
        b'{"type":"engagement","pad":"' + b"x" * (1 << 20) + b'"}': "message too large",
    }
    with Publisher(settings, max_request_size=4 << 20) as pub:
        for raw in bad:
            pub.send(ENGAGEMENTS.name, raw, key=b"u1")
        pub.publish(good)
        pub.publish(UserDeleted(user_id="u1", ts=6))
    accepted = []
    with ValidatingConsumer(settings, [ENGAGEMENTS.name], rejected_by="test") as consumer:
        for _ in range(20):
            accepted += consumer.poll(timeout_ms=300)
            if len(accepted) >= 2:
                break
    assert [a.event for a in accepted] == [good, UserDeleted(user_id="u1", ts=6)]
    letters = [parse_dead_letter(r.value or b"") for r in consume_all(settings, DEAD_LETTERS.name)]
    assert len(letters) == len(bad)
    for letter, (raw, reason) in zip(
        sorted(letters, key=lambda x: x.offset or 0), bad.items(), strict=True
    ):
        assert reason in letter.reason
        assert letter.original() == raw
        assert letter.source_topic == ENGAGEMENTS.name
        assert letter.partition is not None and letter.offset is not None
        assert letter.rejected_by == "test"


def test_record_replay_record_gives_same_records_per_key(tmp_path: Path) -> None:
    data = generate(users=30, items=50, events=800, seed=3)
    with EmbeddedBroker() as first:
        ensure_topics(first.settings())
        with Publisher(first.settings()) as pub:
            pub.publish_many(data.engagements)
            pub.send(ENGAGEMENTS.name, b"\x00binary\xff", key=b"u0")  # non-UTF-8 survives too
        log1 = tmp_path / "one.jsonl"
        assert (
            record(first.settings(), ENGAGEMENTS.name, log1, timeout_s=1.0, progress=False) == 801
        )
    with EmbeddedBroker() as second:
        ensure_topics(second.settings())
        assert replay(second.settings(), log1, progress=False) == 801
        log2 = tmp_path / "two.jsonl"
        record(second.settings(), ENGAGEMENTS.name, log2, timeout_s=1.0, progress=False)

    def per_key(path: Path) -> dict[bytes | None, list[bytes | None]]:
        out: dict[bytes | None, list[bytes | None]] = {}
        for rec in sorted(read_log(path), key=lambda r: (r.partition, r.offset)):
            out.setdefault(rec.key, []).append(rec.value)
        return out

    one, two = per_key(log1), per_key(log2)
    assert one == two
    assert one[b"u0"][-1] == b"\x00binary\xff"


def test_paced_replay_keeps_the_recorded_pacing(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    log = tmp_path / "paced.jsonl"
    with log.open("w") as f:
        for i in range(5):
            f.write(LoggedRecord("items", 0, i, 10_000 + 250 * i, b"k", b"{}").to_json() + "\n")
    import time

    t0 = time.monotonic()
    replay(fresh_broker.settings(), log, speed=2.0, progress=False)
    elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 2.0  # 1 s of recorded time at 2x


def test_generator_is_deterministic_per_seed(tmp_path: Path) -> None:
    a, b, c = (
        generate(20, 40, 300, seed=7),
        generate(20, 40, 300, seed=7),
        generate(20, 40, 300, seed=8),
    )
    assert a == b
    assert a.engagements != c.engagements
    paths = write(a, tmp_path)
    truth = json.loads(paths["truth"].read_text())
    assert set(truth["items"]) == {it.item_id for it in a.items}
    assert all(1 <= len(u["topics"]) <= 6 for u in truth["users"].values())
    assert [e.ts for e in a.engagements] == sorted(e.ts for e in a.engagements)


def test_cli_publish_and_record_round_trip(fresh_broker: EmbeddedBroker, tmp_path: Path) -> None:
    data = generate(10, 20, 100, seed=1)
    paths = write(data, tmp_path / "gen")
    env_cli = [sys.executable, "-m", "serving.cli"]
    bs = ["--bootstrap-servers", fresh_broker.bootstrap_servers]
    subprocess.run([*env_cli, "publish", str(paths["engagements"]), *bs, "-q"], check=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type":"engagement","v":1}\n')
    res = subprocess.run([*env_cli, "publish", str(bad), *bs, "-q"], capture_output=True, text=True)
    assert res.returncode == 2 and "line 1: missing field" in res.stderr
    out = tmp_path / "rec.jsonl"
    subprocess.run(
        [
            *env_cli,
            "record",
            "--topic",
            "engagements",
            "--out",
            str(out),
            "--from-beginning",
            "--timeout-s",
            "1",
            *bs,
            "-q",
        ],
        check=True,
    )
    assert len(read_log(out)) == 100
