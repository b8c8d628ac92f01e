"""Steady load on the whole system and what it sees, for the reliability runs (bench/chaos.py,
bench/soak.py); each part a thread of the run's process.

- ``TopicTail``: reads the input and output topics as they grow: the log's real ends (the
  embedded broker reports ends that trail the log by a batch), when each item's embedding
  arrived, and when a ``user-interests`` record naming an event arrived (freshness).
- ``EngagementLoad``: engagements at a steady rate, each on an item whose embedding has been
  out for a while (so no engagement waits for its item), with a timestamp unique per user.
- ``ItemLoad``: new items trickling in, through the encoder worker.
- ``QueryLoad``: recommendations asked at a steady rate of the replicas in turn, as a client
  behind a load balancer sees them: replicas not ready are left out, a failed request is tried
  once more on the other replica. Every attempt is kept, per replica.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import httpx
import orjson

from bench._system import Positions, System
from streams.publish import Publisher
from streams.schemas import Engagement, Item
from streams.settings import KafkaSettings
from streams.topics import ENGAGEMENTS, ITEM_EMBEDDINGS, ITEMS, USER_INTERESTS, TopicSpec

TAILED = (ITEMS, ENGAGEMENTS, ITEM_EMBEDDINGS, USER_INTERESTS)
OUTPUTS = (ITEM_EMBEDDINGS, USER_INTERESTS)  # what the load and freshness need
_MAX_POLL = 5000


class TopicTail:
    """One consumer (no group) on every partition of the tailed topics, from the beginning."""

    def __init__(self, settings: KafkaSettings, topics: Sequence[TopicSpec] = TAILED) -> None:
        self.settings = settings
        self.positions: Positions = {(t.name, p): 0 for t in topics for p in range(t.partitions)}
        self.arrivals: list[tuple[float, str]] = []  # (monotonic time, item id), in order read
        self.embedded: set[bytes] = set()  # item ids (keys) with an embedding
        self.interests_named: dict[str, float] = {}  # event id -> when a record named it
        self.latest_interests: dict[str, bytes | None] = {}  # user id -> latest record
        self._cond = threading.Condition()
        self._last_poll = (0.0, 0)  # (when the latest poll started, records it returned)
        # (monotonic time, positions then), a few a second, the last minute or so.
        self._history: deque[tuple[float, Positions]] = deque(maxlen=400)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="topic-tail", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> TopicTail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        try:
            consumer = KafkaConsumer(
                **self.settings.consumer(),
                group_id=None,
                enable_auto_commit=False,
                max_poll_records=_MAX_POLL,
            )
            tps = [TopicPartition(t, p) for t, p in self.positions]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self._stop.is_set():
                started = time.monotonic()
                batch = consumer.poll(timeout_ms=100, max_records=_MAX_POLL)
                now = time.monotonic()
                n = 0
                for tp, records in batch.items():
                    if not records:
                        continue
                    n += len(records)
                    self.positions[tp.topic, tp.partition] = records[-1].offset + 1
                    if tp.topic == ITEM_EMBEDDINGS.name:
                        for r in records:
                            if r.value is not None and r.key and r.key not in self.embedded:
                                item_id = r.key.decode()
                                self.embedded.add(r.key)
                                self.arrivals.append((now, item_id))
                    elif tp.topic == USER_INTERESTS.name:
                        for r in records:
                            if r.key is not None:
                                self.latest_interests[r.key.decode()] = r.value
                            if r.value is not None:
                                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                                    eid = orjson.loads(r.value).get("last_event_id")
                                    if eid is not None and eid not in self.interests_named:
                                        self.interests_named[eid] = now
                with self._cond:
                    self._last_poll = (started, n)
                    if not self._history or now - self._history[-1][0] >= 0.2:
                        self._history.append((now, dict(self.positions)))
                    self._cond.notify_all()
            consumer.close()
        except BaseException as exc:  # surfaced by ends()
            self.error = exc
            with self._cond:
                self._cond.notify_all()

    def ends(self, after: float, timeout_s: float = 60.0) -> Positions:
        """The log's ends as of monotonic time ``after``: the positions once a poll that
        started after it came back unsaturated (it had read everything there was)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self.error is not None:
                    raise RuntimeError(f"the topic tail stopped: {self.error!r}")
                started, n = self._last_poll
                if started >= after and n < _MAX_POLL:
                    return dict(self.positions)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("the topic tail did not catch up")
                self._cond.wait(min(left, 1.0))

    def ends_before(self, t: float) -> Positions:
        """The positions the tail had reached by monotonic time ``t`` (the latest record of
        them at or before it; none: all zero)."""
        with self._cond:
            for at, positions in reversed(self._history):
                if at <= t:
                    return positions
        return {}


