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
