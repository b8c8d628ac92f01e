"""Foundation against the real broker: publish/consume, dead letters, record/replay, generator."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.datasets.generated import generate, write
from streams.broker import EmbeddedBroker
from streams.consumer import ValidatingConsumer
from streams.deadletters import MAX_ORIGINAL_BYTES
from streams.publish import Publisher, PublishError
from streams.replay import LoggedRecord, read_log, read_topic, record, replay
from streams.schemas import DeadLetter, Engagement, UserDeleted
from streams.settings import KafkaSettings
from streams.topics import ALL_TOPICS, DEAD_LETTERS, ENGAGEMENTS, ensure_topics


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
    bad: dict[bytes | None, str] = {
        b"{not json": "not JSON",
        json.dumps({"type": "engagement", "v": 1, "user_id": "u1"}).encode(): "missing field",
        json.dumps({**json.loads(good.to_json()), "ts": "now"}).encode(): "invalid field 'ts'",
        json.dumps({**json.loads(good.to_json()), "v": 99}).encode(): "unknown schema version",
        b'{"type":"engagement","pad":"' + b"x" * (1 << 20) + b'"}': "message too large",
        b"": "empty message (zero-length value)",
        None: "empty message (null value)",
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
    letters = [
        DeadLetter.model_validate_json(r.value or b"")
        for r in consume_all(settings, DEAD_LETTERS.name)
    ]
    assert len(letters) == len(bad)
    for offset, (letter, (raw, reason)) in enumerate(
        zip(sorted(letters, key=lambda x: x.offset or 0), bad.items(), strict=True)
    ):
        assert reason in letter.reason
        # Of the 1 MiB message, the letter keeps a prefix, the size and the digest.
        assert letter.original() == (raw or b"")[:MAX_ORIGINAL_BYTES]
        assert letter.truncated is (raw is not None and len(raw) > MAX_ORIGINAL_BYTES)
        assert letter.original_size == (None if raw is None else len(raw))
        assert letter.original_sha256 == (None if raw is None else hashlib.sha256(raw).hexdigest())
        assert letter.source_topic == ENGAGEMENTS.name
        # Sent first, with the good events' key: their partition, from its first offset.
        assert (letter.partition, letter.offset) == (accepted[0].partition, offset)
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


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_generate_publish_from_stdin_to_a_topic_and_replay_into_a_fresh_broker(
    tmp_path: Path,
) -> None:
    gen = tmp_path / "gen"
    res = _cli("generate", "--out", str(gen), "--users", "8", "--items", "30", "--events", "120")
    assert res.returncode == 0, res.stderr
    same = write(generate(8, 30, 120, seed=0), tmp_path / "lib")
    for name in ("items.jsonl", "engagements.jsonl", "truth.json"):
        assert (gen / name).read_bytes() == same[name.split(".")[0]].read_bytes()
    items = (gen / "items.jsonl").read_text()
    engagements = gen / "engagements.jsonl"
    half_bad = tmp_path / "half-bad.jsonl"
    half_bad.write_text(items.splitlines()[0] + "\n" + '{"type":"item","v":1}\n')
    log = tmp_path / "log.jsonl"

    with EmbeddedBroker() as first:
        bs = ["--bootstrap-servers", first.bootstrap_servers, "-q"]
        res = _cli("publish", "--topic", "items", "-", *bs, stdin=items)
        assert res.returncode == 0 and "published 30 events" in res.stderr, res.stderr
        # Events that do not belong on --topic, and a file with a bad line: nothing is sent.
        res = _cli("publish", "--topic", "items", str(engagements), *bs)
        assert res.returncode == 2
        assert "line 1: event type 'engagement' does not belong on topic 'items'" in res.stderr
        res = _cli("publish", str(half_bad), *bs)
        assert res.returncode == 2 and "line 2: missing field 'item_id'" in res.stderr
        res = _cli("publish", "--topic", "nope", str(engagements), *bs)
        assert res.returncode == 2 and "unknown topic 'nope'" in res.stderr
        assert len(consume_all(first.settings(), "items")) == 30
        assert consume_all(first.settings(), ENGAGEMENTS.name) == []

        assert _cli("publish", str(engagements), *bs).returncode == 0
        args = ["--topic", ENGAGEMENTS.name, "--out", str(log), "--from-beginning"]
        res = _cli("record", *args, "--timeout-s", "1", *bs)
        assert res.returncode == 0, res.stderr
    assert len(read_log(log)) == 120

    with EmbeddedBroker() as second:
        bs = ["--bootstrap-servers", second.bootstrap_servers, "-q"]
        res = _cli("replay", str(log), "--speed", "2", "--max-speed", *bs)
        assert res.returncode == 2 and "exclude each other" in res.stderr
        res = _cli("replay", str(log), "--max-speed", *bs)
        assert res.returncode == 0 and "replayed 120 records" in res.stderr, res.stderr
        replayed = consume_all(second.settings(), ENGAGEMENTS.name)

    def per_key(records: list[LoggedRecord]) -> dict[bytes | None, list[bytes | None]]:
        out: dict[bytes | None, list[bytes | None]] = {}
        for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
            out.setdefault(rec.key, []).append(rec.value)
        return out

    assert per_key(replayed) == per_key(read_log(log))


def test_topics_are_created_once_with_their_partitions(fresh_broker: EmbeddedBroker) -> None:
    from kafka import KafkaConsumer

    settings = fresh_broker.settings()
    assert ensure_topics(settings) == []  # the fixture created them: nothing to do again
    res = _cli("topics", "--bootstrap-servers", fresh_broker.bootstrap_servers)
    assert res.returncode == 0 and res.stdout.count("[exists]") == len(ALL_TOPICS), res.stdout
    consumer = KafkaConsumer(**settings.kafka_python())
    try:
        for spec in ALL_TOPICS:
            assert len(consumer.partitions_for_topic(spec.name) or ()) == spec.partitions
    finally:
        consumer.close()
    assert [t.name for t in ALL_TOPICS if t.compacted] == ["item-embeddings", "user-interests"]


def test_kafka_security_comes_from_the_environment_and_stays_out_of_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RECSTREAM_BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    monkeypatch.setenv("RECSTREAM_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("RECSTREAM_KAFKA_SASL_PASSWORD", "s3cret-pw")
    settings = KafkaSettings.from_env()
    assert settings.servers == ["k1:9093", "k2:9093"]
    kw = settings.kafka_python()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "svc" and kw["sasl_plain_password"] == "s3cret-pw"
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings)
    assert KafkaSettings.from_env("flag:9092").servers == ["flag:9092"]  # the flag wins
    monkeypatch.delenv("RECSTREAM_KAFKA_SASL_PASSWORD")
    with pytest.raises(ValueError, match="SASL needs"):
        KafkaSettings.from_env()
    monkeypatch.setenv("RECSTREAM_KAFKA_SECURITY_PROTOCOL", "carrier-pigeon")
    with pytest.raises(ValueError, match="unknown Kafka security protocol"):
        KafkaSettings.from_env()


def test_a_send_the_broker_never_confirms_fails_the_flush(fresh_broker: EmbeddedBroker) -> None:
    pub = Publisher(fresh_broker.settings(), request_timeout_ms=2000, delivery_timeout_ms=3000)
    try:
        pub.send(ENGAGEMENTS.name, b"{}", key=b"u1")
        pub.flush()
        fresh_broker.stop()  # the broker goes away with a send in flight
        pub.send(ENGAGEMENTS.name, b"{}", key=b"u1")
        with pytest.raises(PublishError, match="not delivered"):
            pub.flush(timeout_s=20)
    finally:
        with contextlib.suppress(Exception):
            pub._producer.close(timeout=1)


def test_kafka_python_checks_record_crcs_in_c() -> None:
    """Without the crc32c package kafka-python checks every record batch's CRC in pure Python
    (~6 ms for one 27 KB user-interests record): read models and tools would crawl."""
    import crc32c
    from kafka.record import util

    assert util.calc_crc32c.__defaults__ == (crc32c.crc32c,)
    assert util.calc_crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
