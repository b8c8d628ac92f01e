"""One serving replica's read models (``ReadModels``): the materializers of the three topics,
kept current by one background thread.

Each poll's writes to the item and user stores and the offsets they reach go to RocksDB in one
atomic batch. Every ``snapshot_every_s`` the index and the popularity model are snapshotted
(``snapshots``).

Ready (``/readyz``) once every partition has been consumed up to the end offsets seen at start.
Freshness = time from a user's last event (its ``ts``) to this replica applying the interests
record that reflects it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.popularity import DecayedPopularity
from serving.readmodels.config import ReadModelConfig
from serving.readmodels.consumer import TopicConsumer
from serving.readmodels.engagements import EngagementCounter
from serving.readmodels.items import ItemMaterializer
from serving.readmodels.metrics import ServingMetrics
from serving.readmodels.snapshots import Snapshots
from serving.readmodels.users import UserMaterializer
from serving.recommend import ItemInfo, Recommender, UserProfile
from stores import ItemIndex, StateDB
from streams.schemas import UserInterests
from streams.settings import KafkaSettings
from streams.topics import ENGAGEMENTS, ITEM_EMBEDDINGS, USER_INTERESTS

log = logging.getLogger(__name__)

# Upserts larger than this clear the ANN cache instead of checking each cached medoid.
_BULK_UPSERT = 256


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
        self.recommender: Recommender | None = None
        self._topics = TopicConsumer(settings, cfg, self.metrics)
        self._items = ItemMaterializer(
            self.db.items,
            self.db.offsets,
            cfg,
            self.metrics,
            self._topics.reject,
            on_index=self._install_index,
            on_upserted=self._items_upserted,
            on_deleted=self._items_deleted,
        )
        self._users = UserMaterializer(self.db.users, cfg, self.metrics, self._topics.reject)
        self._engagements = EngagementCounter(
            DecayedPopularity(cfg.popularity_half_life_hours), self.metrics
        )
        self._snapshots = Snapshots(cfg, self.db, self._items, self._engagements)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self._last_lag = 0.0
        self.error: BaseException | None = None
        self.started_unix = time.time()

    @property
    def catalog(self) -> dict[str, ItemInfo]:
        """Live items' metadata; an item is in it only while the index can find it."""
        return self._items.catalog

    @property
    def index(self) -> ItemIndex | None:
        return self._items.index

    @property
    def popularity(self) -> DecayedPopularity:
        return self._engagements.popularity

    @property
    def recent_users(self) -> OrderedDict[str, int]:
        """Recently updated users (oldest first) -> their last event's ``ts``."""
        return self._users.recent_users

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> ReadModels:
        """Restore local state, connect, seek, and start consuming in the background."""
        if self._thread is not None:
            return self
        offsets = self._snapshots.restore()
        self.metrics.index_items.set(len(self.index) if self.index is not None else 0)
        self._topics.connect(offsets)
        self._check_ready()
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
            if self._topics.connected and self.error is None:
                self.snapshot()
        finally:
            self._topics.close()
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

    @property
    def connected(self) -> bool:
        """Connected to the broker: from ``start()`` until ``close()``."""
        return self._topics.connected

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        return self._ready.wait(timeout_s)

    def status(self) -> dict[str, Any]:
        """Readiness details: positions vs the ends seen at start, per topic."""
        return {
            "ready": self.ready,
            "consuming": self.alive,
            "items": len(self.catalog),
            "behind_start_ends": self._topics.behind_start_ends(),
            "error": repr(self.error) if self.error else None,
        }

    # -- queries ---------------------------------------------------------------------------
    def profile(self, user_id: str) -> UserProfile | None:
        """The user's profile (decoded from the stored record, cached), or None if unknown."""
        return self._users.profile(user_id)

    def record(self, user_id: str) -> UserInterests | None:
        return self._users.record(user_id)

    def cached_applied_ms(self, user_id: str) -> int:
        """When the user's cached profile was applied (0 if unknown): no store read."""
        return self._users.cached_applied_ms(user_id)

    def item_vectors(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Stored vectors of the ids found (for projections)."""
        return self.db.items.vectors(list(ids))

    # -- the consumer thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._topics.poll()
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
                self._items.apply(tp, records, b)
            for tp, records in by_topic.get(USER_INTERESTS.name, []):
                self._users.apply(tp, records, b)
                if any(m.value is None for m in records):  # a user deleted
                    self._snapshots.forgot(users=True)
            # The item materializer writes its partitions' offsets itself.
            self.db.offsets.commit(
                {
                    f"{tp.topic}:{tp.partition}": recs[-1].offset + 1
                    for tp, recs in by_topic.get(USER_INTERESTS.name, [])
                },
                batch=b,
            )
        self._users.refresh_profiles(live=self.ready)
        for tp, records in by_topic.get(ENGAGEMENTS.name, []):
            self._engagements.apply(tp, records)
        self._topics.advance(batch)
        self._dirty = True
        self._topics.flush_dead_letters()

    # -- what the item materializer's changes mean for the recommender ---------------------
    def _install_index(self, index: ItemIndex) -> None:
        self.recommender = Recommender(index, self.catalog, self.popularity, self.config.recommend)

    def _items_upserted(self, vectors: np.ndarray) -> None:
        assert self.recommender is not None
        self.recommender.items_changed(vectors, bulk=not self.ready or len(vectors) > _BULK_UPSERT)

    def _items_deleted(self, item_ids: list[str]) -> None:
        self._snapshots.forgot(items=True)
        if self.recommender is not None:
            self.recommender.items_deleted(item_ids)
        else:
            for item_id in item_ids:
                self.popularity.forget(item_id)

    def _check_ready(self) -> None:
        if self._ready.is_set():
            return
        if self._topics.caught_up():
            log.info("read models caught up: %d items", len(self.catalog))
            if self.config.freeze_gc_when_ready:
                gc.collect()
                gc.freeze()
            self._ready.set()
            self.metrics.ready.set(1)

    def _update_lag(self) -> None:
        if not self._topics.update_lag():
            return
        cache = self.recommender.cache if self.recommender is not None else None
        if cache is not None:
            self.metrics.cache_hits.set(cache.hits)
            self.metrics.cache_misses.set(cache.misses)

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Snapshot the index and popularity with the offsets they reflect; flush RocksDB."""
        self._snapshots.take(self._topics.positions)
        self._dirty = False
        self._last_snapshot = time.monotonic()
        self.metrics.snapshots.inc()
