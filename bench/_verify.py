"""Lost and double-applied engagements, counted against an offline replay of exactly the
events the log accepted.

1. ``engagements`` is read back whole (with headers): the valid engagements in each partition's
   order are what the interests workers had to apply. An event the worker parked and re-sent
   (header ``recstream-resent``) counts at its re-sent position, as the worker applies it there.
2. The pure engine replays them (``tests._streaming.offline_states``) with the vectors of
   ``item-embeddings``: the state each user must end in.
3. Each user's latest ``user-interests`` record (read as the run goes, by ``TopicTail``) holds
   the worker's state (a view: every action's item and timestamp, and the events applied).
   Every engagement of a run has a timestamp unique to its user, so an action names its event:
   an action the replay has and the worker lacks is a lost event, one the worker holds twice
   (or an applied count above the replay's) a double.
4. The replicas are asked each user's interests: their action count and last event time must be
   the replay's.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from bench._system import scrape
from streams.interests.state_format import DecodedState, decode
from streams.schemas import (
    Engagement,
    InvalidEvent,
    ItemEmbedding,
    UserInterests,
    decode_for_topic,
)
from streams.settings import KafkaSettings
from streams.topics import ENGAGEMENTS, ITEM_EMBEDDINGS, USER_INTERESTS, is_resent
from tests._streaming import offline_states


@dataclass(frozen=True)
class LogRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def read_log(settings: KafkaSettings, topic: str, idle_timeout_s: float = 2.0) -> list[LogRecord]:
    """Every record of ``topic``, each partition in order, with its headers."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **settings.consumer(), group_id=None, enable_auto_commit=False, max_poll_records=5000
    )
    out: list[LogRecord] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        last = time.monotonic()
        while time.monotonic() - last < idle_timeout_s:
            batch = consumer.poll(timeout_ms=200)
            for tp, records in batch.items():
                if records:
                    last = time.monotonic()
                out.extend(
                    LogRecord(tp.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                    for r in records
                )
    finally:
        consumer.close()
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


@dataclass
class Accepted:
    """The valid engagements of the log, in the order the worker applies them."""

    events: list[Engagement]
    malformed: int  # records that are not a valid engagement (dead letters' business)
    resent: int  # parked events re-sent by the worker
    producer_duplicates: int  # the same event twice in the log, not re-sent (a retried send)


def accepted_engagements(records: Iterable[LogRecord]) -> Accepted:
    by_partition: dict[int, list[tuple[LogRecord, Engagement]]] = {}
    malformed = 0
    for rec in records:
        if rec.value is None:
            malformed += 1
            continue
        try:
            ev = decode_for_topic(ENGAGEMENTS.name, rec.value)
        except InvalidEvent:
            malformed += 1
            continue
        if isinstance(ev, Engagement):
            by_partition.setdefault(rec.partition, []).append((rec, ev))
    events: list[Engagement] = []
    resent = duplicates = 0
    for _, pairs in sorted(by_partition.items()):
        resent_ids = {ev.event_id for rec, ev in pairs if is_resent(rec.headers)}
        resent += len(resent_ids)
        seen: set[str] = set()
        for rec, ev in pairs:
            if ev.event_id in resent_ids and not is_resent(rec.headers):
                continue  # parked here, applied where it was re-sent
            if ev.event_id in seen and not is_resent(rec.headers):
                duplicates += 1  # the engine skips it by its id, as the worker must
            seen.add(ev.event_id)
            events.append(ev)
    return Accepted(events, malformed, resent, duplicates)


def item_vectors(settings: KafkaSettings) -> dict[str, np.ndarray]:
    """The latest vector of every item on ``item-embeddings``."""
    out: dict[str, np.ndarray] = {}
    for rec in read_log(settings, ITEM_EMBEDDINGS.name):
        if rec.key is None:
            continue
        if rec.value is None:
            out.pop(rec.key.decode(), None)
            continue
        try:
            emb = decode_for_topic(ITEM_EMBEDDINGS.name, rec.value)
        except InvalidEvent:
            continue
        assert isinstance(emb, ItemEmbedding)
        out[emb.item_id] = emb.array()
    return out


@dataclass
class Discrepancy:
    user_id: str
    ts: int  # the event's timestamp (unique per user)
    kind: str  # "lost" or "double"


@dataclass
class Verdict:
    events_in_log: int
    users: int
    items: int  # items with an embedding on item-embeddings
    lost: list[Discrepancy] = field(default_factory=list)
    double: list[Discrepancy] = field(default_factory=list)
    applied_lost: int = 0  # events missing by the applied count only (evicted since)
    applied_double: int = 0
    states_identical: int = 0  # users whose published state equals the replay's, byte for byte
    accepted: Accepted | None = None
    replicas: dict[str, dict[str, int | None]] = field(default_factory=dict)

    @property
    def events_lost(self) -> int:
        return len(self.lost) + self.applied_lost

    @property
    def events_double_applied(self) -> int:
        return len(self.double) + self.applied_double

    def summary(self) -> dict[str, Any]:
        acc = self.accepted
        return {
            "events_in_log": self.events_in_log,
            "users": self.users,
            "items": self.items,
            "events_lost": self.events_lost,
            "events_double_applied": self.events_double_applied,
            "states_identical": self.states_identical,
            "resent_parked": acc.resent if acc else None,
            "producer_duplicates": acc.producer_duplicates if acc else None,
            "malformed_in_log": acc.malformed if acc else None,
            "lost_examples": [d.__dict__ for d in self.lost[:5]],
            "double_examples": [d.__dict__ for d in self.double[:5]],
            "replicas": self.replicas,
        }


def compare_states(
    expected: Mapping[str, bytes], got: Mapping[str, bytes], verdict: Verdict
) -> None:
    for user in sorted(expected.keys() | got.keys()):
        exp_blob, got_blob = expected.get(user), got.get(user)
        if exp_blob is not None and exp_blob == got_blob:
            verdict.states_identical += 1
            continue
        exp = decode(exp_blob) if exp_blob is not None else None
        have = decode(got_blob) if got_blob is not None else None
        exp_ts = Counter(exp.ts.tolist()) if exp else Counter()
        got_ts = Counter(have.ts.tolist()) if have else Counter()
        lost = [t for t, n in exp_ts.items() for _ in range(n - got_ts.get(t, 0))]
        double = [t for t, n in got_ts.items() for _ in range(n - exp_ts.get(t, 0))]
        verdict.lost += [Discrepancy(user, int(t), "lost") for t in lost]
        verdict.double += [Discrepancy(user, int(t), "double") for t in double]
        diff = (have.applied if have else 0) - (exp.applied if exp else 0)
        if diff > len(double):
            verdict.applied_double += diff - len(double)
        elif -diff > len(lost):
            verdict.applied_lost += -diff - len(lost)


def published_states(latest: Mapping[str, bytes | None]) -> dict[str, bytes]:
    """The state bytes of each user's latest ``user-interests`` record (None: a tombstone)."""
    out: dict[str, bytes] = {}
    for user, value in latest.items():
        if value is None:
            continue
        rec = decode_for_topic(USER_INTERESTS.name, value)
        assert isinstance(rec, UserInterests)
        out[user] = base64.b64decode(rec.state or "")
    return out


def verify(
    settings: KafkaSettings, latest_interests: Mapping[str, bytes | None]
) -> tuple[Verdict, dict[str, DecodedState]]:
    """The verdict, from the log and the latest ``user-interests`` record of each user; and the
    replay's state of each user (for the replicas' check)."""
    accepted = accepted_engagements(read_log(settings, ENGAGEMENTS.name))
    vectors = item_vectors(settings)
    expected = offline_states(accepted.events, vectors)
    verdict = Verdict(
        events_in_log=len({ev.event_id for ev in accepted.events}),
        users=len(expected),
        items=len(vectors),
        accepted=accepted,
    )
    compare_states(expected, published_states(latest_interests), verdict)
    return verdict, {u: decode(b) for u, b in expected.items()}


def check_replicas(
    replicas: Mapping[str, str], expected: Mapping[str, DecodedState], verdict: Verdict
) -> None:
    """Each replica's answer for every user (the replay's action count and last event time)
    and the items in its index."""
    for name, url in replicas.items():
        wrong = unreachable = 0
        with httpx.Client(base_url=url, timeout=5.0) as client:
            for user, state in expected.items():
                try:
                    r = client.get(f"/users/{user}/interests")
                except httpx.HTTPError:
                    unreachable += 1
                    continue
                if r.status_code != 200:
                    wrong += 1
                    continue
                body = r.json()
                if body["n_actions"] != len(state.ts) or body["last_event_ts"] != state.max_ts:
                    wrong += 1
        index_items = scrape(url).get("recstream_serving_index_items")
        verdict.replicas[name] = {
            "users": len(expected),
            "wrong": wrong,
            "unreachable": unreachable,
            # Every item is in the index (a replica that rebuilt it after a corrupt snapshot
            # included).
            "index_items": None if index_items is None else int(index_items),
        }
