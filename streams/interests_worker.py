"""The interests worker: ``engagements`` -> per-user ``InterestClusters`` -> ``user-interests``.

One faust app (``recstream worker interests``):

- **agent on engagements** (keyed by user): takes events in batches (``take_waiting``: a batch
  closes once it holds every event the broker had, so a lagging worker takes big batches and
  a caught-up one is not held by a timer; the next batch fills while one is worked on), groups
  them by user, and sends each user's events with their item vectors to the **engine process**
  (``streams.engine_process``: the users' ``InterestClusters`` live in a child process, so the
  engine's numpy work and faust's consume path run on two cores), in chunks of users. It writes
  each changed state once per batch to the ``interests`` table (rocksdb store,
  changelog-backed) and publishes the user's interests to the compacted ``user-interests``
  topic.
- **item feed** (a task): every worker reads *all* partitions of ``item-embeddings`` into a
  local RocksDB item store (with an LRU in front), so any worker can look up any item. The
  agent starts only once the feed has caught up with the topic ends seen at start.
- **parking**: an engagement whose item has no embedding yet is parked in the ``parked`` table
  (bounded per user, persisted through its changelog). When the embedding arrives, the feed
  re-publishes the parked events to ``engagements`` (same key, same event id), and the agent
  applies them like any other event. Idempotence by event id makes every redelivery harmless.
- ``item_deleted`` reaches this worker as a tombstone on ``item-embeddings``: the item leaves
  the item store and joins a deleted set; each user's state drops deleted items **lazily, at the
  user's next event** (the serving side never returns deleted items in any case).
- ``user_deleted`` empties the user's state and publishes a tombstone to ``user-interests``.
- Bad messages go to ``dead-letters`` with the reason.

Guarantee: at-least-once from Kafka, exactly-once in effect: each stored state carries the
(partition, offset) of the last engagement it holds, and the engine skips event ids it applied.
A batch's changelog and ``user-interests`` records go out through an ``Outbox`` (one record
batch per partition) and are confirmed by the broker before the batch's offsets are acked,
hence before faust can commit them. A rebalance cuts a batch short between two chunks; what
is left is not acked and comes again after the rebalance (``InterestsWorker.process``). Table
writes need faust's "current event" (it picks the changelog partition from it); a batch from
``take_waiting`` has none, so the agent sets it to the user's last event before writing.

Where the time goes (see README, Benchmarks): faust's per-event consume path on this process's
core, the engine (learn, summaries, state bytes) on the engine process's; records out are
batched, the table stores write without a WAL, the loop is uvloop's and full garbage
collections walk only what is new (``streams.heap.FreezeSurvivors``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import struct
import time
import weakref
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from stores.kv import CachedItemVectors, StateDB
from streams.batching import take_waiting
from streams.engine_process import (
    ENGINES,
    FORGET,
    PUBLISHED_STATES,
    Batch,
    EngineProcess,
    EngineProcessError,
    HeldUsers,
    Learn,
    LocalEngine,
    Publishing,
    UserJob,
    UserResult,
)
from streams.faust_consumer import use_quick_consumer
from streams.heap import FreezeSurvivors
from streams.interests import InterestClusters, InterestConfig
from streams.outbox import Outbox
from streams.schemas import (
    Engagement,
    InvalidEvent,
    ItemEmbedding,
    UserDeleted,
    decode_for_topic,
)
from streams.settings import KafkaSettings
from streams.topics import (
    DEAD_LETTERS,
    ENGAGEMENTS,
    ITEM_EMBEDDINGS,
    RESENT_HEADER,
    USER_INTERESTS,
    is_resent,
)

log = logging.getLogger(__name__)

APP_ID = "recstream-interests"
EVENT_LOOPS = ("uvloop", "asyncio")
# Table values: (partition, offset) of the user's last processed engagement, then the state.
STATE_POSITION = struct.Struct("<iq")


@dataclass(frozen=True)
class InterestsWorkerConfig:
    """Tunables of the interests worker (defaults suit the embedded broker and production)."""

    app_id: str = APP_ID
    data_dir: Path = Path("data/interests-worker")
    # A batch closes once it holds every event the broker had, at batch_size events, or
    # batch_within_s after the previous batch (see streams.batching.take_waiting).
    batch_size: int = 50_000
    batch_within_s: float = 1.0
    # Where the users' states live: "process" (a child process: the engine on a core of its
    # own) or "local" (this process).
    engine_in: str = "process"
    # Users per request to the engine; one request is worked on while the next is prepared
    # and the previous one's results are written.
    chunk_users: int = 1_000
    state_cache_users: int = 20_000
    item_cache_vectors: int = 100_000
    max_parked_per_user: int = 1_000
    published_interests: int = 10
    published_members: int = 5
    # Engine state bytes in each user-interests record (readers use its actions): "none",
    # "view" (actions, assignments) or "full" (bit-exact), for tools that replay the engine.
    published_state: str = "none"
    commit_interval_s: float = 1.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so Prometheus can reach it
    event_loop: str = "uvloop"  # or "asyncio"; uvloop falls back to asyncio when missing
    # Survivors of full collections are frozen; every this many seconds the collector sees the
    # whole heap once more (see streams.heap.FreezeSurvivors). 0 = the default collector.
    full_gc_every_s: float = 600.0
    engine: InterestConfig = field(default_factory=InterestConfig)

    def __post_init__(self) -> None:
        if self.published_state not in PUBLISHED_STATES:
            raise ValueError(
                f"published_state must be view, full or none: {self.published_state!r}"
            )
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop must be uvloop or asyncio: {self.event_loop!r}")
        if self.full_gc_every_s < 0 or self.batch_within_s <= 0:
            raise ValueError("full_gc_every_s must be >= 0 and batch_within_s > 0")
        if self.engine_in not in ENGINES:
            raise ValueError(f"engine_in must be process or local: {self.engine_in!r}")
        if self.chunk_users < 1 or self.state_cache_users < 1:
            raise ValueError("chunk_users and state_cache_users must be >= 1")

    @property
    def publishing(self) -> Publishing:
        return Publishing(self.published_interests, self.published_members, self.published_state)


class _Planned(NamedTuple):
    """One user's part of a chunk, as planned by the worker (see ``UserJob``)."""

    user_id: str
    pairs: list[tuple[Any, Any]]  # (faust event, decoded event)
    stored: bytes | None
    fresh: bool
    ops: list[Learn | None]
    redelivered: bool
    position: tuple[int, int] | None  # of the user's last engagement in this chunk


