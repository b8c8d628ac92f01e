"""The interests worker: ``engagements`` -> per-user ``InterestClusters`` -> ``user-interests``.

One faust app (``recstream worker interests``):

- **agent on engagements** (keyed by user): takes events in batches (``take_waiting``: a batch
  closes once it holds every event the broker had, so a lagging worker takes big batches and
  a caught-up one is not held by a timer; the next batch fills while one is worked on), groups
  them by user, and sends each user's events with their item vectors to the **engine process**
  (``engine_process``: the users' ``InterestClusters`` live in a child process, so the engine's
  numpy work and faust's consume path run on two cores), in chunks of users. It writes each
  changed state once per batch to the ``interests`` table (rocksdb store, changelog-backed) and
  publishes the user's interests to the compacted ``user-interests`` topic.
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
collections walk only what is new (``streams.faust_runtime.heap.FreezeSurvivors``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
import weakref
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np

from stores.kv import StateDB
from streams.faust_runtime.batching import take_waiting
from streams.faust_runtime.consumer import use_quick_consumer
from streams.faust_runtime.event_loop import use_event_loop
from streams.faust_runtime.heap import FreezeSurvivors
from streams.faust_runtime.monitor import without_faust_monitor
from streams.faust_runtime.outbox import Outbox
from streams.faust_runtime.tables import add_end_markers, outbox_table, set_persisted_offsets
from streams.interests import InterestClusters
from streams.schemas import (
    Engagement,
    InvalidEvent,
    UserDeleted,
    decode_for_topic,
)
from streams.settings import KafkaSettings
from streams.topics import (
    DEAD_LETTERS,
    ENGAGEMENTS,
    RESENT_HEADER,
    USER_INTERESTS,
    is_resent,
)
from streams.workers.interests.config import InterestsWorkerConfig
from streams.workers.interests.engine_process import (
    ENGINES,
    FORGET,
    Batch,
    EngineProcess,
    EngineProcessError,
    HeldUsers,
    Learn,
    LocalEngine,
    UserJob,
    UserResult,
)
from streams.workers.interests.item_feed import ItemFeed
from streams.workers.interests.lag import ConsumerLag
from streams.workers.interests.metrics import WorkerMetrics
from streams.workers.interests.recovery import (
    forget_local_tables_after_crash,
    mark_clean_shutdown,
)

log = logging.getLogger(__name__)

# Table values: (partition, offset) of the user's last processed engagement, then the state.
STATE_POSITION = struct.Struct("<iq")


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
        forget_local_tables_after_crash(cfg.data_dir)
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
            Table=outbox_table(self.outbox, self._touched),
        )
        use_quick_consumer(self.app)  # no task per message; no event lost around a seek
        without_faust_monitor(self.app)
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
        # Parked events by item, and the users that have any: built once the tables are
        # recovered (None until then, and again from a revocation to the next recovery).
        self._parked_index: dict[str, set[str]] | None = None
        self._parked_users: set[str] | None = None
        self._parked_count = 0
        self._agent_ready = self._assigned = self._consuming = False
        self.lag = ConsumerLag(self.app, self.metrics.lag)
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
        self.lag.next_offset.clear()
        self._parked_index = None
        self._parked_users = None

    async def _on_rebalance_complete(self, app: Any, *args: Any, **kwargs: Any) -> None:
        """Just before faust seeks the assigned partitions (to their committed offsets, or
        their beginning: ``streams.faust_runtime.consumer.SeekWithFlowHeld``) and resumes the
        flow."""
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
                await self.lag.update()
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
            add_end_markers(self.outbox, touched)
        written = await self.outbox.flush()
        set_persisted_offsets(touched, written)

    async def _housekeeping(self) -> None:
        await self._republish_arrived()
        await self.lag.update()
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
        next_offset = self.lag.next_offset
        for ev in events:
            if ev.message.generation_id == generation:
                next_offset.setdefault(ev.message.partition, ev.message.offset)
        await self.lag.update()
        undone: list[Any] = []
        per_user: OrderedDict[str, list[tuple[Any, Any]]] = OrderedDict()
        for ev, decoded in taken:
            msg = ev.message
            if msg.generation_id != generation:
                undone.append(ev)
                continue
            next_offset[msg.partition] = max(next_offset.get(msg.partition, 0), msg.offset + 1)
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

    # -- running ------------------------------------------------------------------------

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
                mark_clean_shutdown(cfg.data_dir)
