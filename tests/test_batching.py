"""``take_waiting`` on a real faust app and broker: batches close when nothing more waits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from streams.broker import EmbeddedBroker
from streams.publish import Publisher

APP = Path(__file__).resolve().parent / "_batching_app.py"


def batches(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def wait_for(path: Path, events: int, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = batches(path)
        if sum(b["n"] for b in got) >= events:
            return got
        time.sleep(0.1)
    pytest.fail(f"{events} events not taken within {timeout_s} s: {batches(path)!r}"[:2000])


def test_a_backlog_comes_in_full_batches_and_a_lone_event_at_once(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    admin = KafkaAdminClient(bootstrap_servers=fresh_broker.bootstrap_servers)
    admin.create_topics([NewTopic("take-test", 4, 1)])
    admin.close()
    with Publisher(settings) as pub:
        for n in range(3000):
            pub.send("take-test", str(n).encode(), key=f"k{n % 97}".encode())
    out = tmp_path / "batches.jsonl"
    # within = 10 minutes: a batch closed by the timer would never show up in this test.
    app = subprocess.Popen(
        [sys.executable, str(APP), fresh_broker.bootstrap_servers, "take-test", "500", "600", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        backlog = wait_for(out, 3000, timeout_s=90)
        sizes = [b["n"] for b in backlog]
        assert all(n <= 500 for n in sizes)
        # The backlog is taken while the consumer lags: batches fill up to the bound (batches
        # closed whenever the fetched events ran out would be ten times as many).
        assert len(sizes) <= 10, sizes
        assert sorted(int(v) for b in backlog for v in b["values"]) == list(range(3000))

        with Publisher(settings) as pub:
            sent = time.time()
            pub.send("take-test", b"lone", key=b"k0")
        after = wait_for(out, 3001, timeout_s=30)
        lone = after[len(backlog) :]
        assert [b["values"] for b in lone] == [["lone"]]
        assert lone[0]["at"] - sent < 10  # not the 10-minute timer: nothing else was waiting
    finally:
        app.terminate()
        app.wait(timeout=30)


def committed(bootstrap: str, group: str, topic: str) -> int:
    """Events of ``topic`` the consumer group has committed (sum over partitions)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def test_with_caller_acks_a_batch_is_committed_only_once_the_caller_acks_it(
    fresh_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    settings = fresh_broker.settings()
    admin = KafkaAdminClient(bootstrap_servers=fresh_broker.bootstrap_servers)
    admin.create_topics([NewTopic("take-acks", 2, 1)])
    admin.close()
    with Publisher(settings) as pub:
        for n in range(1000):
            pub.send("take-acks", str(n).encode(), key=f"k{n % 31}".encode())
    out = tmp_path / "batches.jsonl"
    args = [fresh_broker.bootstrap_servers, "take-acks", "400", "600", out, "caller"]
    app = subprocess.Popen(
        [sys.executable, str(APP), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        group = wait_for(out, 1000, timeout_s=90)[-1]["group"]
        time.sleep(1.5)  # several commit intervals
        assert committed(fresh_broker.bootstrap_servers, group, "take-acks") == 0
        with Publisher(settings) as pub:
            pub.send("take-acks", b"release", key=b"k0")
        wait_for(out, 1001, timeout_s=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if committed(fresh_broker.bootstrap_servers, group, "take-acks") == 1001:
                break
            time.sleep(0.2)
        assert committed(fresh_broker.bootstrap_servers, group, "take-acks") == 1001
    finally:
        app.terminate()
        app.wait(timeout=30)