def _engagement_or_error(raw: bytes | None) -> Any:
    """An ``engagements`` message decoded, or the ``InvalidEvent`` saying why it is not one."""
    try:
        return decode_for_topic(ENGAGEMENTS.name, raw)
    except InvalidEvent as exc:
        return exc


def _without_faust_monitor(app: Any) -> None:
    """Keep faust's Monitor off the app's sensors: it books every message and stream event
    in and out (~4% of the worker's time at full speed, py-spy), for faust's web stats, which
    the worker does not serve (its metrics are its own, ``WorkerMetrics``). faust's direct calls
    to ``app.monitor`` (end offsets, commits) still reach it."""
    init_dependencies = app.on_init_dependencies

    def on_init_dependencies() -> Any:
        services = init_dependencies()  # adds the monitor to the sensors
        app.sensors.remove(app.monitor)
        return services

    app.on_init_dependencies = on_init_dependencies


class _BatchVectors:
    """The item vectors of a chunk: ``ids[i]`` is row ``i``; rows added as lookups come."""

    def __init__(self, ids: list[str], matrix: np.ndarray) -> None:
        self.ids = list(ids)
        self.rows = {item: i for i, item in enumerate(self.ids)}
        self._blocks = [matrix] if len(ids) else []

    def add(self, ids: list[str], matrix: np.ndarray) -> None:
        for item in ids:
            self.rows[item] = len(self.ids)
            self.ids.append(item)
        if len(ids):
            self._blocks.append(matrix)

    def matrix(self) -> np.ndarray:
        if len(self._blocks) == 1:
            return self._blocks[0]
        if not self._blocks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(self._blocks)


class _Chunk(NamedTuple):
    """A request to the engine process in flight."""

    planned: list[_Planned]
    results: asyncio.Future[list[UserResult]]
    outcomes: Tally[str]  # of the events not sent (redeliveries, parked, user deletions)
    sent: float  # perf_counter


