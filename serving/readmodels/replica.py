"""Serving read models: the compacted topics materialized into local stores and an HNSW index.

One background thread consumes (no consumer group: every replica reads every partition)

- ``item-embeddings`` -> item store (RocksDB, vectors + metadata) + ``ItemIndex`` + the in-memory
  catalog (title, category); a tombstone deletes the item everywhere;
- ``user-interests`` -> user store (the latest record per user); a tombstone forgets the user;
- ``engagements`` -> time-decayed popularity (cold start).

Each poll's writes and the offsets they reach go to RocksDB in one atomic batch. Every
``snapshot_every_s`` the index (with the item-embeddings offsets it reflects) and the popularity
model (with the engagements offsets) are snapshotted. A restart restores the newest intact
snapshots, rebuilds the catalog from the item store, and replays only the tail of each topic
(replaying a compacted record twice is harmless: the last one wins).

Ready (``/readyz``) once every partition has been consumed up to the end offsets seen at start.
Freshness = time from a user's last event (its ``ts``) to this replica applying the interests
record that reflects it.
"""

from __future__ import annotations

import binascii
import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pybase64

from serving.popularity import DecayedPopularity
from serving.readmodels.config import ReadModelConfig
from serving.readmodels.metrics import ServingMetrics
from serving.recommend import (
    InterestView,
    ItemInfo,
    Recommender,
    UserProfile,
)
from stores import ItemIndex, StateDB, normalize_rows
from stores.snapshot import iter_snapshots, write_snapshot
from streams.deadletters import DeadLetters
from streams.interests import InterestClusters, StateFormatError
from streams.schemas import (
    Engagement,
    InvalidEvent,
    ItemEmbedding,
    UserInterests,
    decode_for_topic,
)
from streams.settings import KafkaSettings
from streams.topics import (
    DEAD_LETTER_MAX_BYTES,
    ENGAGEMENTS,
    ITEM_EMBEDDINGS,
    USER_INTERESTS,
    is_resent,
)

log = logging.getLogger(__name__)

TOPICS = (ITEM_EMBEDDINGS.name, USER_INTERESTS.name, ENGAGEMENTS.name)
_POPULARITY_FILE = "popularity.npz"
# Upserts larger than this clear the ANN cache instead of checking each cached medoid.
_BULK_UPSERT = 256


def profile_from_record(record: UserInterests, *, applied_ms: int = 0) -> UserProfile:
    """A ``UserProfile`` from a ``user-interests`` record.

    Seen items are the item ids in the engine state the record carries (``state``; read
    without rebuilding it, and items not yet materialized locally still count as seen);
    without a state, the published members are all we know.
    """
    interests = tuple(
        InterestView(i.medoid, float(i.importance), int(i.size), tuple(i.members))
        for i in record.interests
    )
    seen: frozenset[str] | None = None
    if record.state:
        try:
            seen = InterestClusters.items_in(pybase64.b64decode(record.state, validate=True))
        except (StateFormatError, binascii.Error, ValueError) as exc:
            log.warning(
                "user %s: unreadable interests state (%s); using members", record.user_id, exc
            )
    if seen is None:
        seen = frozenset(m for i in interests for m in (i.medoid, *i.members))
    return UserProfile(
        user_id=record.user_id,
        interests=interests,
        seen=seen,
        n_actions=record.n_actions,
        last_event_ts=record.last_event_ts,
        last_event_id=record.last_event_id,
        updated_ms=record.updated_ms,
        applied_ms=applied_ms,
    )


PackedProfile = tuple[Any, ...]


def _pack(p: UserProfile) -> PackedProfile:
    """A ``UserProfile`` as nested plain tuples of strings and numbers."""
    interests = tuple((i.medoid, i.importance, i.size, i.members) for i in p.interests)
    return (
        p.user_id,
        interests,
        tuple(p.seen),
        p.n_actions,
        p.last_event_ts,
        p.last_event_id,
        p.updated_ms,
        p.applied_ms,
    )


def _unpack(t: PackedProfile) -> UserProfile:
    user_id, interests, seen, n_actions, last_ts, last_id, updated_ms, applied_ms = t
    return UserProfile(
        user_id=user_id,
        interests=tuple(InterestView(*i) for i in interests),
        seen=frozenset(seen),
        n_actions=n_actions,
        last_event_ts=last_ts,
        last_event_id=last_id,
        updated_ms=updated_ms,
        applied_ms=applied_ms,
    )