class SentEvent(NamedTuple):
    user_id: str
    item_id: str
    ts: int
    sent: float  # monotonic time it was handed to the producer


class EngagementLoad:
    """``rate`` engagements a second from ``users``, on items embedded ``eligible_after_s``
    ago at least (preferring each user's three categories), sent in ticks and confirmed.

    A send the broker does not confirm (the broker frozen past the producer's timeouts) is
    counted in ``failures``; whether it reached the log is read from the log afterwards.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        tail: TopicTail,
        category_of: Mapping[str, str],
        *,
        rate: float,
        users: int,
        eligible_after_s: float = 3.0,
        seed: int = 0,
        tick_s: float = 0.05,
    ) -> None:
        self.settings = settings
        self.tail = tail
        self.category_of = category_of
        self.rate = rate
        self.eligible_after_s = eligible_after_s
        self.tick_s = tick_s
        self.rng = random.Random(seed)
        categories = sorted(set(category_of.values()))
        self.users = [f"u{n}" for n in range(users)]
        self.user_categories = {
            u: self.rng.sample(categories, min(3, len(categories))) for u in self.users
        }
        self.sent: dict[str, SentEvent] = {}
        self.engaged_users: list[str] = []  # in order of their first event
        self._engaged: set[str] = set()
        self.failures: list[str] = []
        self.confirmed_at = 0.0  # monotonic time of the latest confirmed flush
        self._eligible: list[str] = []
        self._eligible_by_category: dict[str, list[str]] = {}
        self._cursor = 0
        self._last_ts: dict[str, int] = {}
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engagement-load", daemon=True)

    def start(self) -> EngagementLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def _refresh_eligible(self, now: float) -> None:
        arrivals = self.tail.arrivals
        while (
            self._cursor < len(arrivals)
            and arrivals[self._cursor][0] <= now - self.eligible_after_s
        ):
            item_id = arrivals[self._cursor][1]
            self._cursor += 1
            category = self.category_of.get(item_id)
            if category is None:
                continue  # not one of ours
            self._eligible.append(item_id)
            self._eligible_by_category.setdefault(category, []).append(item_id)

    def _next(self, now_ms: int) -> Engagement | None:
        if not self._eligible:
            return None
        user = self.rng.choice(self.users)
        pool: list[str] = self._eligible
        if self.rng.random() < 0.8:
            preferred = [c for c in self.user_categories[user] if self._eligible_by_category.get(c)]
            if preferred:
                pool = self._eligible_by_category[self.rng.choice(preferred)]
        item = self.rng.choice(pool)
        # Unique per user, so each action in a state names its event.
        ts = max(now_ms, self._last_ts.get(user, 0) + 1)
        self._last_ts[user] = ts
        self._seq += 1
        action = self.rng.choice(("view", "click", "like"))
        return Engagement(
            event_id=f"c{self._seq}", user_id=user, item_id=item, action=action, ts=ts
        )

    def _run(self) -> None:
        with Publisher(self.settings, linger_ms=20) as pub:
            t0 = time.monotonic()
            n = 0
            while not self._stop.is_set():
                now = time.monotonic()
                self._refresh_eligible(now)
                due = int((now - t0) * self.rate)
                now_ms = int(time.time() * 1000)
                while n < due:
                    ev = self._next(now_ms)
                    if ev is None:
                        n = due  # nothing to engage with yet
                        break
                    pub.publish(ev)
                    if ev.user_id not in self._engaged:
                        self._engaged.add(ev.user_id)
                        self.engaged_users.append(ev.user_id)
                    self.sent[ev.event_id] = SentEvent(
                        ev.user_id, ev.item_id, ev.ts, time.monotonic()
                    )
                    n += 1
                try:
                    pub.flush(timeout_s=120)
                    self.confirmed_at = time.monotonic()
                except Exception as exc:  # counted; the log says later what got in
                    self.failures.append(repr(exc))
                self._stop.wait(max(self.tick_s - (time.monotonic() - now), 0.0))

    def confirmed_after(self, t: float, timeout_s: float = 150.0) -> bool:
        """Wait until a flush confirmed after monotonic time ``t`` (not once stopped)."""
        deadline = time.monotonic() + timeout_s
        while self.confirmed_at < t and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.1)
        return self.confirmed_at >= t


class ItemLoad:
    """``rate`` new items a second (text only: the encoder worker embeds them)."""

    def __init__(self, settings: KafkaSettings, items: Sequence[Item], *, rate: float) -> None:
        self.settings = settings
        self.items = list(items)
        self.rate = rate
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="item-load", daemon=True)

    def start(self) -> ItemLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def _run(self) -> None:
        with Publisher(self.settings, linger_ms=5) as pub:
            t0 = time.monotonic()
            while not self._stop.is_set() and self.sent < len(self.items):
                due = min(int((time.monotonic() - t0) * self.rate), len(self.items))
                while self.sent < due:
                    item = self.items[self.sent]
                    pub.publish(item.model_copy(update={"ts": int(time.time() * 1000)}))
                    self.sent += 1
                try:
                    pub.flush(timeout_s=120)
                except Exception as exc:
                    self.failures.append(repr(exc))
                self._stop.wait(0.2)


@dataclass
class QuerySample:
    at: float  # monotonic time the request was due
    attempts: list[tuple[str, float, bool]]  # (replica, monotonic time, answered 2xx)
    ok: bool = False
    latency_s: float = 0.0


@dataclass
class QueryLoad:
    """``rate`` recommendation requests a second (open loop: latency counts from the time a
    request was due), to the ready replicas in turn, a failure retried once on another."""

    replicas: Mapping[str, str]  # name -> base URL
    rate: float
    users: Callable[[], Sequence[str]]
    timeout_s: float = 2.0
    threads: int = 8
    samples: list[QuerySample] = field(default_factory=list)
    healthy: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._names = sorted(self.replicas)
        self.healthy = {n: False for n in self._names}
        limits = httpx.Limits(max_connections=self.threads, max_keepalive_connections=self.threads)
        self._clients = {
            n: httpx.Client(base_url=url, timeout=self.timeout_s, limits=limits)
            for n, url in self.replicas.items()
        }
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="query")
        self._threads = [
            threading.Thread(target=self._schedule, name="query-schedule", daemon=True),
            threading.Thread(target=self._probe, name="query-probe", daemon=True),
        ]
        self._rng = random.Random(7)

    def start(self) -> QueryLoad:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._pool.shutdown(wait=True)
        for c in self._clients.values():
            c.close()

    def _probe(self) -> None:
        """Readiness probes, as a load balancer's, every half second."""
        while not self._stop.is_set():
            for n in self._names:
                try:
                    r = self._clients[n].get("/readyz", timeout=1.0)
                    self.healthy[n] = r.status_code == 200
                except httpx.HTTPError:
                    self.healthy[n] = False
            self._stop.wait(0.5)

    def _schedule(self) -> None:
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            at = t0 + i / self.rate
            delay = at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
                continue
            users = self.users()
            if users and self._rng.random() < 0.9:
                user = users[self._rng.randrange(len(users))]
            else:
                user = f"nobody-{i}"  # a cold start
            self._pool.submit(self._one, i, at, user)
            i += 1

    def _one(self, i: int, at: float, user: str) -> None:
        first = self._names[i % len(self._names)]
        order = [first, *(n for n in self._names if n != first)]
        up = [n for n in order if self.healthy.get(n)]
        sample = QuerySample(at, [])
        for name in (up or order)[:2]:
            ok = False
            with contextlib.suppress(httpx.HTTPError):
                r = self._clients[name].get(f"/users/{user}/recommendations", params={"k": 10})
                ok = 200 <= r.status_code < 300
            sample.attempts.append((name, time.monotonic(), ok))
            if ok:
                sample.ok = True
                break
            self.healthy[name] = False  # until its probe says otherwise
        sample.latency_s = time.monotonic() - at
        self.samples.append(sample)