class WorkerMetrics:
    """Prometheus metrics of the interests worker."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "recstream_interest_events_total",
            "Engagement events processed",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "recstream_interest_dead_letters_total",
            "Messages sent to dead-letters",
            registry=registry,
        )
        self.parked = Gauge(
            "recstream_interest_parked_events",
            "Engagements waiting for their item's embedding",
            registry=registry,
        )
        self.lag = Gauge(
            "recstream_interest_consumer_lag",
            "Engagements not yet consumed (sum over partitions)",
            registry=registry,
        )
        self.update_latency = Histogram(
            "recstream_interest_update_seconds",
            "Time from a user's events sent to the engine to their results written (per user)",
            buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=registry,
        )
        self.batch_size = Histogram(
            "recstream_interest_batch_events",
            "Events per processed batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000),
            registry=registry,
        )
        self.consuming_since = Gauge(
            "recstream_interest_consuming_since_seconds",
            "When the agent could first take engagements (unix time; feed loaded, partitions in)",
            registry=registry,
        )
        self.deferred = Counter(
            "recstream_interest_deferred_events_total",
            "Events of a batch left to the next partition owner because a rebalance began",
            registry=registry,
        )
        self.partitions = Gauge(
            "recstream_interest_partitions",
            "Engagement partitions assigned to this worker",
            registry=registry,
        )
        self.items = Gauge(
            "recstream_interest_item_vectors",
            "Item embeddings known to this worker",
            registry=registry,
        )


class ItemFeed:
    """Materializes all of ``item-embeddings`` into a local item store (every worker has all)."""

    def __init__(self, settings: KafkaSettings, db: StateDB, cache_size: int) -> None:
        self.settings = settings
        self.db = db
        self.vectors = CachedItemVectors(db.items, capacity=cache_size)
        # Deleted since this process started; states restored later drop deleted items anyway,
        # because their vectors are gone from the store.
        self.deleted: set[str] = set()
        self.ready = asyncio.Event()
        self.arrived: list[str] = []  # item ids that got an embedding since last drained

    def lookup(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        return self.vectors.vectors(ids)

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            **self.settings.aiokafka(),
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(ITEM_EMBEDDINGS.name)
            while not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(ITEM_EMBEDDINGS.name)
            tps = [TopicPartition(ITEM_EMBEDDINGS.name, p) for p in sorted(parts)]
            consumer.assign(tps)
            stored = self.db.offsets.load()
            for tp in tps:
                offset = stored.get(f"{tp.topic}:{tp.partition}")
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            end = await consumer.end_offsets(tps)
            if await _caught_up(consumer, tps, end):
                self.ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batch.items():
                    self._apply(tp.topic, tp.partition, records)
                if not self.ready.is_set() and await _caught_up(consumer, tps, end):
                    log.info("item feed caught up: %d item vectors", len(self.db.items))
                    self.ready.set()
        finally:
            await consumer.stop()

    def _apply(self, topic: str, partition: int, records: Iterable[Any]) -> None:
        latest: dict[str, ItemEmbedding | None] = {}  # None = deleted; later records win
        last = -1
        for m in records:
            last = m.offset
            if not m.key:
                continue
            if m.value is None:
                latest[m.key.decode()] = None
                continue
            try:
                rec = decode_for_topic(topic, m.value)
                rec.array()  # checks the vector against its dim
            except InvalidEvent as exc:
                log.warning(
                    "skipping bad item embedding at %s[%d]@%d: %s",
                    topic,
                    partition,
                    m.offset,
                    exc.reason,
                )
                continue
            latest[rec.item_id] = rec
        if last < 0:
            return
        puts = [r for r in latest.values() if r is not None]
        gone = [i for i, r in latest.items() if r is None]
        # One dimension per item store (the first item's): another encoder's vectors need a
        # new store. Skipped, not fatal: the feed must go on.
        # (``dim`` is checked against the vector when the record is decoded.)
        dim = self.db.items.dim or (puts[0].dim if puts else None)
        for r in puts:
            if r.dim != dim:
                log.warning(
                    "skipping item embedding %s: %d-d, the item store holds %s-d vectors",
                    r.item_id,
                    r.dim,
                    dim,
                )
        puts = [r for r in puts if r.dim == dim]
        with self.db.batch() as batch:
            if puts:
                self.db.items.put_many(
                    [r.item_id for r in puts],
                    np.stack([r.array() for r in puts]),
                    encoder_version=[r.encoder_version for r in puts],
                    ts=[r.source_ts for r in puts],
                    batch=batch,
                )
            if gone:
                self.db.items.delete(gone, batch=batch)
            self.db.offsets.commit({f"{topic}:{partition}": last + 1}, batch=batch)
        self.vectors.invalidate(latest)
        self.deleted.difference_update(r.item_id for r in puts)
        self.deleted.update(gone)
        self.arrived.extend(r.item_id for r in puts)


END_MARKER_KEY = "\x00recstream:end-of-batch"
"""Key of the tombstone that closes a batch on each written changelog partition (no user id
can be it: ids are validated printable strings)."""


class _Written:
    """What faust's ``Table.on_key_set`` reads back from ``send_changelog``."""

    __slots__ = ("message", "partition")

    def __init__(self, partition: int) -> None:
        self.message = self
        self.partition = partition


class _UnloggedRocksDB:
    """faust's RocksDB options, opening databases that write without a write-ahead log.

    The changelog is a table's log: after a crash the worker rebuilds its local tables from
    the changelogs anyway (``_forget_local_tables_after_crash``), and a memtable lost at exit
    takes the persisted changelog offset with it, so the restart only replays more. The WAL
    cost more than the memtable insert of each state write.
    """

    def __init__(self, options: Any) -> None:
        self._options = options

    def open(self, path: Path, *, read_only: bool = False) -> Any:
        from rocksdict import WriteOptions

        db = self._options.open(path, read_only=read_only)
        unlogged = WriteOptions()
        unlogged.disable_wal = True  # type: ignore[method-assign,assignment]  # a property; stub says method
        db.set_write_options(unlogged)
        return db

    def __getattr__(self, name: str) -> Any:
        return getattr(self._options, name)


def _outbox_table(outbox: Outbox, touched: set[tuple[Any, int]]) -> type:
    """A faust Table class whose changelog records go to ``outbox`` (sent with the batch's
    other records by ``InterestsWorker._confirm_delivery``), noting each written (table,
    changelog partition) in ``touched``; its RocksDB stores write without a WAL."""
    import faust

    class OutboxTable(faust.Table):
        def _new_store_by_url(self, url: Any) -> Any:
            store = super()._new_store_by_url(url)
            options = getattr(store, "rocksdb_options", None)
            if options is not None and getattr(options, "use_rocksdict", False):
                store.rocksdb_options = _UnloggedRocksDB(options)  # type: ignore[attr-defined]
            return store

        def changelog_key(self, key: Any) -> bytes:
            """``key`` as the table stores it (and as its changelog records carry it)."""
            raw = self.app.serializers.dumps_key(self.key_type, key, serializer=self.key_serializer)
            assert raw is not None
            return raw

        def send_changelog(
            self,
            partition: int | None,
            key: Any,
            value: Any,
            key_serializer: Any = None,
            value_serializer: Any = None,
        ) -> Any:
            if partition is None:
                raise RuntimeError("table written outside of an engagement's processing")
            raw = None
            if value is not None:
                raw = self.app.serializers.dumps_value(
                    self.value_type, value, serializer=value_serializer or self.value_serializer
                )
            outbox.add(
                self.changelog_topic.get_topic_name(),
                self.changelog_key(key),
                raw,
                partition=partition,
            )
            touched.add((self, partition))
            return _Written(partition)

    return OutboxTable