class ReadModels:
    """The materialized state of one serving replica and the thread that keeps it current.

    Use as a context manager (or ``start()`` / ``close()``). Query through ``recommender``
    (None until the first item embedding arrives and fixes the dimension) and ``profile(user)``.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        config: ReadModelConfig | None = None,
        *,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or ReadModelConfig()
        self.metrics = metrics or ServingMetrics()
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = StateDB(cfg.data_dir / "state")
        self.catalog: dict[str, ItemInfo] = {}
        self.index: ItemIndex | None = None
        self.recommender: Recommender | None = None
        self.popularity = DecayedPopularity(cfg.popularity_half_life_hours)
        # Profiles as plain tuples (see _pack): the collector untracks those, so a full
        # collection does not walk every cached user (~40 ms per 10k users under load).
        self._profiles: OrderedDict[str, PackedProfile] = OrderedDict()
        self._profiles_lock = threading.Lock()
        self.recent_users: OrderedDict[str, int] = OrderedDict()  # user -> last event ts
        self._offsets: dict[str, int] = {}  # "topic:partition" -> next offset applied
        self._start_ends: dict[str, int] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._dead_letters: DeadLetters | None = None
        self._dirty = False
        self._pending_users: dict[str, tuple[UserInterests | None, bytes | None]] = {}
        self._last_snapshot = time.monotonic()
        self._last_lag = 0.0
        self.error: BaseException | None = None
        self.started_unix = time.time()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> ReadModels:
        """Restore local state, connect, seek, and start consuming in the background."""
        if self._thread is not None:
            return self
        offsets = self._restore()
        self._connect(offsets)
        self._thread = threading.Thread(target=self._run, name="read-models", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop consuming, snapshot, and release the stores. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        try:
            if self._consumer is not None and self.error is None:
                self.snapshot()
        finally:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            if self._producer is not None:
                self._producer.close()
                self._producer = None
            self.db.close()

    def __enter__(self) -> ReadModels:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        return self._ready.wait(timeout_s)

    def status(self) -> dict[str, Any]:
        """Readiness details: positions vs the ends seen at start, per topic."""
        behind: dict[str, int] = {}
        for tp, end in self._start_ends.items():
            pos = self._offsets.get(tp, 0)
            if pos < end:
                topic = tp.rsplit(":", 1)[0]
                behind[topic] = behind.get(topic, 0) + end - pos
        return {
            "ready": self.ready,
            "consuming": self.alive,
            "items": len(self.catalog),
            "behind_start_ends": behind,
            "error": repr(self.error) if self.error else None,
        }

    # -- queries ---------------------------------------------------------------------------
    def profile(self, user_id: str) -> UserProfile | None:
        """The user's profile (decoded from the stored record, cached), or None if unknown."""
        with self._profiles_lock:
            cached = self._profiles.get(user_id)
            if cached is not None:
                self._profiles.move_to_end(user_id)
        if cached is not None:
            return _unpack(cached)
        raw = self.db.users.record(user_id)
        if raw is None:
            return None
        try:
            record = decode_for_topic(USER_INTERESTS.name, raw)
        except InvalidEvent:
            return None
        profile = profile_from_record(record)
        self._cache_profile(profile)
        return profile

    def record(self, user_id: str) -> UserInterests | None:
        raw = self.db.users.record(user_id)
        if raw is None:
            return None
        try:
            rec = decode_for_topic(USER_INTERESTS.name, raw)
        except InvalidEvent:
            return None
        assert isinstance(rec, UserInterests)
        return rec

    def item_vectors(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Stored vectors of the ids found (for projections)."""
        return self.db.items.vectors(list(ids))

    # -- restore and connect ---------------------------------------------------------------
    def _restore(self) -> dict[str, int]:
        cfg = self.config
        offsets = {
            k: v
            for k, v in self.db.offsets.load().items()
            if not k.startswith(ITEM_EMBEDDINGS.name + ":")
        }
        db_item_offsets = {
            k: v
            for k, v in self.db.offsets.load().items()
            if k.startswith(ITEM_EMBEDDINGS.name + ":")
        }
        restored = ItemIndex.restore(cfg.data_dir / "index", copies=cfg.index_copies)
        if restored is not None:
            index, index_offsets = restored
            self._install_index(index)
            # Replay item-embeddings from where the index was: the store may be ahead, and
            # re-applying the tail in order leaves both with the latest record per item.
            offsets.update(index_offsets)
        elif self.db.items.dim is not None:
            index = self._new_index(self.db.items.dim)
            for ids, vectors in self.db.items.iterate_vectors(chunk=8192):
                index.upsert(ids, vectors)
            self._install_index(index)
            offsets.update(db_item_offsets)
        for item in self.db.items.iterate():
            self.catalog[item.item_id] = _item_info(item.metadata, item.ts)
        for path, manifest in iter_snapshots(cfg.data_dir / "popularity"):
            try:
                self.popularity = DecayedPopularity.from_bytes(
                    (path / _POPULARITY_FILE).read_bytes()
                )
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring popularity snapshot %s: %s", path, exc)
                continue
            offsets.update({k: int(v) for k, v in manifest["offsets"].items()})
            break
        else:
            offsets = {k: v for k, v in offsets.items() if not k.startswith(ENGAGEMENTS.name + ":")}
        if self.catalog:
            log.info("restored %d items; replaying the tail", len(self.catalog))
        self.metrics.index_items.set(len(self.index) if self.index is not None else 0)
        return offsets

    def _connect(self, offsets: dict[str, int]) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        consumer = KafkaConsumer(
            **self.settings.consumer(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.config.max_poll_records,
        )
        tps = []
        for topic in TOPICS:
            parts = consumer.partitions_for_topic(topic)
            deadline = time.monotonic() + 30
            while not parts and time.monotonic() < deadline:
                time.sleep(0.2)
                consumer.topics()  # refreshes metadata
                parts = consumer.partitions_for_topic(topic)
            if not parts:
                consumer.close()
                raise RuntimeError(
                    f"topic {topic!r} does not exist on {self.settings.bootstrap_servers}; "
                    "create the topics first (`recstream topics`)"
                )
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            stored = offsets.get(f"{tp.topic}:{tp.partition}")
            if stored is not None:
                consumer.seek(tp, stored)
        ends = consumer.end_offsets(tps)
        self._start_ends = {f"{tp.topic}:{tp.partition}": int(end) for tp, end in ends.items()}
        for tp in tps:
            self._offsets[f"{tp.topic}:{tp.partition}"] = int(consumer.position(tp))
        self._consumer = consumer
        self._tps = tps
        self._producer = KafkaProducer(
            **self.settings.kafka_python(), linger_ms=5, max_request_size=DEAD_LETTER_MAX_BYTES
        )
        self._dead_letters = DeadLetters(_Sender(self._producer), rejected_by="serving")
        self._check_ready()

    # -- the consumer thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._consumer.poll(
                    timeout_ms=self.config.poll_timeout_ms,
                    max_records=self.config.max_poll_records,
                )
                if batch:
                    self.apply(batch)
                self._check_ready()
                now = time.monotonic()
                if now - self._last_lag > 2.0:
                    self._last_lag = now
                    self._update_lag()
                every = self.config.snapshot_every_s
                if every > 0 and self._dirty and now - self._last_snapshot > every:
                    self.snapshot()
        except BaseException as exc:  # surfaced by /readyz and the logs
            self.error = exc
            log.exception("read models stopped")

    def apply(self, batch: dict[Any, list[Any]]) -> None:
        """Apply one poll's records (``{TopicPartition: [ConsumerRecord]}``)."""
        by_topic: dict[str, list[tuple[Any, Any]]] = {}
        for tp, records in batch.items():
            if records:
                by_topic.setdefault(tp.topic, []).append((tp, records))
        with self.db.batch() as b:
            for tp, records in by_topic.get(ITEM_EMBEDDINGS.name, []):
                self._apply_items(tp, records, b)
            for tp, records in by_topic.get(USER_INTERESTS.name, []):
                self._apply_users(tp, records, b)
            self.db.offsets.commit(
                {
                    f"{tp.topic}:{tp.partition}": recs[-1].offset + 1
                    for t in (ITEM_EMBEDDINGS.name, USER_INTERESTS.name)
                    for tp, recs in by_topic.get(t, [])
                },
                batch=b,
            )
        self._after_users()
        for tp, records in by_topic.get(ENGAGEMENTS.name, []):
            self._apply_engagements(tp, records)
        for tp, records in batch.items():
            if records:
                self._offsets[f"{tp.topic}:{tp.partition}"] = records[-1].offset + 1
        self._dirty = True
        if self._dead_letters is not None and self._dead_letters.count:
            self._producer.flush()

    def _apply_items(self, tp: Any, records: Iterable[Any], b: Any) -> None:
        latest: dict[str, ItemEmbedding | None] = {}
        for m in records:
            if m.value is None:
                if m.key:
                    latest[m.key.decode()] = None
                continue
            try:
                rec = decode_for_topic(tp.topic, m.value)
                rec.array()
            except InvalidEvent as exc:
                self._reject(m, tp, exc.reason)
                continue
            if self.index is not None and rec.dim != self.index.dim:
                self._reject(
                    m, tp, f"vector dim {rec.dim} differs from the index's {self.index.dim}"
                )
                continue
            latest[rec.item_id] = rec
        puts = [r for r in latest.values() if r is not None]
        gone = [i for i, r in latest.items() if r is None]
        if puts:
            vectors = normalize_rows(np.stack([r.array() for r in puts]))
            ids = [r.item_id for r in puts]
            if self.index is None:
                self._install_index(self._new_index(vectors.shape[1]))
            assert self.index is not None and self.recommender is not None
            metas = [{"title": r.text, "category": r.category, "tags": r.tags} for r in puts]
            self.db.items.put_many(
                ids,
                vectors,
                encoder_version=[r.encoder_version for r in puts],
                metadata=metas,
                ts=[r.source_ts for r in puts],
                batch=b,
            )
            self.index.upsert(ids, vectors)
            # Catalog after the index: an item is returned only once it can be found.
            for r in puts:
                self.catalog[r.item_id] = ItemInfo(r.text, r.category, tuple(r.tags), r.source_ts)
            self.recommender.items_changed(vectors, bulk=not self.ready or len(puts) > _BULK_UPSERT)
            self.metrics.records.labels(tp.topic, "upserted").inc(len(puts))
        if gone:
            # Catalog first: a deleted item stops being returned before it leaves the index.
            for item_id in gone:
                self.catalog.pop(item_id, None)
            if self.index is not None:
                self.index.delete(gone)
            if self.recommender is not None:
                self.recommender.items_deleted(gone)
            else:
                for item_id in gone:
                    self.popularity.forget(item_id)
            self.db.items.delete(gone, batch=b)
            self.metrics.records.labels(tp.topic, "deleted").inc(len(gone))
        if self.index is not None:
            self.metrics.index_items.set(len(self.index))

    def _apply_users(self, tp: Any, records: Iterable[Any], b: Any) -> None:
        latest: dict[str, tuple[UserInterests | None, bytes | None]] = {}
        for m in records:
            if m.value is None:
                if m.key:
                    latest[m.key.decode()] = (None, None)
                continue
            try:
                rec = decode_for_topic(tp.topic, m.value)
            except InvalidEvent as exc:
                self._reject(m, tp, exc.reason)
                continue
            latest[rec.user_id] = (rec, m.value)
        self._pending_users.update(latest)
        for user_id, (rec, raw) in latest.items():
            if rec is None:
                self.db.users.delete(user_id, batch=b)
                self.metrics.records.labels(tp.topic, "deleted").inc()
            else:
                self.db.users.put(user_id, None, record=raw, batch=b)
                self.metrics.records.labels(tp.topic, "upserted").inc()

    def _after_users(self) -> None:
        """Refresh cached profiles once the batch is written (decode live users eagerly)."""
        latest, self._pending_users = self._pending_users, {}
        if not latest:
            return
        now_ms = int(time.time() * 1000)
        live = self.ready
        for user_id, (rec, _) in latest.items():
            if rec is None:
                with self._profiles_lock:
                    self._profiles.pop(user_id, None)
                self.recent_users.pop(user_id, None)
                continue
            if live:
                self._cache_profile(profile_from_record(rec, applied_ms=now_ms))
                self.metrics.freshness.observe(max(now_ms - rec.last_event_ts, 0) / 1000)
            else:
                with self._profiles_lock:
                    self._profiles.pop(user_id, None)
            self.recent_users.pop(user_id, None)
            self.recent_users[user_id] = rec.last_event_ts
            while len(self.recent_users) > self.config.recent_users:
                self.recent_users.popitem(last=False)

    def _apply_engagements(self, tp: Any, records: Iterable[Any]) -> None:
        items: list[str] = []
        stamps: list[int] = []
        for m in records:
            try:
                ev = decode_for_topic(tp.topic, m.value)
            except InvalidEvent:
                # The interests worker owns dead-lettering this topic; we only count.
                self.metrics.records.labels(tp.topic, "invalid").inc()
                continue
            # A parked engagement re-sent by the interests worker was counted the first time.
            if isinstance(ev, Engagement) and not is_resent(m.headers):
                items.append(ev.item_id)
                stamps.append(ev.ts)
        if items:
            self.popularity.learn_many(items, stamps)
            self.metrics.records.labels(tp.topic, "counted").inc(len(items))

    def _reject(self, m: Any, tp: Any, reason: str) -> None:
        self.metrics.records.labels(tp.topic, "dead_lettered").inc()
        if self._dead_letters is not None:
            self._dead_letters.reject(
                m.value,
                reason,
                source_topic=tp.topic,
                partition=tp.partition,
                offset=m.offset,
                key=m.key,
            )

    def _cache_profile(self, profile: UserProfile) -> None:
        packed = _pack(profile)
        with self._profiles_lock:
            self._profiles[profile.user_id] = packed
            self._profiles.move_to_end(profile.user_id)
            while len(self._profiles) > self.config.user_cache_size:
                self._profiles.popitem(last=False)

    def _new_index(self, dim: int) -> ItemIndex:
        cfg = self.config
        return ItemIndex(
            dim,
            M=cfg.index_M,
            ef_construction=cfg.index_ef_construction,
            ef=cfg.index_ef,
            copies=cfg.index_copies,
            initial_capacity=4096,
        )

    def _install_index(self, index: ItemIndex) -> None:
        self.index = index
        self.recommender = Recommender(index, self.catalog, self.popularity, self.config.recommend)

    def _check_ready(self) -> None:
        if self._ready.is_set():
            return
        if all(self._offsets.get(tp, 0) >= end for tp, end in self._start_ends.items()):
            log.info("read models caught up: %d items", len(self.catalog))
            if self.config.freeze_gc_when_ready:
                gc.collect()
                gc.freeze()
            self._ready.set()
            self.metrics.ready.set(1)

    def _update_lag(self) -> None:
        try:
            ends = self._consumer.end_offsets(self._tps)
        except Exception:  # lag is telemetry: never fatal
            return
        lag: dict[str, int] = {}
        for tp, end in ends.items():
            behind = max(int(end) - self._offsets.get(f"{tp.topic}:{tp.partition}", 0), 0)
            lag[tp.topic] = lag.get(tp.topic, 0) + behind
        for topic, value in lag.items():
            self.metrics.lag.labels(topic).set(value)
        cache = self.recommender.cache if self.recommender is not None else None
        if cache is not None:
            self.metrics.cache_hits.set(cache.hits)
            self.metrics.cache_misses.set(cache.misses)

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Snapshot the index and popularity with the offsets they reflect; flush RocksDB."""
        cfg = self.config
        offsets = dict(self._offsets)
        if self.index is not None:
            item_offsets = {
                k: v for k, v in offsets.items() if k.startswith(ITEM_EMBEDDINGS.name + ":")
            }
            self.index.snapshot(cfg.data_dir / "index", item_offsets, keep=cfg.snapshot_keep)
        pop_offsets = {k: v for k, v in offsets.items() if k.startswith(ENGAGEMENTS.name + ":")}
        blob = self.popularity.to_bytes()

        def write_files(tmp: Path) -> None:
            (tmp / _POPULARITY_FILE).write_bytes(blob)

        write_snapshot(
            cfg.data_dir / "popularity",
            write_files,
            {"format": "recstream.popularity", "offsets": pop_offsets},
            keep=cfg.snapshot_keep,
        )
        self.db.flush()
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self.metrics.snapshots.inc()


def _item_info(metadata: dict[str, Any], ts: int) -> ItemInfo:
    return ItemInfo(
        str(metadata.get("title") or ""),
        metadata.get("category"),
        tuple(metadata.get("tags") or ()),
        ts,
    )


class _Sender:
    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def send(self, topic: str, value: bytes | None, *, key: bytes | None) -> Any:
        return self._producer.send(topic, value=value, key=key)