def percentile_ms(values_s: Sequence[float], q: float) -> float | None:
    if not values_s:
        return None
    ordered = sorted(values_s)
    idx = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return round(ordered[idx] * 1000.0, 1)


def freshness_s(load: EngagementLoad, tail: TopicTail, start: float, end: float) -> list[float]:
    """Publish -> user-interests record latencies of the events sent in [start, end) that a
    record named (the last event of each user's batch)."""
    named = tail.interests_named
    out: list[float] = []
    for eid, ev in list(load.sent.items()):
        if start <= ev.sent < end:
            seen = named.get(eid)
            if seen is not None:
                out.append(seen - ev.sent)
    return out


class SteadyLoad:
    """The whole load of a run on a started ``System``: the topic tail; a catalogue of
    ``catalog`` items published and embedded first; then engagements from ``users`` users,
    ``new_items`` more items trickling in, and queries to every replica."""

    def __init__(
        self,
        system: System,
        *,
        users: int,
        catalog: int,
        new_items: int,
        event_rate: float,
        item_rate: float,
        query_rate: float,
        tailed: Sequence[TopicSpec] = TAILED,
        seed: int = 3,
    ) -> None:
        from serving.datasets.generated import generate

        self.system = system
        self.users = users
        self.event_rate, self.item_rate, self.query_rate = event_rate, item_rate, query_rate
        data = generate(users=10, items=catalog + new_items, events=10, seed=seed)
        self.catalog = data.items[:catalog]
        self.new_items = data.items[catalog:]
        self.category_of = {it.item_id: it.category or "" for it in data.items}
        self.tail = TopicTail(system.settings, tailed)
        self.engagements: EngagementLoad | None = None
        self.items: ItemLoad | None = None
        self.queries: QueryLoad | None = None
        self.started = 0.0  # monotonic time the load started

    def start(self, timeout_s: float = 300.0) -> None:
        """Publish the catalogue, wait for its embeddings and for the system, start the load."""
        settings = self.system.settings
        self.tail.start()
        self.system.say(f"publishing a catalogue of {len(self.catalog)} items")
        with Publisher(settings) as pub:
            for item in self.catalog:
                pub.publish(item)
        wanted = {it.item_id.encode() for it in self.catalog}
        deadline = time.monotonic() + timeout_s
        while not wanted <= self.tail.embedded:
            if crashed := self.system.crashed():
                raise RuntimeError(f"{crashed[0].name} exited:\n{crashed[0].log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the catalogue was not embedded in time")
            time.sleep(0.2)
        self.system.wait_started()
        self.system.say("the system is up; starting the load")
        self.engagements = EngagementLoad(
            settings, self.tail, self.category_of, rate=self.event_rate, users=self.users
        ).start()
        self.items = ItemLoad(settings, self.new_items, rate=self.item_rate).start()
        engagements = self.engagements
        replicas = {r.name: r.url for r in self.system.of_kind("serving")}
        self.queries = QueryLoad(
            replicas, self.query_rate, lambda: engagements.engaged_users
        ).start()
        self.started = time.monotonic()

    def stop(self) -> None:
        """Stop the load (the tail goes on: ``close``)."""
        for part in (self.queries, self.engagements, self.items):
            if part is not None:
                part.stop()

    def close(self) -> None:
        self.stop()
        self.tail.stop()