def use_event_loop(name: str) -> str:
    """Make ``name`` ("uvloop" or "asyncio") the event loop of faust apps started from now on
    in this process; returns the one in use (asyncio when uvloop is not installed).

    faust's per-event work is mostly asyncio machinery (futures, callbacks, transports):
    uvloop, which faust and mode support, does it in C.
    """
    if name not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {name!r}: expected uvloop or asyncio")
    if name == "uvloop":
        try:
            import mode.loop

            mode.loop.use("uvloop")
            return "uvloop"
        except ImportError:
            log.warning("uvloop is not installed: running on asyncio's own event loop")
    return "asyncio"


async def _caught_up(consumer: Any, tps: Sequence[Any], end: dict[Any, int]) -> bool:
    for tp in tps:
        if await consumer.position(tp) < end[tp]:
            return False
    return True


def ackable(events: Sequence[Any], undone: Sequence[Any]) -> list[Any]:
    """The ``events`` (faust ``Event`` objects) that may be acked when ``undone`` were not
    handled: in each partition, those before its first undone event.

    faust commits an offset once the events before it are acked, but passes over a one-offset
    gap (it may be a transaction marker), so acking beyond an undone event could commit it.
    Handled events left unacked come again and are dropped as redeliveries.
    """
    first_undone: dict[Any, int] = {}
    for event in undone:
        tp, offset = event.message.tp, event.message.offset
        if tp not in first_undone or offset < first_undone[tp]:
            first_undone[tp] = offset
    return [
        event
        for event in events
        if event.message.tp not in first_undone
        or event.message.offset < first_undone[event.message.tp]
    ]


