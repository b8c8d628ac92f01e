"""Record a topic to a JSONL log and replay it into a broker (tests, demos, incident replays).

A log line is one Kafka record::

    {"topic": "engagements", "partition": 3, "offset": 17, "timestamp": 1700000000000,
     "key": "u42", "value": "{...}"}

Keys and values are stored as UTF-8 text when they are, else as ``key_b64`` / ``value_b64``;
a tombstone has ``"value": null``. Replay preserves keys and each partition's order (hence each
key's order), and with ``speed`` the recorded pacing.
"""

from __future__ import annotations

import base64
import heapq
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.settings import KafkaSettings


@dataclass(frozen=True)
class LoggedRecord:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None

    def to_json(self) -> str:
        out: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
        }
        for name, data in (("key", self.key), ("value", self.value)):
            if data is None:
                out[name] = None
                continue
            try:
                out[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                out[f"{name}_b64"] = base64.b64encode(data).decode()
        return json.dumps(out, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> LoggedRecord:
        obj = json.loads(line)

        def field(name: str) -> bytes | None:
            if f"{name}_b64" in obj:
                return base64.b64decode(obj[f"{name}_b64"])
            v = obj.get(name)
            return None if v is None else str(v).encode("utf-8")

        return cls(
            topic=obj["topic"],
            partition=int(obj.get("partition", 0)),
            offset=int(obj.get("offset", -1)),
            timestamp=int(obj.get("timestamp", 0)),
            key=field("key"),
            value=field("value"),
        )


def read_topic(
    settings: KafkaSettings,
    topic: str,
    *,
    from_beginning: bool = True,
    idle_timeout_s: float = 2.0,
    max_records: int | None = None,
    until_end: bool = True,
    progress: bool = False,
) -> Iterator[LoggedRecord]:
    """Yield the records of every partition (no consumer group: assign + seek).

    Stops after ``idle_timeout_s`` without a new record; with ``until_end`` it also stops
    as soon as it has reached the end offsets seen at start (and nothing new arrived).
    """
    from kafka import KafkaConsumer, TopicPartition
    from tqdm import tqdm

    consumer = KafkaConsumer(
        **settings.consumer(), enable_auto_commit=False, group_id=None, max_poll_records=5000
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ValueError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        end = consumer.end_offsets(tps) if from_beginning else {}
        n = 0
        last_data = time.monotonic()
        with tqdm(desc=f"record {topic}", unit="rec", disable=not progress, mininterval=0.5) as bar:
            while True:
                batch = consumer.poll(timeout_ms=200)
                for tp, msgs in batch.items():
                    for m in msgs:
                        yield LoggedRecord(
                            tp.topic, tp.partition, m.offset, m.timestamp, m.key, m.value
                        )
                        n += 1
                        bar.update()
                        if max_records is not None and n >= max_records:
                            return
                if batch:
                    last_data = time.monotonic()
                    continue
                if (
                    until_end
                    and from_beginning
                    and all(consumer.position(tp) >= end[tp] for tp in tps)
                ):
                    return
                if time.monotonic() - last_data > idle_timeout_s:
                    return
    finally:
        consumer.close()


def record(
    settings: KafkaSettings,
    topic: str,
    out: Path,
    *,
    from_beginning: bool = True,
    timeout_s: float = 5.0,
    max_records: int | None = None,
    progress: bool = True,
) -> int:
    """Write a topic's records to a JSONL log; stop after ``timeout_s`` with no new record."""
    n = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for rec in read_topic(
            settings,
            topic,
            from_beginning=from_beginning,
            idle_timeout_s=timeout_s,
            max_records=max_records,
            until_end=False,
            progress=progress,
        ):
            f.write(rec.to_json() + "\n")
            n += 1
    return n


def read_log(path: Path) -> list[LoggedRecord]:
    with path.open(encoding="utf-8") as f:
        return [LoggedRecord.from_json(line) for line in f if line.strip()]


def replay_order(records: Iterable[LoggedRecord]) -> list[LoggedRecord]:
    """Merge partitions by timestamp while keeping each partition's own order intact."""
    per_partition: dict[tuple[str, int], list[LoggedRecord]] = {}
    for rec in records:
        per_partition.setdefault((rec.topic, rec.partition), []).append(rec)
    lanes = [
        sorted(v, key=lambda r: r.offset) if all(r.offset >= 0 for r in v) else v
        for _, v in sorted(per_partition.items())
    ]
    return list(heapq.merge(*lanes, key=lambda r: r.timestamp))


def replay(
    settings: KafkaSettings,
    path: Path,
    *,
    speed: float | None = None,
    topic: str | None = None,
    progress: bool = True,
) -> int:
    """Publish a recorded log back: as fast as possible, or ``speed`` x the recorded pace."""
    from tqdm import tqdm

    from streams.publish import Publisher

    if speed is not None and speed <= 0:
        raise ValueError("speed must be > 0")
    records = replay_order(read_log(path))
    with (
        Publisher(settings) as pub,
        tqdm(
            total=len(records), desc="replay", unit="rec", disable=not progress, mininterval=0.5
        ) as bar,
    ):
        t0_wall = time.monotonic()
        t0_rec = records[0].timestamp if records else 0
        for rec in records:
            if speed is not None:
                due = t0_wall + (rec.timestamp - t0_rec) / 1000.0 / speed
                delay = due - time.monotonic()
                if delay > 0:
                    pub.flush()  # paced: each record leaves when it is due
                    time.sleep(delay)
            pub.send(topic or rec.topic, rec.value, key=rec.key)
            bar.update()
    return len(records)