class InterestsWorker:
    """The faust app and the logic of its agents (see the module docstring)."""

    def __init__(
        self,
        settings: KafkaSettings,
        config: InterestsWorkerConfig | None = None,
        *,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        import faust

        self.settings = settings
        self.config = config or InterestsWorkerConfig()
        self.metrics = metrics or WorkerMetrics()
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self._forget_local_tables_after_crash()
        # Changelog and user-interests records of the current batch, sent together after it.
        self.outbox = Outbox(settings, client_id=f"{cfg.app_id}-outbox")
        # (table, changelog partition) written in the current batch: end markers, offsets.
        self._touched: set[tuple[Any, int]] = set()
        self.app = faust.App(
            cfg.app_id,
            broker=settings.faust_broker(),
            broker_credentials=settings.faust_credentials(),
            store="rocksdb://",
            datadir=str(cfg.data_dir / "faust"),
            topic_partitions=ENGAGEMENTS.partitions,
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_rebalance_timeout=settings.rebalance_timeout_ms / 1000,
            broker_heartbeat_interval=max(settings.session_timeout_ms / 4000, 0.1),
            broker_commit_interval=cfg.commit_interval_s,
            consumer_auto_offset_reset="earliest",
            table_standby_replicas=0,
            # faust's producer carries only dead letters and re-sent parked events (the Outbox
            # carries the rest); parked events come in bursts when their item arrives.
            producer_linger_ms=5,
            producer_max_batch_size=512 * 1024,
            # Big polls while catching up make big per-user batches: one state write per user.
            broker_max_poll_records=cfg.batch_size,
            web_enabled=False,
            stream_wait_empty=False,
            # Room for whole batches in the stream buffer (faust's 4096 cut them to ~800).
            stream_buffer_maxsize=max(4096, 2 * cfg.batch_size),
            Table=_outbox_table(self.outbox, self._touched),
        )
        use_quick_consumer(self.app)  # no task per message; no event lost around a seek
        _without_faust_monitor(self.app)
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        self.engagements = self.app.topic(
            ENGAGEMENTS.name, partitions=ENGAGEMENTS.partitions, **raw
        )
        self.dead_letter_topic = self.app.topic(DEAD_LETTERS.name, **raw)
        # bytes values are stored raw; str keys use faust's default (json) key codec.
        table_opts: dict[str, Any] = {
            "partitions": ENGAGEMENTS.partitions,
            "key_type": str,
            "value_type": bytes,
        }
        self.states = self.app.Table("interests", **table_opts)
        self.parked = self.app.Table("parked", **table_opts)
        self.parked.on_recover(self._on_parked_recovered)
        self.items_db = StateDB(cfg.data_dir / "items")
        self.feed = ItemFeed(settings, self.items_db, cfg.item_cache_vectors)
        # Which users the engine process holds (it keeps the same least-recently-used set).
        self._held = HeldUsers(cfg.state_cache_users)
        self._sent_deleted: set[str] = set()  # feed.deleted as the engine process knows it
        self._engine: EngineProcess | LocalEngine | None = None
        # Engagements decoded as they are taken, by (partition, offset) until processed (a
        # message read again has the same bytes, so an entry never goes stale).
        self._decoded: dict[tuple[Any, int], Any] = {}
        # (partition, offset) of the last engagement each cached user's stored state reflects.
        self._positions: dict[str, tuple[int, int]] = {}
        # Next engagement offset to process, per partition (for the lag gauge).
        self._next_offset: dict[int, int] = {}
        # Parked events by item, and the users that have any: built once the tables are
        # recovered (None until then, and again from a revocation to the next recovery).
        self._parked_index: dict[str, set[str]] | None = None
        self._parked_users: set[str] | None = None
        self._parked_count = 0
        self._agent_ready = self._assigned = self._consuming = False
        self.app.agent(self.engagements, name="interests")(self._agent)
        self.app.task(self._feed_task)
        self.app.timer(2.0)(self._housekeeping)
        self.app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        self.app.on_rebalance_complete.connect(cast(Any, self._on_rebalance_complete))

    @property
    def engine(self) -> EngineProcess | LocalEngine:
        if self._engine is None:
            raise RuntimeError("the engine process runs only while the worker runs")
        return self._engine

    # -- faust wiring -------------------------------------------------------------------

    async def _feed_task(self) -> None:
        await self.feed.run()

    def _mark_consuming(self) -> None:
        """Set the consuming-since gauge once: when the agent is ready (item feed loaded) and
        the first partitions are assigned, whichever comes last."""
        if self._agent_ready and self._assigned and not self._consuming:
            self._consuming = True
            self.metrics.consuming_since.set_to_current_time()

    async def _on_revoked(self, app: Any, *args: Any, **kwargs: Any) -> None:
        # Another worker may own these users next: forget what we cached about them.
        self._held.clear()
        if self._engine is not None:
            await self._engine.clear()
        self._positions.clear()
        self._next_offset.clear()
        self._parked_index = None
        self._parked_users = None

    async def _on_rebalance_complete(self, app: Any, *args: Any, **kwargs: Any) -> None:
        """Just before faust seeks the assigned partitions (to their committed offsets, or
        their beginning: ``streams.faust_consumer.SeekWithFlowHeld``) and resumes the flow."""
        self._assigned = True
        self._mark_consuming()
        consumer: Any = self.app.consumer
        # faust fixes the fetch wait at 1.5 s; the embedded broker waits it out (see settings).
        consumer._thread._ensure_consumer()._fetcher._fetch_max_wait_ms = (
            self.settings.fetch_max_wait_ms
        )
        self.metrics.partitions.set(
            sum(tp.topic == ENGAGEMENTS.name for tp in consumer.assignment())
        )

    async def _agent(self, stream: Any) -> None:
        await self.feed.ready.wait()
        await self.outbox.start([USER_INTERESTS.name])
        self._agent_ready = True
        self._mark_consuming()
        decoded = self._decoded

        def decode(value: Any) -> Any:
            # As events are taken, so while the previous batch is worked on.
            message = stream.current_event.message
            decoded[message.tp, message.offset] = _engagement_or_error(value)
            return value

        stream.add_processor(decode)  # before take_waiting's
        try:
            async for events in take_waiting(
                stream, self.config.batch_size, self.config.batch_within_s
            ):
                self.metrics.batch_size.observe(len(events))
                try:
                    undone = await self.process(events)
                except EngineProcessError as exc:
                    # No state can be applied without it: stop the worker (a supervisor starts
                    # it again; nothing unconfirmed was acked).
                    log.critical("%s: stopping the worker", exc)
                    await self.app.crash(exc)
                    raise
                await self._confirm_delivery()
                if undone:
                    # Not acked, so not committed: the rebalance seeks every partition back to
                    # its committed offset and they come again, to whoever owns them then.
                    events[:] = ackable(events, undone)
                    self.metrics.deferred.inc(len(undone))
                await self._update_lag()
        finally:
            stream._processors.remove(decode)
            decoded.clear()
            await self.outbox.stop()

    async def _confirm_delivery(self) -> None:
        """Send the batch's changelog and output records; wait until the broker has them all.

        The batch's offsets are acked (hence committable) right after this returns, so a
        SIGKILL at any point loses no event: what was not confirmed is consumed again.
        """
        touched = sorted(self._touched, key=lambda tp: (tp[0].name, tp[1]))
        self._touched.clear()
        if touched and self.settings.one_record_batches:
            # Each written changelog partition ends on a one-record batch (see
            # KafkaSettings.one_record_batches): a tombstone for a key no table holds.
            self.outbox.seal()
            for table, partition in touched:
                topic = table.changelog_topic.get_topic_name()
                key = table.changelog_key(END_MARKER_KEY)
                self.outbox.add(topic, key, None, partition=partition)
        written = await self.outbox.flush()
        from faust.types import TP

        # What faust does per changelog record: the local store remembers how far it is
        # written, so a restart replays only the changelog's tail into it.
        for table, partition in touched:
            topic = table.changelog_topic.get_topic_name()
            offset = written.get((topic, partition))
            if offset is not None:
                table.data.set_persisted_offset(TP(topic, partition), offset)

    async def _housekeeping(self) -> None:
        await self._republish_arrived()
        await self._update_lag()
        self.metrics.items.set(self.items_db.items.estimated_len())

    # -- processing ---------------------------------------------------------------------

    async def process(self, events: Sequence[Any]) -> list[Any]:
        """Apply one batch of engagement-topic events (faust ``Event`` objects); returns those
        left undone because a rebalance began.

        Users go to the engine process in chunks, the next chunk sent before the previous one's
        results are written, so the engine and this event loop (which meanwhile runs faust's
        consume path for the next events) work at once.

        A rebalance stops a batch between two chunks: faust counts it (in its consumer thread)
        before it revokes anything. A chunk whose results come back after the count changed is
        dropped (and the engine process forgets every state), so nothing is written here after
        this worker may have let its partitions go. A batch taken while a rebalance holds the
        flow (its events were fetched before the revocation), and events of an older consumer
        generation, are left undone too: faust skips such events in its own buffers. Every
        rebalance ends by seeking the partitions to their committed offsets, so the undone
        events come again.
        """
        app = self.app
        rebalances = app.rebalancing_count
        taken = [(ev, self._decoded.pop((ev.message.tp, ev.message.offset), None)) for ev in events]
        if not app.flow_control.is_active():
            return list(events)
        generation = app.consumer_generation_id
        # The backlog as this batch starts (a restarted worker may take it all in one batch, so
        # the gauge updated after each batch would never show it).
        for ev in events:
            if ev.message.generation_id == generation:
                self._next_offset.setdefault(ev.message.partition, ev.message.offset)
        await self._update_lag()
        undone: list[Any] = []
        per_user: OrderedDict[str, list[tuple[Any, Any]]] = OrderedDict()
        for ev, decoded in taken:
            msg = ev.message
            if msg.generation_id != generation:
                undone.append(ev)
                continue
            self._next_offset[msg.partition] = max(
                self._next_offset.get(msg.partition, 0), msg.offset + 1
            )
            if decoded is None:  # not taken through the agent's decoder
                decoded = _engagement_or_error(ev.value)
            if isinstance(decoded, InvalidEvent):
                reason = decoded.reason
                await self._dead_letter(ev.value, reason, msg.partition, msg.offset, msg.key)
                continue
            per_user.setdefault(decoded.user_id, []).append((ev, decoded))
        users = list(per_user.items())
        outcomes: Tally[str] = Tally()
        in_flight: _Chunk | None = None
        try:
            for start in range(0, len(users), self.config.chunk_users):
                if app.rebalancing_count != rebalances:
                    for _, evs in users[start:]:
                        undone.extend(event for event, _ in evs)
                    break
                chunk = await self._send_chunk(users[start : start + self.config.chunk_users])
                if in_flight is not None:
                    undone.extend(await self._finish_chunk(in_flight, rebalances, outcomes))
                in_flight = chunk
            if in_flight is not None:
                undone.extend(await self._finish_chunk(in_flight, rebalances, outcomes))
                in_flight = None
        finally:
            if in_flight is not None:  # an error: let the chunk in flight end before going on
                await asyncio.gather(in_flight.results, return_exceptions=True)
        for outcome, n in outcomes.items():
            self.metrics.events.labels(outcome).inc(n)
        return undone

    async def _send_chunk(self, users: list[tuple[str, list[tuple[Any, Any]]]]) -> _Chunk:
        """Plan each user's job and send them all to the engine process."""
        from faust.streams import _current_event

        item_ids = dict.fromkeys(
            d.item_id for _, evs in users for _, d in evs if isinstance(d, Engagement)
        )
        vectors = _BatchVectors(*self.feed.lookup(list(item_ids)))
        planned: list[_Planned] = []
        outcomes: Tally[str] = Tally()
        for user_id, user_events in users:
            # faust picks a table write's changelog partition from the current event.
            _current_event.set(weakref.ref(user_events[-1][0]))
            planned.append(await self._plan_user(user_id, user_events, vectors, outcomes))
        jobs = [
            UserJob(plan.user_id, plan.stored, plan.fresh, plan.ops, plan.redelivered)
            for plan in planned
        ]
        deleted, undeleted = self._deleted_since_sent()
        sent = time.perf_counter()
        batch = Batch(jobs, vectors.ids, vectors.matrix(), deleted, undeleted)
        results = self.engine.apply(batch)
        return _Chunk(planned, results, outcomes, sent)

    async def _finish_chunk(
        self, chunk: _Chunk, rebalances: int, outcomes: Tally[str]
    ) -> list[Any]:
        """Write a chunk's results (table, records out); returns its events if a rebalance
        began meanwhile (nothing written then)."""
        from faust.streams import _current_event

        results = await chunk.results
        if self.app.rebalancing_count != rebalances:
            # Possibly revoked while the engine worked: forget what it learned; all of it
            # comes again after the rebalance.
            self._held.clear()
            self._positions.clear()
            await self.engine.clear()
            return [event for plan in chunk.planned for event, _ in plan.pairs]
        outcomes.update(chunk.outcomes)
        observe = self.metrics.update_latency.observe
        refused: list[tuple[_Planned, list[tuple[str, str]]]] = []
        for plan, result in zip(chunk.planned, results, strict=True):
            applied = sum(result.learned)
            outcomes["applied"] += applied
            outcomes["duplicate"] += len(result.learned) - applied - len(result.rejected)
            if result.rejected:
                refused.append((plan, result.rejected))
            if result.blob is None and not result.empty:
                continue  # nothing changed
            _current_event.set(weakref.ref(plan.pairs[-1][0]))
            user_id = plan.user_id
            if result.empty:
                self._held.drop(user_id)
                self._positions.pop(user_id, None)
                if user_id in self.states:
                    del self.states[user_id]
                self.outbox.add(USER_INTERESTS.name, user_id.encode(), None)
                continue
            assert result.blob is not None and plan.position is not None
            self.states[user_id] = STATE_POSITION.pack(*plan.position) + result.blob
            # Sent with the batch's other records by _confirm_delivery.
            self.outbox.add(USER_INTERESTS.name, user_id.encode(), result.record)
        latency = time.perf_counter() - chunk.sent
        for _ in chunk.planned:
            observe(latency)
        # Full record batches go now, while the engine works on the next chunk: the batch's
        # confirmation then waits only for its last records.
        await self.outbox.send_full()
        for plan, rejected in refused:  # after the writes: no await among them
            await self._dead_letter_rejected(plan, rejected)
        return []

    async def _dead_letter_rejected(self, plan: _Planned, rejected: list[tuple[str, str]]) -> None:
        """Dead-letter the events of ``plan`` the engine refused, with its reason."""
        by_id = dict(rejected)
        for event, ev in plan.pairs:
            reason = by_id.pop(ev.event_id, None) if isinstance(ev, Engagement) else None
            if reason is not None:
                msg = event.message
                await self._dead_letter(event.value, reason, msg.partition, msg.offset, msg.key)

    def _deleted_since_sent(self) -> tuple[list[str], list[str]]:
        """Items deleted, and deleted items back, since the engine process last heard."""
        now, sent = self.feed.deleted, self._sent_deleted
        if now == sent:
            return [], []
        deleted, undeleted = list(now - sent), list(sent - now)
        self._sent_deleted = set(now)
        return deleted, undeleted

    async def _plan_user(
        self,
        user_id: str,
        events: list[tuple[Any, Any]],
        vectors: _BatchVectors,
        outcomes: Tally[str],
    ) -> _Planned:
        """Decide what of one user's (faust event, decoded event) pairs of a batch goes to the
        engine (in order), counting the others in ``outcomes``: redeliveries, parked events,
        user deletions. Adds the vectors the job needs to ``vectors``."""
        held, evicted = self._held.touch(user_id)
        for gone in evicted:
            self._positions.pop(gone, None)
        stored: bytes | None = None
        fresh = False
        if not held:
            row = self.states.get(user_id)
            if row is None:
                fresh = True
                self._positions.pop(user_id, None)
            else:
                self._positions[user_id] = STATE_POSITION.unpack_from(row)
                stored = row[STATE_POSITION.size :]
                # Items gone from the store (deleted) are left out: the state drops them.
                missing = [i for i in InterestClusters.items_in(stored) if i not in vectors.rows]
                vectors.add(*self.feed.lookup(missing))
        applied_at = self._positions.get(user_id)
        rows = vectors.rows
        parked = self._parked_of(user_id)
        parked_before = len(parked)
        redelivered = False
        ops: list[Learn | None] = []
        for event, ev in events:
            position = (event.message.partition, event.message.offset)
            if (
                applied_at is not None
                and position[0] == applied_at[0]
                and position[1] <= applied_at[1]
            ):
                # A redelivery after a crash: the stored state already holds this event. Event
                # ids alone would not do: the engine remembers only its latest few hundred.
                redelivered = True
                outcomes["duplicate"] += 1
                continue
            applied_at = position
            if isinstance(ev, UserDeleted):
                ops.append(FORGET)
                parked.clear()
                outcomes["user_deleted"] += 1
                continue
            if is_resent(event.message.headers) and ev.event_id not in parked:
                # A parked event re-sent on its item's arrival that is no longer parked: it was
                # applied already (re-sent twice around a crash). Event ids alone would not do.
                outcomes["duplicate"] += 1
                continue
            row = rows.get(ev.item_id)
            if row is None:
                # It may have arrived since the batch lookup; its arrival may even have been
                # handled already, so parking it now would leave it parked for good.
                vectors.add(*self.feed.lookup([ev.item_id]))
                row = rows.get(ev.item_id)
            parked.pop(ev.event_id, None)
            if row is None:
                # Park and index with no await in between (the feed task runs at awaits).
                parked[ev.event_id] = ev.to_json().decode()
                self._index_parked(ev.item_id, user_id)
                outcomes["parked"] += 1
                if len(parked) > self.config.max_parked_per_user:
                    raw = parked.pop(next(iter(parked))).encode()
                    await self._dead_letter(
                        raw,
                        "parked too long: the item never got an "
                        "embedding within the per-user parking bound",
                        None,
                        None,
                        user_id.encode(),
                    )
                continue
            ops.append(Learn(ev.event_id, ev.item_id, ev.action, ev.weight, ev.ts, row))
        if len(parked) != parked_before or parked:
            self._parked_count += len(parked) - parked_before
            self.metrics.parked.set(max(self._parked_count, 0))
            if parked:
                self.parked[user_id] = json.dumps(parked).encode()
                if self._parked_users is not None:
                    self._parked_users.add(user_id)
            elif user_id in self.parked:
                del self.parked[user_id]
                if self._parked_users is not None:
                    self._parked_users.discard(user_id)
        if applied_at is not None:
            self._positions[user_id] = applied_at
        return _Planned(user_id, events, stored, fresh, ops, redelivered, applied_at)

    def _parked_of(self, user_id: str) -> dict[str, str]:
        if self._parked_users is not None and user_id not in self._parked_users:
            return {}  # nearly every user: no table lookup
        blob = self.parked.get(user_id)
        return json.loads(blob) if blob else {}

    def _index_parked(self, item_id: str, user_id: str) -> None:
        if self._parked_index is not None:
            self._parked_index.setdefault(item_id, set()).add(user_id)

    async def _on_parked_recovered(self) -> None:
        """faust restored the ``parked`` table of the assigned partitions (it calls this before
        their engagements flow again): index what is parked there."""
        index: dict[str, set[str]] = {}
        count = 0
        for user_id, blob in self.parked.items():
            for raw in json.loads(blob).values():
                index.setdefault(json.loads(raw)["item_id"], set()).add(user_id)
                count += 1
        self._parked_count = count
        self.metrics.parked.set(count)
        self._parked_index = index
        self._parked_users = {u for users in index.values() for u in users}
        # Embeddings may have arrived while these partitions were elsewhere (or we were down).
        self.feed.arrived.extend(i for i in index if i in self.feed.vectors.store)

    async def _republish_arrived(self) -> None:
        """Send parked events whose item now has an embedding back to ``engagements``."""
        if not self.feed.ready.is_set() or self._parked_index is None:
            return  # arrivals wait in feed.arrived until the table is recovered
        arrived, self.feed.arrived = self.feed.arrived, []
        for item_id in dict.fromkeys(arrived):
            for user_id in sorted(self._parked_index.pop(item_id, ())):
                for raw in self._parked_of(user_id).values():
                    if json.loads(raw)["item_id"] == item_id:
                        await self.engagements.send(
                            key=user_id.encode(), value=raw.encode(), headers=[RESENT_HEADER]
                        )

    async def _dead_letter(
        self,
        raw: bytes | None,
        reason: str,
        partition: int | None,
        offset: int | None,
        key: bytes | None,
    ) -> None:
        from streams.deadletters import dead_letter

        letter = dead_letter(
            raw,
            reason,
            source_topic=ENGAGEMENTS.name,
            partition=partition,
            offset=offset,
            key=key,
            rejected_by="interests-worker",
        )
        log.warning("dead-lettered %s[%s]@%s: %s", ENGAGEMENTS.name, partition, offset, reason)
        await self.dead_letter_topic.send(
            key=ENGAGEMENTS.name.encode(), value=letter.model_dump_json().encode()
        )
        self.metrics.dead_letters.inc()

    async def _update_lag(self) -> None:
        """Engagements behind the partitions' ends: processed here, or else fetched so far."""
        consumer: Any = self.app.consumer
        lag = 0
        try:
            for tp in consumer.assignment():
                if tp.topic != ENGAGEMENTS.name:
                    continue
                high = consumer.highwater(tp)
                pos = self._next_offset.get(tp.partition)
                if pos is None:
                    pos = await consumer.position(tp)
                if high is not None and pos is not None:
                    lag += max(high - pos, 0)
        except Exception as exc:  # lag is best-effort telemetry, never fatal
            log.debug("consumer lag unavailable: %s", exc)
            return
        self.metrics.lag.set(lag)

    # -- running ------------------------------------------------------------------------

    @property
    def _clean_marker(self) -> Path:
        return self.config.data_dir / "clean-shutdown"

    def _forget_local_tables_after_crash(self) -> None:
        """After a crash, rebuild faust's local tables from their changelogs.

        A SIGKILL can leave the local RocksDB ahead of the changelog (a write stored locally
        whose changelog record never reached the broker); faust then refuses to start
        (ConsistencyError). The changelog is the source of truth, and events applied only
        locally are redelivered because their offsets were not committed, so dropping the
        local copy loses nothing.
        """
        tables = self.config.data_dir / "faust"
        if tables.exists() and not self._clean_marker.exists():
            log.warning("unclean shutdown detected: rebuilding local tables from changelogs")
            shutil.rmtree(tables)
        self._clean_marker.unlink(missing_ok=True)

    def run(self, loglevel: str = "warn") -> None:
        """Run the worker in the foreground until SIGINT/SIGTERM."""
        import faust

        if self.config.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.config.metrics_port, addr=self.config.metrics_host)
        use_event_loop(self.config.event_loop)
        worker = faust.Worker(self.app, loglevel=loglevel, quiet=True)
        cfg = self.config
        engine = ENGINES[cfg.engine_in](cfg.engine, cfg.publishing, cfg.state_cache_users)
        self._engine = engine
        heap = FreezeSurvivors(cfg.full_gc_every_s) if cfg.full_gc_every_s else None
        if heap is not None:
            heap.install()
        clean = False
        try:
            worker.execute_from_commandline()
            clean = True
        except SystemExit as exc:
            clean = exc.code in (0, None)
            raise
        finally:
            if heap is not None:
                heap.uninstall()
            engine.stop()
            self._engine = None
            self.items_db.close()
            if clean:
                self._clean_marker.touch()
